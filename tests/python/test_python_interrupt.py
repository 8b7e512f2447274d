"""Ctrl-C during a long measattn call raises KeyboardInterrupt promptly, and the
module keeps working afterwards. SIGINT is sent to the own process from a timer
thread while the main thread is inside the call (with the GIL released)."""

import os
import signal
import threading
import time

import numpy as np
import pytest

measattn = pytest.importorskip("measattn")


def send_sigint_after(seconds):
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.daemon = True
    timer.start()
    return timer


def test_keyboard_interrupt_stops_a_long_flow():
    if not hasattr(measattn, "flow"):
        pytest.skip("measattn built without flow")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    model = measattn.Model.canonical(3, 1.0)
    # About 10^6 steps of ~0.1 ms: minutes without the interrupt.
    timer = send_sigint_after(0.5)
    start = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            measattn.flow(model, x, time=1000.0, steps=1_000_000, sphere=True)
    finally:
        timer.cancel()
    elapsed = time.perf_counter() - start
    assert elapsed < 10, elapsed
    # Still usable, and a second interrupt-free call completes.
    r = measattn.flow(model, x, time=0.1, steps=3, sphere=True)
    assert r.status == "completed"


def test_custom_signal_handler_exception_propagates():
    """A Python SIGINT handler's own exception reaches the caller unchanged."""
    if not hasattr(measattn, "flow"):
        pytest.skip("measattn built without flow")

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop("stopped by handler")

    old = signal.signal(signal.SIGINT, handler)
    try:
        timer = send_sigint_after(0.3)
        try:
            with pytest.raises(Stop, match="stopped by handler"):
                measattn.flow(measattn.Model.canonical(3, 1.0),
                              np.random.default_rng(1).normal(size=(200, 3)),
                              time=1000.0, steps=1_000_000, sphere=True)
        finally:
            timer.cancel()
    finally:
        signal.signal(signal.SIGINT, old)


def test_no_handler_cost_in_short_calls():
    """Short calls complete normally with the handler installed (no spurious stops)."""
    model = measattn.Model.random(4, 1, seed=0)
    x = np.random.default_rng(2).normal(size=(10, 4))
    for _ in range(20):
        model.attend(x)


def test_keyboard_interrupt_stops_sinkhorn():
    if not hasattr(measattn, "wasserstein"):
        pytest.skip("measattn built without wasserstein")
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(1500, 4)), rng.normal(size=(1500, 4))
    timer = send_sigint_after(0.5)
    start = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            # tolerance 1e-300 is never reached: runs max_iterations (minutes) unless
            # interrupted.
            measattn.wasserstein(x, y, method="sinkhorn", reg=1e-3, tolerance=1e-300,
                                 max_iterations=10_000_000)
    finally:
        timer.cancel()
    assert time.perf_counter() - start < 10


# ---- Ctrl-C inside parallel regions (issue 14, items 3 and 11) ---------------
#
# Each long call below runs for many seconds uninterrupted. SIGINT arrives
# while the main thread is inside it (with the GIL released, in the middle of
# an OpenMP region); the call must raise KeyboardInterrupt soon after the
# signal -- the target is ~0.1 s; the bound asserted is a generous 1 s so that
# a loaded machine does not make the test flaky -- and the module must keep
# working afterwards. Before the fix these calls finished first (3-15 s later)
# or, for the Lipschitz search, aborted the interpreter from std::terminate.

SIGNAL_TO_RAISE_BOUND = 1.0
SIGNAL_DELAY = 0.3


def seconds_from_signal_to_interrupt(call):
    """Runs call() with SIGINT sent after SIGNAL_DELAY s from a timer thread;
    returns the seconds from the signal to the KeyboardInterrupt."""
    sent = []

    def fire():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(SIGNAL_DELAY, fire)
    timer.daemon = True
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            call()
        end = time.perf_counter()
    finally:
        timer.cancel()
    assert sent, "the call ended before the signal was sent"
    return end - sent[0]


def assert_prompt(call):
    elapsed = seconds_from_signal_to_interrupt(call)
    assert elapsed < SIGNAL_TO_RAISE_BOUND, elapsed


def big_self_attention(n=40000, d=32, heads=2):
    model = measattn.Model.random(d, heads, seed=3)
    x = np.random.default_rng(4).normal(size=(n, d))
    return model, x


def test_ctrl_c_stops_a_long_attend():
    model, x = big_self_attention()
    assert_prompt(lambda: model.attend(x))
    # The interpreter and the module survive; the next call is unaffected.
    small = x[:50]
    assert np.all(np.isfinite(model.attend(small)))


def test_ctrl_c_stops_a_long_sinkhorn_kernel():
    model, x = big_self_attention(n=3000, d=16, heads=1)
    assert_prompt(lambda: model.kernel(x, normalization="sinkhorn", sinkhorn_iters=1_000_000))
    k = model.kernel(x[:20])
    assert np.allclose(k.sum(axis=1), 1.0)


def test_ctrl_c_stops_attention_entropy():
    if not hasattr(measattn, "attention_entropy"):
        pytest.skip("measattn built without maxent")
    model, x = big_self_attention(n=30000, d=16, heads=2)
    assert_prompt(lambda: measattn.attention_entropy(model, x))
    r = measattn.attention_entropy(model, x[:30])
    assert len(r.heads) == 2


@pytest.mark.parametrize("threads", [1, 2])
def test_ctrl_c_stops_the_lipschitz_search(threads):
    """threads=1 used to abort the interpreter ("terminate called ... interrupted")."""
    if not hasattr(measattn, "lipschitz_lower_bound"):
        pytest.skip("measattn built without lipschitz")
    model = measattn.Model.random(4, 1, seed=5)
    assert_prompt(lambda: measattn.lipschitz_lower_bound(
        model, 1.0, restarts=100_000, atoms=8, steps=200, threads=threads))
    r = measattn.lipschitz_lower_bound(model, 1.0, restarts=2, atoms=3, steps=2, threads=threads)
    assert r.ratio > 0


def test_ctrl_c_stops_the_token_search():
    if not hasattr(measattn, "token_lipschitz_lower_bound"):
        pytest.skip("measattn built without lipschitz")
    model = measattn.Model.random(8, 2, seed=6)
    assert_prompt(lambda: measattn.token_lipschitz_lower_bound(
        model, tokens=64, restarts=100_000, steps=1000))
    r = measattn.token_lipschitz_lower_bound(model, tokens=4, restarts=1, steps=1)
    assert r.value > 0


def test_ctrl_c_stops_a_large_flow_step():
    """One flow step on many particles is itself long: polled per block of rows."""
    if not hasattr(measattn, "flow"):
        pytest.skip("measattn built without flow")
    model = measattn.Model.random(16, 2, seed=7)
    x = np.random.default_rng(8).normal(size=(30000, 16))
    assert_prompt(lambda: measattn.flow(model, x, time=10.0, steps=1000))


def test_ctrl_c_stops_a_large_sinkhorn_solve():
    if not hasattr(measattn, "wasserstein"):
        pytest.skip("measattn built without wasserstein")
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(6000, 8)), rng.normal(size=(6000, 8))
    assert_prompt(lambda: measattn.wasserstein(x, y, method="sinkhorn", reg=1e-3,
                                               tolerance=1e-300, max_iterations=10_000_000))
    r = measattn.wasserstein(x[:20], y[:20], method="sinkhorn", reg=0.1)
    assert np.isfinite(r.value)


def test_ctrl_c_stops_a_large_exact_solve():
    """Column generation: polled between rounds and per row of each sweep."""
    if not hasattr(measattn, "wasserstein"):
        pytest.skip("measattn built without wasserstein")
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(30000, 3)), rng.normal(size=(30000, 3))
    assert_prompt(lambda: measattn.wasserstein(x, y, method="exact", p=2.0))
    r = measattn.wasserstein(x[:20], y[:20], method="exact")
    assert np.isfinite(r.value)


def test_a_later_call_is_not_interrupted_by_an_old_signal():
    """The stop request is consumed by the KeyboardInterrupt it caused."""
    model, x = big_self_attention(n=20000, d=16, heads=1)
    seconds_from_signal_to_interrupt(lambda: model.attend(x))
    for _ in range(3):
        model.attend(x[:2000])

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

"""The progress= keyword of the long calls (flow, misspec, the Lipschitz searches, the
token sweep): a callable receives (done, total) with done non-decreasing and ending at
total; True draws a tqdm bar (or a plain stderr line without tqdm); an exception raised
in the callback stops the computation and propagates; the result does not depend on the
keyword."""

import sys

import numpy as np
import pytest

measattn = pytest.importorskip("measattn")


def needs(name):
    if not hasattr(measattn, name):
        pytest.skip(f"measattn built without {name}")


def tokens(n=12, d=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


def check_calls(calls, total):
    assert calls, "the callback was never called"
    dones = [c[0] for c in calls]
    assert all(b >= a for a, b in zip(dones, dones[1:])), dones
    assert {c[1] for c in calls} == {total}
    assert dones[-1] == total


@pytest.mark.parametrize("scheme,total", [("euler", 7), ("rk4", 7), ("dopri5", 1000)])
def test_flow_progress_callback(scheme, total):
    needs("flow")
    model, x = measattn.Model.canonical(3, 1.0), tokens()
    calls = []
    r = measattn.flow(model, x, time=0.5, steps=7, scheme=scheme,
                      progress=lambda done, tot: calls.append((done, tot)))
    check_calls(calls, total)
    if scheme != "dopri5":
        assert [c[0] for c in calls] == list(range(1, 8))
    plain = measattn.flow(model, x, time=0.5, steps=7, scheme=scheme)
    assert r.status == plain.status == "completed"
    np.testing.assert_array_equal(r.particles, plain.particles)
    for off in (None, False):
        np.testing.assert_array_equal(
            measattn.flow(model, x, time=0.5, steps=7, scheme=scheme, progress=off).particles,
            plain.particles)


def test_flow_progress_exception_propagates_and_stops():
    needs("flow")
    model, x = measattn.Model.canonical(3, 1.0), tokens()
    calls = []

    class Stop(Exception):
        pass

    def callback(done, total):
        calls.append(done)
        if done == 3:
            raise Stop("enough")

    with pytest.raises(Stop, match="enough"):
        measattn.flow(model, x, time=1.0, steps=1000, progress=callback)
    assert calls == [1, 2, 3]  # stopped at once
    # The module keeps working.
    assert measattn.flow(model, x, time=0.1, steps=2).status == "completed"


def test_flow_progress_keyboard_interrupt_from_callback():
    needs("flow")

    def callback(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measattn.flow(measattn.Model.canonical(3, 1.0), tokens(), steps=5, progress=callback)


def test_progress_refuses_other_values():
    needs("flow")
    with pytest.raises(ValueError, match="progress: expected None, a bool or a callable"):
        measattn.flow(measattn.Model.canonical(3, 1.0), tokens(), progress="yes")


def test_flow_progress_true_draws_a_bar_or_a_line(capsys, monkeypatch):
    needs("flow")
    model, x = measattn.Model.canonical(3, 1.0), tokens()
    plain = measattn.flow(model, x, time=0.5, steps=4)
    r = measattn.flow(model, x, time=0.5, steps=4, progress=True)
    np.testing.assert_array_equal(r.particles, plain.particles)
    err = capsys.readouterr().err
    assert "flow euler" in err and "4/4" in err, err
    # Without tqdm: the plain line, ended by a newline.
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    measattn.flow(model, x, time=0.5, steps=4, progress=True)
    err = capsys.readouterr().err
    assert err.endswith("flow euler: 4/4 (100%)\n"), repr(err)


@pytest.mark.parametrize("kind,values,per_draw", [
    ("sample", {"sizes": [3, 5, 9]}, 1),
    ("noise", {"sigmas": [0.01, 0.1]}, 1),
    ("corrupt", {"eps": [0.05, 0.2]}, 2),
])
def test_misspec_progress_callback(kind, values, per_draw):
    needs("misspec")
    model = measattn.Model.random(4, num_heads=2, seed=1)
    x = tokens(8, 4, seed=2)
    calls = []
    r = measattn.misspec(model, x, kind=kind, repeats=2, seed=3,
                         progress=lambda d, t: calls.append((d, t)), **values)
    n_values = len(next(iter(values.values())))
    total = per_draw * 2 * n_values
    check_calls(calls, total)
    assert [c[0] for c in calls] == list(range(1, total + 1))
    plain = measattn.misspec(model, x, kind=kind, repeats=2, seed=3, **values)
    assert [(row.w1_input, row.w1_output, row.bound) for row in r.rows] == [
        (row.w1_input, row.w1_output, row.bound) for row in plain.rows]


def test_misspec_progress_exception_propagates():
    needs("misspec")
    model = measattn.Model.canonical(3, 0.5)

    def callback(done, total):
        raise RuntimeError(f"stop at {done}/{total}")

    with pytest.raises(RuntimeError, match="stop at 1/6"):
        measattn.misspec(model, tokens(8, 3), kind="noise", sigmas=[0.1, 0.2, 0.3], repeats=2,
                         progress=callback)
    assert len(measattn.misspec(model, tokens(8, 3), kind="noise", sigmas=[0.1],
                                repeats=1).rows) == 1


def test_lipschitz_lower_bound_progress_callback():
    needs("lipschitz_lower_bound")
    model = measattn.Model.random(2, seed=0)
    args = dict(atoms=3, restarts=3, steps=5, seed=1, threads=2)
    calls = []
    r = measattn.lipschitz_lower_bound(model, 1.0, progress=lambda d, t: calls.append((d, t)),
                                       **args)
    check_calls(calls, 4)  # 3 restarts + the covariance seed (atoms >= 3)
    assert [c[0] for c in calls] == [1, 2, 3, 4]
    for quiet in (None, False):
        plain = measattn.lipschitz_lower_bound(model, 1.0, progress=quiet, **args)
        assert (plain.ratio, plain.restart_ratios, plain.evaluations) == (
            r.ratio, r.restart_ratios, r.evaluations)
        assert np.array_equal(plain.witness.mu_atoms, r.witness.mu_atoms)
    plain = measattn.lipschitz_lower_bound(model, 1.0, **args)
    assert plain.restart_ratios == r.restart_ratios


def test_token_search_and_sweep_progress_callback():
    needs("token_lipschitz_sweep")
    model = measattn.Model.random(2, seed=0)
    args = dict(restarts=3, steps=3, seed=2, threads=2)
    calls = []
    r = measattn.token_lipschitz_lower_bound(model, tokens=3, radius=1.0,
                                             progress=lambda d, t: calls.append((d, t)), **args)
    check_calls(calls, 3)
    assert [c[0] for c in calls] == [1, 2, 3]
    plain = measattn.token_lipschitz_lower_bound(model, tokens=3, radius=1.0, **args)
    assert (plain.value, plain.restart_values) == (r.value, r.restart_values)
    assert np.array_equal(plain.tokens, r.tokens)
    calls = []
    s = measattn.token_lipschitz_sweep(model, [2, 3, 4], 1.0,
                                       progress=lambda d, t: calls.append((d, t)), **args)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    plain = measattn.token_lipschitz_sweep(model, [2, 3, 4], 1.0, **args)
    assert (s.lower, s.castin, s.upper) == (plain.lower, plain.castin, plain.upper)


@pytest.mark.parametrize("call", [
    lambda m, cb: measattn.lipschitz_lower_bound(m, 1.0, atoms=3, restarts=3, steps=5,
                                                 threads=2, progress=cb),
    lambda m, cb: measattn.token_lipschitz_lower_bound(m, tokens=3, restarts=3, steps=3,
                                                       radius=1.0, threads=2, progress=cb),
    lambda m, cb: measattn.token_lipschitz_sweep(m, [2, 3], 1.0, restarts=2, steps=3,
                                                 progress=cb),
])
def test_lipschitz_progress_exception_propagates(call):
    needs("token_lipschitz_sweep")
    model = measattn.Model.random(2, seed=0)

    def callback(done, total):
        raise RuntimeError(f"stop at {done}/{total}")

    with pytest.raises(RuntimeError, match="stop at 1/"):
        call(model, callback)
    assert call(model, None) is not None  # the module still works


def test_lipschitz_progress_true_and_bad_value(capsys, monkeypatch):
    needs("token_lipschitz_lower_bound")
    monkeypatch.setitem(sys.modules, "tqdm", None)  # no tqdm: the plain line
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    model = measattn.Model.random(2, seed=0)
    measattn.token_lipschitz_lower_bound(model, tokens=3, restarts=2, steps=2, radius=1.0,
                                         progress=True)
    assert "token search: 2/2 (100%)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="progress"):
        measattn.token_lipschitz_lower_bound(model, tokens=3, progress=3)
    with pytest.raises(ValueError, match="progress"):
        measattn.lipschitz_lower_bound(model, 1.0, progress="yes")

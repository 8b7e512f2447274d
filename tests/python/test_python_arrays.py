"""measattn's Python boundary: shapes, dtypes, layouts, error messages, threads."""

import threading
import time

import numpy as np
import pytest

measattn = pytest.importorskip("measattn")


@pytest.fixture
def model():
    return measattn.Model.random(6, 2, bias=True, seed=5)


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(size=(15, 6))


# ---- Measure ---------------------------------------------------------------------

def test_measure_basics():
    rng = np.random.default_rng(1)
    atoms = rng.normal(size=(10, 3))
    w = rng.uniform(0.5, 2.0, size=10)
    mu = measattn.Measure(atoms, w)
    assert (mu.size, mu.dim, len(mu)) == (10, 3, 10)
    assert mu.dtype == np.float64
    np.testing.assert_array_equal(mu.atoms, atoms)
    np.testing.assert_allclose(mu.weights, w / w.sum(), rtol=1e-15)
    np.testing.assert_allclose(mu.mean(), (w / w.sum()) @ atoms, rtol=1e-13)
    assert mu.radius() == pytest.approx(np.linalg.norm(atoms, axis=1).max(), rel=1e-15)
    assert not mu.is_uniform()
    assert measattn.Measure.empirical(atoms).is_uniform()
    # Views are read-only (the measure owns its data).
    assert not mu.atoms.flags.writeable
    with pytest.raises(ValueError):
        mu.atoms[0, 0] = 1.0
    # merged: exact duplicates collapse, weights add.
    dup = measattn.Measure(np.vstack([atoms[:2], atoms[:1]]), [1.0, 1.0, 2.0])
    merged = dup.merged()
    assert merged.size == 2
    np.testing.assert_allclose(merged.weights, [0.75, 0.25])
    # push_forward keeps the weights.
    pf = mu.push_forward(2 * atoms)
    np.testing.assert_array_equal(pf.atoms, 2 * atoms)
    np.testing.assert_array_equal(pf.weights, mu.weights)
    f32 = mu.astype("float32")
    assert f32.dtype == np.float32 and f32.atoms.dtype == np.float32
    assert "Measure(size=10, dim=3" in repr(mu)


def test_measure_errors():
    with pytest.raises(ValueError, match="weights"):
        measattn.Measure(np.zeros((3, 2)), [1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        measattn.Measure(np.zeros((3, 2)), [1.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        measattn.Measure(np.zeros((3, 2)), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="atoms"):
        measattn.Measure(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"atoms: expected a 2-D array of shape \(n, d\), "
                                         r"got shape \(3,\)"):
        measattn.Measure(np.zeros(3))
    with pytest.raises(ValueError, match="atoms: expected a real array"):
        measattn.Measure(np.zeros((3, 2), dtype=complex))
    with pytest.raises(ValueError, match="atoms: expected a real array"):
        measattn.Measure(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="dtype: expected float32 or float64"):
        measattn.Measure(np.zeros((3, 2)), dtype="int32")
    with pytest.raises(ValueError, match="dtype: expected float32 or float64"):
        measattn.Measure(np.zeros((3, 2)), dtype="no such type")


# ---- dtypes and layouts ---------------------------------------------------------

def test_dtype_follows_input(model, x):
    assert model.attend(x).dtype == np.float64
    assert model.attend(x.astype(np.float32)).dtype == np.float32
    assert model.attend(x.astype(np.float32), dtype=np.float64).dtype == np.float64
    assert model.attend(x, dtype="float32").dtype == np.float32
    assert model.attend(measattn.Measure(x, dtype="float32")).dtype == np.float32
    assert measattn.Measure(x.astype(np.float32)).dtype == np.float32
    assert model.astype("float32").dtype == np.float32


def test_conversions_give_the_same_result(model, x):
    ref = model.attend(x)
    out = model.attend(np.asfortranarray(x))
    np.testing.assert_array_equal(out, ref)
    big = np.zeros((15, 12))
    big[:, ::2] = x
    np.testing.assert_array_equal(model.attend(big[:, ::2]), ref)  # strided view
    np.testing.assert_array_equal(model.attend(x.tolist()), ref)   # nested lists
    xi = np.round(x * 3).astype(np.int64)
    np.testing.assert_array_equal(model.attend(xi), model.attend(xi.astype(np.float64)))
    assert model.attend(xi).dtype == np.float64
    np.testing.assert_array_equal(model.attend(x, weights=[1] * 15), ref)


def test_outputs_are_owned_c_contiguous_arrays(model, x):
    out = model.attend(x)
    assert out.flags.c_contiguous and out.flags.writeable and out.flags.owndata is False
    out[0, 0] = 123.0  # writeable, owned by the returned array's base (no copy made)
    k = model.kernel(x, head=1)
    assert k.shape == (15, 15) and k.flags.c_contiguous


def test_attend_errors(model, x):
    with pytest.raises(ValueError, match="tokens: atoms have dimension 3 but the model's keys "
                                         "have dimension 6"):
        model.attend(x[:, :3])
    with pytest.raises(ValueError, match="queries: dimension 2"):
        model.attend(x, queries=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="queries: expected a 2-D array"):
        model.attend(x, queries=np.zeros(6))
    with pytest.raises(ValueError, match="tokens: expected a 2-D array"):
        model.attend(np.zeros((2, 3, 6)))
    with pytest.raises(ValueError, match="weights"):
        model.attend(x, weights=np.ones(14))
    with pytest.raises(ValueError, match="weights: must be None when tokens is a Measure"):
        model.attend(measattn.Measure(x), weights=np.ones(15))
    with pytest.raises(ValueError, match="normalization"):
        model.attend(x, normalization="softmin")
    with pytest.raises(ValueError, match="sinkhorn_iterations: must be >= 0"):
        model.attend(x, normalization="sinkhorn", sinkhorn_iters=-1)
    with pytest.raises(ValueError, match="head"):
        model.kernel(x, head=7)
    with pytest.raises(ValueError, match="tokens: expected an array, got None"):
        model.attend(None)


def test_model_constructor_and_errors():
    rng = np.random.default_rng(2)
    w = [rng.normal(size=(6, 6)) for _ in range(4)]
    m = measattn.Model(*w, num_heads=3)
    assert (m.embed_dim, m.head_dim, m.num_heads) == (6, 2, 3)
    assert m.tau == pytest.approx(np.sqrt(2))
    assert m.b_q.shape == (0,) and not m.has_bias
    assert not m.w_q.flags.writeable
    head = m.head(1)
    np.testing.assert_array_equal(head["q"], w[0][2:4])
    np.testing.assert_array_equal(head["b_q"], np.zeros(2))
    with pytest.raises(ValueError, match="num_heads: 4 does not divide the embedding size 6"):
        measattn.Model(*w, num_heads=4)
    with pytest.raises(ValueError, match="w_o"):
        measattn.Model(w[0], w[1], w[2], np.zeros((6, 5)))
    with pytest.raises(ValueError, match="b_q: expected length 6"):
        measattn.Model(*w, b_q=np.zeros(5))
    with pytest.raises(ValueError, match="potential"):
        measattn.Model(*w, potential="cosh")
    with pytest.raises(ValueError, match="scale"):
        measattn.Model(*w, scale=-1.0)
    bad = w[0].copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="w_q: contains a NaN or infinite entry"):
        measattn.Model(bad, *w[1:])


def test_thread_settings():
    n = measattn.get_num_threads()
    assert n >= 1
    measattn.set_num_threads(1)
    assert measattn.get_num_threads() == 1
    measattn.set_num_threads(n)
    with pytest.raises(ValueError, match="num_threads"):
        measattn.set_num_threads(0)


# ---- GIL -------------------------------------------------------------------------

def test_gil_is_released_during_attend():
    """A Python thread keeps running while attend computes in another thread."""
    model = measattn.Model.random(64, 4, seed=1)
    x = np.random.default_rng(3).normal(size=(3000, 64))
    t0 = time.perf_counter()
    model.attend(x)
    single = time.perf_counter() - t0

    ticks = []
    done = threading.Event()

    def compute():
        for _ in range(3):
            model.attend(x)
        done.set()

    worker = threading.Thread(target=compute)
    start = time.perf_counter()
    worker.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    elapsed = time.perf_counter() - start
    # With the GIL held for the whole call, the loop above could tick only
    # between calls (a handful of times); released, it ticks every millisecond.
    assert elapsed > 2 * single * 0.5
    assert len(ticks) > 0.2 * elapsed / 0.001, (len(ticks), elapsed)

"""The online Sinkhorn (online=True: costs on the fly, O(n + m) memory) against the
dense one (stored kernel) and the exact value it brackets."""
import numpy as np
import pytest

import measattn


@pytest.mark.parametrize("n,m,p,reg", [(150, 170, 1, 0.1), (200, 120, 2, 0.05)])
def test_online_matches_dense_and_brackets_the_exact_value(n, m, p, reg):
    rng = np.random.default_rng(n + m)
    x, y = rng.normal(size=(n, 3)), rng.normal(size=(m, 3)) + 0.3
    wa, wb = rng.random(n) + 0.1, rng.random(m) + 0.1
    wa, wb = wa / wa.sum(), wb / wb.sum()
    opts = dict(p=p, method="sinkhorn", reg=reg, max_iterations=100000, tolerance=1e-10)
    dense = measattn.wasserstein(x, y, wa, wb, **opts)
    online = measattn.wasserstein(x, y, wa, wb, online=True, **opts)
    assert online.status == "converged" and online.marginal_violation < 1e-10
    # Both stop at ||P^T 1 - b|| < 1e-10 near the same fixed point.
    assert online.transport_cost == pytest.approx(dense.transport_cost, rel=1e-7)
    assert online.entropic_cost == pytest.approx(dense.entropic_cost, rel=1e-6, abs=1e-8)
    exact = measattn.wasserstein(x, y, wa, wb, p=p).value
    assert online.lower <= exact * (1 + 1e-12) and exact <= online.upper * (1 + 1e-12)
    assert online.lower <= online.value <= online.upper
    assert "online" in online.message
    f, g = measattn.wasserstein(x, y, wa, wb, online=True, potentials=True, **opts).potentials
    assert f.shape == (n,) and g.shape == (m,)


def test_online_refuses_plans_and_reports_caps():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 2)), rng.normal(size=(40, 2))
    with pytest.raises(ValueError, match="online: .*no plan"):
        measattn.wasserstein(x, y, method="sinkhorn", online=True, plan=True)
    r = measattn.wasserstein(x, y, method="sinkhorn", online=True, reg=0.001, max_iterations=3)
    assert r.status == "iteration_limit" and np.isfinite(r.value)
    r32 = measattn.wasserstein(x.astype(np.float32), y.astype(np.float32), method="sinkhorn",
                               online=True, reg=0.1, potentials=True)
    assert r32.potentials[0].dtype == np.float32

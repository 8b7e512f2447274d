"""measattn.ot.emd/emd2 accept numItermax and do not use it: LEMON's network simplex has no
pivot cap, so even numItermax=1 gives the optimal plan, result_code 1 and no warning (POT
stops early there with a result_code other than 1 and its warning)."""
import warnings

import numpy as np
import pytest

import measattn.ot as mot


def test_emd_ignores_numitermax():
    rng = np.random.default_rng(4)
    n, m = 40, 30
    a, b = rng.random(n) + 0.1, rng.random(m) + 0.1
    a, b = a / a.sum(), b / b.sum()
    M = rng.random((n, m))
    G_ref, log_ref = mot.emd(a, b, M, log=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        G1, log1 = mot.emd(a, b, M, numItermax=1, log=True)
        c1 = mot.emd2(a, b, M, numItermax=1)
    np.testing.assert_array_equal(G1, G_ref)
    assert log1["result_code"] == 1 and log_ref["result_code"] == 1
    assert float(c1) == pytest.approx(log_ref["cost"], rel=1e-14)
    ot = pytest.importorskip("ot")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, log_pot = ot.emd(a, b, M, numItermax=1, log=True)
    assert log_pot["result_code"] != 1  # POT stops at its pivot cap (0.8.2: code 3)

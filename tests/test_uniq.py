"""jaxps' own unique helpers agree with np.unique (they replace it on the hot paths)."""

import numpy as np
import pytest

from jaxps._src import uniq


@pytest.mark.parametrize("n", [0, 1, 2, 7, 700, 5000])
@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_unique_and_inverse_match_numpy(n, dtype):
    rng = np.random.default_rng(n)
    for a in (rng.integers(0, max(n // 3, 1), n).astype(dtype),       # many duplicates
              np.sort(rng.choice(10 * n + 1, n, replace=False)).astype(dtype)):  # sorted, distinct
        u = uniq.unique(a)
        assert u.dtype == a.dtype and np.array_equal(u, np.unique(a))
        v, inv = uniq.unique_inverse(a)
        ref_v, ref_inv = np.unique(a, return_inverse=True)
        assert np.array_equal(v, ref_v) and np.array_equal(inv, ref_inv.ravel())
        assert np.array_equal(v[inv], a)

"""The statistics round's server-side sum (fedmrg.fl.statistics_round): exact, independent of the reply order, and
refusing statistics that do not fit together."""

from __future__ import annotations

import numpy as np
import pytest

from fedmrg.fl.statistics_round import check_statistics, needs_statistics_round, sum_statistics
from fedmrg.fl.toy_learner import ToyLearner


def _stats(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"sums": rng.normal(size=(3, 4)) * 1e6, "count": np.array([float(seed + 1)])}


def test_the_sum_is_the_key_wise_sum_whatever_order_the_replies_came_in():
    parts = {f"site-{i}": _stats(i) for i in (3, 1, 2)}
    total = sum_statistics(parts)
    assert total["count"].tolist() == [2.0 + 3.0 + 4.0] and total["sums"].dtype == np.float64
    np.testing.assert_allclose(total["sums"], sum(p["sums"] for p in parts.values()), rtol=1e-12)
    reordered = sum_statistics(dict(reversed(list(parts.items()))))
    assert all(np.array_equal(total[k], reordered[k]) for k in total)  # bit-identical: summed in site-name order
    assert parts["site-3"]["count"].tolist() == [4.0]  # the inputs are not modified


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"sums": np.zeros((3, 4))}, r"site-2 sent \['sums'\], site-1 sent \['count', 'sums'\]"),
        ({"sums": np.zeros((3, 5)), "count": np.ones(1)}, r"`sums` is \(3, 5\) at site-2, \(3, 4\) at site-1"),
        ({"sums": np.full((3, 4), np.nan), "count": np.ones(1)}, r"site-2: statistics `sums` holds NaN or Inf"),
        ({"sums": np.zeros((3, 4), dtype=np.int64), "count": np.ones(1)}, r"`sums` must be a float numpy array"),
    ],
    ids=["names", "shape", "nan", "int"],
)
def test_statistics_that_do_not_fit_together_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        sum_statistics({"site-1": _stats(0), "site-2": bad})


def test_no_statistics_are_refused_and_a_learner_without_the_hook_needs_no_round():
    with pytest.raises(ValueError, match="no site sent statistics"):
        sum_statistics({})
    with pytest.raises(ValueError, match="non-empty dict"):
        check_statistics({}, what="site-1")
    assert not needs_statistics_round(object())
    assert not needs_statistics_round(ToyLearner()) and needs_statistics_round(ToyLearner(statistics_round=True))

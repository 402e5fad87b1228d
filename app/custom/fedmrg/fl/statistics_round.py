"""The statistics round: one exchange after the last FL round, for a final model that averaging cannot give.

Some parts of a model are better computed from pooled statistics than averaged (FedMRG's diagnosis head under label
skew: ``training.head_calibration: lda``, :mod:`fedmrg.report.head_calibration`). A learner opts in with three
optional hooks (see :mod:`fedmrg.fl.learner`)::

    learner.needs_statistics_round() -> bool                    # server and site, from the configuration alone
    learner.round_statistics(global_state) -> {name: array}     # site: additive statistics of its training data
    learner.finish_state(global_state, summed) -> State         # server (no setup): the final global model

and the attribute ``runs_statistics_round``, which whoever runs the round sets to True before ``setup`` (a learner
that needs the round refuses to set up without it, so that a job without the round never ends silently without it).

The statistics are sums over a site's studies, so their sum over sites is exactly the pooled statistic. Who runs the
round: :class:`~fedmrg.fl.resumable_scatter_and_gather.ResumableScatterAndGather` after its last round (task
:data:`STATISTICS_TASK` to every training site, answered by
:class:`~fedmrg.fl.shared_state_executor.SharedStateExecutor`), and ``fedmrg bench``'s in-process runner with the
same hooks. Privacy: the statistics are not noised or masked, so site-level DP
(:class:`~fedmrg.privacy.site_dp_filter.SiteDPFilter`) withholds them and secure aggregation refuses a learner that
needs the round; DP-SGD is refused by the learner's own configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: the task a server sends each training site after the last round (data: the final global model, WEIGHTS DXO;
#: result: the site's statistics, a STATISTICS DXO of float arrays)
STATISTICS_TASK = "statistics"


def needs_statistics_round(learner: Any) -> bool:
    """Whether ``learner`` asks for the statistics round (False for learners without the hook)."""
    hook = getattr(learner, "needs_statistics_round", None)
    return bool(callable(hook) and hook())


def check_statistics(statistics: Any, *, what: str) -> dict[str, np.ndarray]:
    """``statistics`` as a dict of finite float numpy arrays; ValueError naming ``what`` otherwise."""
    if not isinstance(statistics, Mapping) or not statistics:
        raise ValueError(f"{what}: statistics must be a non-empty dict of arrays, got {type(statistics).__name__}")
    out = {}
    for name, value in statistics.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            raise ValueError(f"{what}: statistics `{name}` must be a float numpy array, got {type(value).__name__}")
        if not np.isfinite(value).all():
            raise ValueError(f"{what}: statistics `{name}` holds NaN or Inf")
        out[name] = value
    return out


def sum_statistics(parts: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The key-wise sum of every site's statistics (site -> name -> array), float64, added in site-name order (so
    that the result does not depend on the order the replies arrived in).

    ValueError when there are none, or when sites differ in names or shapes (the message names both sites)."""
    if not parts:
        raise ValueError("statistics round: no site sent statistics")
    parts = dict(sorted(parts.items()))
    first_site, first = next(iter(parts.items()))
    total = {k: np.array(v, dtype=np.float64) for k, v in check_statistics(first, what=first_site).items()}
    for site, stats in parts.items():
        if site == first_site:
            continue
        stats = check_statistics(stats, what=site)
        if set(stats) != set(total):
            raise ValueError(f"statistics round: {site} sent {sorted(stats)}, {first_site} sent {sorted(total)}")
        for k, v in stats.items():
            if v.shape != total[k].shape:
                raise ValueError(f"statistics round: `{k}` is {v.shape} at {site}, {total[k].shape} at {first_site}")
            total[k] += v
    return total

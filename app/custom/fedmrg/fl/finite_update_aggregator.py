"""Weighted FedAvg aggregator that rejects a malformed update before it is added, naming the site.

An update is rejected (logged as an error with site, round and reason; not aggregated) when

- any array of its DXO data holds NaN or Inf (one diverged site must not poison the global model);
- its keys differ from the current global model's (a diff key missing from the global model would raise later in
  ``FullModelShareableGenerator``; a missing key would silently keep the old value);
- its ``MetaKey.NUM_STEPS_CURRENT_ROUND`` weight is present but not a finite number > 0.

Everything else is :class:`~nvflare.app_common.aggregators.intime_accumulate_model_aggregator.
InTimeAccumulateWeightedAggregator` (same arguments, stored unchanged). The aggregated arrays are cast back to
float32, the dtype of the shared-state contract. The reasons of the running round's rejections are kept in
:attr:`FiniteUpdateAggregator.rejections` (site -> reason; cleared by :meth:`reset`) for the workflow's participation
record.
"""

from __future__ import annotations

import math

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable, get_leaf_dxos
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey
from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import InTimeAccumulateWeightedAggregator
from nvflare.app_common.app_constant import AppConstants

from fedmrg.fl.learner import nonfinite_keys


class FiniteUpdateAggregator(InTimeAccumulateWeightedAggregator):
    """Same arguments as ``InTimeAccumulateWeightedAggregator``; see the module docstring for the checks."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rejections: dict[str, str] = {}

    def reset(self, fl_ctx: FLContext) -> None:
        """Drop the running round's contributions and rejections (FLARE's parent clears them only in ``aggregate``;
        a round that is re-run with too few valid updates must start empty)."""
        super().reset(fl_ctx)
        for dxo_aggregator in self.dxo_aggregators.values():
            dxo_aggregator.reset_aggregation_helper()
        self.rejections = {}

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        reason = self._reject_reason(shareable, fl_ctx)
        if reason:
            site = shareable.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default="?")
            r = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
            self.log_error(fl_ctx, f"REJECTED update from site {site} in round {r}: {reason}")
            self.rejections[site] = f"update rejected: {reason}"
            return False
        return super().accept(shareable, fl_ctx)

    def _reject_reason(self, shareable: Shareable, fl_ctx: FLContext) -> str:
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            return ""  # not a DXO: the parent logs and rejects it
        leaves, _ = get_leaf_dxos(dxo)
        global_keys = _global_keys(fl_ctx)
        for name, leaf in leaves.items():
            if leaf.data_kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF) or not isinstance(leaf.data, dict):
                continue
            where = f" (DXO {name!r})" if name else ""
            bad = nonfinite_keys(leaf.data)
            if bad:
                return f"non-finite values (NaN/Inf) in {len(bad)} of {len(leaf.data)} keys{where}, e.g. {bad[:3]}"
            if global_keys is not None and not name:
                missing = sorted(global_keys - set(leaf.data))
                unknown = sorted(set(leaf.data) - global_keys)
                if missing or unknown:
                    return f"keys differ from the global model: missing {missing[:5]}, unknown {unknown[:5]}"
            steps = leaf.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
            if steps is not None and not _positive_finite(steps):
                return f"{MetaKey.NUM_STEPS_CURRENT_ROUND} must be a finite number > 0, got {steps!r}{where}"
        return ""

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        result = super().aggregate(fl_ctx)
        dxo = from_shareable(result)
        leaves, _ = get_leaf_dxos(dxo)
        for leaf in leaves.values():
            if isinstance(leaf.data, dict):
                _to_float32(leaf)
        return dxo.to_shareable()


def _global_keys(fl_ctx: FLContext) -> set[str] | None:
    ml = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
    if isinstance(ml, ModelLearnable) and ml.get(ModelLearnableKey.WEIGHTS):
        return set(ml[ModelLearnableKey.WEIGHTS])
    return None


def _positive_finite(x: object) -> bool:
    return (
        isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
    )


def _to_float32(dxo: DXO) -> None:
    for k, v in dxo.data.items():
        if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.dtype != np.float32:
            dxo.data[k] = v.astype(np.float32)

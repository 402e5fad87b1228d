"""Client-side result filter on ``train``: clips, weights, encodes and masks the site's delta for secure aggregation.

Put it *last* in the client's ``task_result_filters`` for ``train`` (after any DP filter: clipping and noise come
before quantisation and masking). It replaces every array of the WEIGHT_DIFF DXO by a ``uint32`` array of the same
shape: ``w * round(clip(delta) * 2^f) + self mask + pairwise masks mod 2^32`` (see
:mod:`~fedmrg.privacy.secure_aggregation.protocol`), with ``w = min(NUM_STEPS_CURRENT_ROUND, max_weight)``, and adds
``SecAggKey.MASKED`` = ``{"round", "session", "weight", "fraction_bits"}`` to the DXO meta. What stays in clear: the
sample count (``NUM_STEPS_CURRENT_ROUND``), the capped weight, the array names and shapes, and the training and
validation metrics in the meta.

Extra payloads (``FedMetaKey.EXTRA``, e.g. FedMRG's memory-bank features) are patient-derived and cannot be summed:
when the result carries any, the filter raises, FLARE replaces the result by ``TASK_RESULT_FILTER_ERROR`` and nothing
of it is uploaded. Disable them in the learner (FedMRG ``memory_bank.upload_per_round: 0``, toy ``bank_size: 0``).
Any other problem (no key exchange for this round, a malformed result) also raises: the plaintext never leaves.
"""

from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from fedmrg.fl.constants import FedMetaKey
from fedmrg.privacy.secure_aggregation.constants import SecAggKey, SecureAggregationError
from fedmrg.privacy.secure_aggregation.protocol import ClientRound, flatten, unflatten
from fedmrg.privacy.secure_aggregation.secagg_executor import round_state_file


class SecureAggregationMaskFilter(Filter):
    def __init__(self):
        """Masks the ``train`` result; takes no arguments (the round's parameters come from the key exchange)."""
        super().__init__()

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        site = fl_ctx.get_identity_name()
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable  # an error reply carries no data
        try:
            dxo = from_shareable(shareable)
        except ValueError as e:
            raise SecureAggregationError(f"site {site}: the train result is not a DXO ({e}); not uploaded") from e
        extras = dxo.get_meta_prop(FedMetaKey.EXTRA)
        if extras:
            raise SecureAggregationError(
                f"site {site}: the train result carries extra payloads {sorted(extras)} (patient-derived, e.g. "
                "memory-bank features); they cannot be securely summed and are never uploaded under secure "
                "aggregation; disable them (FedMRG: memory_bank.upload_per_round: 0; toy learner: bank_size: 0)"
            )
        if dxo.data_kind != DataKind.WEIGHT_DIFF or not isinstance(dxo.data, dict) or not dxo.data:
            raise SecureAggregationError(f"site {site}: expected a non-empty WEIGHT_DIFF result, got {dxo.data_kind}")
        round_num = shareable.get_header(AppConstants.CURRENT_ROUND)
        count = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
        if not isinstance(round_num, int) or not isinstance(count, (int, np.integer)) or count < 1:
            raise SecureAggregationError(f"site {site}: result lacks the round header or an int sample count >= 1")
        path = round_state_file(fl_ctx, round_num)
        if not path.is_file():
            raise SecureAggregationError(f"site {site}: no key exchange for round {round_num}; not uploaded")
        state = ClientRound.load(path)
        bad = [k for k, v in dxo.data.items() if not (isinstance(v, np.ndarray) and v.dtype.kind == "f")]
        if bad:
            raise SecureAggregationError(f"site {site}: non-float arrays in the result: {bad[:3]}")
        flat, layout = flatten(dxo.data)
        if not np.isfinite(flat).all():
            raise SecureAggregationError(f"site {site}: the delta has non-finite values; not uploaded")
        weight = int(min(count, state.params.max_weight))
        masked, norm = state.mask(flat, weight)
        state.save(path)
        f = state.fraction_bits()
        meta = dict(dxo.meta or {})
        meta[SecAggKey.MASKED] = {"round": round_num, "session": state.session, "weight": weight, "fraction_bits": f}
        clipped = f" (clipped to {state.params.clip_norm:g})" if norm > state.params.clip_norm else ""
        self.log_info(
            fl_ctx,
            f"site {site}: round {round_num}: masked {flat.size} values for {len(state.participants)} participants; "
            f"delta L2 norm {norm:.4g}{clipped}, weight {weight}"
            + (f" (capped from {count})" if count > weight else "")
            + f", {f} fraction bits",
        )
        return DXO(DataKind.WEIGHT_DIFF, unflatten(masked, layout), meta).update_shareable(shareable)

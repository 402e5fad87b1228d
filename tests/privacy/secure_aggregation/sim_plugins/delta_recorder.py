"""Test-only client result filter: saves the train result's arrays and weight before / after masking, per round."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nvflare.apis.dxo import MetaKey, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants


class DeltaRecorder(Filter):
    def __init__(self, out_dir: str, stage: str):
        super().__init__()
        self.out_dir = out_dir
        self.stage = stage

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable
        dxo = from_shareable(shareable)
        site, r = fl_ctx.get_identity_name(), shareable.get_header(AppConstants.CURRENT_ROUND)
        out = Path(self.out_dir) / site
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / f"{self.stage}_{r}.npz", **dxo.data)
        meta = {"weight": dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND), "meta_keys": sorted(dxo.meta or {})}
        (out / f"{self.stage}_{r}.json").write_text(json.dumps(meta))
        return shareable

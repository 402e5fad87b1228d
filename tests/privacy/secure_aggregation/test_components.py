"""FLARE components without a federation: the mask filter refuses extras, the aggregator refuses to decode a round
that was not unmasked, and the job transformation wires everything (and removes the extras relay)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.fl_context import FLContext

from fedmrg.errors import ConfigError
from fedmrg.fl.constants import FedMetaKey
from fedmrg.job import write_variant
from fedmrg.paths import REPO_ROOT
from fedmrg.privacy.secure_aggregation import job_variant
from fedmrg.privacy.secure_aggregation.constants import SecAggTask, SecureAggregationError
from fedmrg.privacy.secure_aggregation.mask_filter import SecureAggregationMaskFilter
from fedmrg.privacy.secure_aggregation.secure_aggregator import SecureAggregator


def test_mask_filter_refuses_to_upload_extras():
    meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: 8, FedMetaKey.EXTRA: {"bank": np.zeros((2, 3), np.float32)}}
    result = DXO(DataKind.WEIGHT_DIFF, {"w": np.ones(4, np.float32)}, meta).to_shareable()
    with pytest.raises(SecureAggregationError, match=r"extra payloads \['bank'\].*never uploaded"):
        SecureAggregationMaskFilter().process(result, FLContext())


def test_aggregator_refuses_a_round_that_was_not_unmasked():
    with pytest.raises(SecureAggregationError, match="not unmasked; refusing"):
        SecureAggregator().aggregate(FLContext())


@pytest.mark.parametrize("job_name", ["toy", "fedmrg"])
def test_job_variant_wires_secure_aggregation(tmp_path, job_name):
    job = tmp_path / job_name
    shutil.copytree(Path(REPO_ROOT) / "jobs" / job_name, job)
    if job_name == "fedmrg":
        # the job encodes its wire (8-bit up, 16-bit down): masking it in place is refused, the variant decodes it
        with pytest.raises(ConfigError, match=r"encodes what crosses the wire \(results up int8-row, model down "
                           r"bfloat16\).*--set secure_aggregation=true"):
            job_variant.enable_in_job(job, {"clip_norm": 2.0})
        shutil.rmtree(job)
        write_variant(Path(REPO_ROOT) / "jobs" / job_name, job, ["wire.up=float32", "wire.down=float32"])
    job_variant.enable_in_job(job, {"clip_norm": 2.0})
    server = json.loads((job / "app/config/config_fed_server.json").read_text())
    client = json.loads((job / "app/config/config_fed_client.json").read_text())
    text = json.dumps(server)
    assert server["workflows"][0]["path"] == job_variant.WORKFLOW
    assert server["workflows"][0]["args"]["clip_norm"] == 2.0 and server["workflows"][0]["args"]["min_sites"] == 3
    assert job_variant.RELAY not in text and job_variant.AGGREGATOR in text
    assert any(e["tasks"] == list(SecAggTask.ALL) for e in client["executors"])
    train = next(g for g in client["task_result_filters"] if "train" in g["tasks"])
    assert train["filters"][-1]["path"] == job_variant.MASK_FILTER
    args = client["executors"][0]["executor"]["args"]["learner_args"]
    off = args["bank_size"] if job_name == "toy" else args["overrides"]["memory_bank"]["upload_per_round"]
    assert off == 0
    with pytest.raises(Exception, match="already on"):
        job_variant.enable_in_job(job)

"""`fedmrg bench run --orchestrator inprocess` and `--orchestrator simulator` train the same model: the same rows on the
same tiny federation end with bit-identical global and specialized states and the same scores, with the diagnosis head
calibrated after the last round (the FLARE job's statistics round against the runner's, for FedMRG; Fed-LoRA has no
head and runs without it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedmrg.cli import main
from fedmrg.inference.sources import open_source
from fedmrg.report.head_calibration import ABSENT_STATE_BIAS

METHODS = ("fedmrg", "fedlora")  # with a specialized adapter and the memory bank; without either


def _arrays(state: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v.detach().numpy() if hasattr(v, "detach") else v) for k, v in state.items()}


@pytest.mark.slow
def test_in_process_and_simulator_runs_train_the_same_model(tmp_path):
    fed = tmp_path / "fed"
    prepare = ["bench", "prepare", "--source", "synthetic", "--num-studies", "24", "--sites", "2", "--unseen-sites",
               "1", "--image-size", "32", "--out", str(fed)]  # fmt: skip
    assert main(prepare) == 0
    for orchestrator in ("inprocess", "simulator"):
        argv = ["bench", "run", "--data", str(fed), "--out", str(tmp_path / orchestrator), "--profile", "tiny",
                "--partitions", "cluster", "--methods", ",".join(METHODS), "--seeds", "0", "--threads", "1",
                "--no-comm", "--no-report", "--orchestrator", orchestrator,
                "--set", "training.head_calibration=lda"]  # fmt: skip
        assert main(argv) == 0

    for method in METHODS:
        runs = {o: tmp_path / o / "runs" / "cluster" / method / "seed0" for o in ("inprocess", "simulator")}
        metrics = {o: json.loads((d / "metrics.json").read_text()) for o, d in runs.items()}
        assert metrics["simulator"]["orchestrator"] == "simulator"
        for where in ("in_domain", "unseen"):
            assert metrics["inprocess"][where] == metrics["simulator"][where], (method, where)
        for r_in, r_sim in zip(metrics["inprocess"]["rounds"], metrics["simulator"]["rounds"], strict=True):
            assert {k: r_in["val"][k] for k in ("bleu4", "rouge_l", "ce_f1")} == {
                k: r_sim["val"][k] for k in ("bleu4", "rouge_l", "ce_f1")
            }, method
        in_process = open_source(runs["inprocess"] / metrics["inprocess"]["models"]["site-1"])
        for site in ("site-1", "site-2"):
            simulated = open_source(runs["simulator"] / metrics["simulator"]["models"][site])
            a, b = _arrays(in_process.shared_state()), _arrays(simulated.shared_state())
            assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a), (method, site)
            if method == "fedmrg":  # the head is the calibrated one (a trained head's biases are never -1e4)
                assert (b["diagnosis_head.linear.bias"] == np.float32(ABSENT_STATE_BIAS)).any()
            if method == "fedmrg":  # each site's specialized adapter, trained in its own process, equal too
                assert site in simulated.sites and site in in_process.sites
                pa, pb = _arrays(in_process.private_state(site)), _arrays(simulated.private_state(site))
                assert pa and sorted(pa) == sorted(pb) and all(np.array_equal(pa[k], pb[k]) for k in pa), site
            else:
                assert simulated.sites == [] == in_process.sites  # no specialized adapter: the global model alone was exported

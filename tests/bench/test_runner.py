"""`fedmrg bench run` / `report`: every row end to end on a tiny federation (tiny built-in models), a well-formed
table with finite numbers, finished runs skipped, an interrupted run resumed at its next round."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest

from fedmrg.bench import runner
from fedmrg.cli import main
from fedmrg.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_fed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "fed"
    argv = ["bench", "prepare", "--source", "synthetic", "--num-studies", "24", "--sites", "2", "--unseen-sites", "1",
            "--image-size", "32", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+|nan|inf", cell)]


@pytest.mark.slow
def test_every_row_runs_reports_and_resumes(tiny_fed, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "run", "--data", str(tiny_fed), "--out", str(out), "--profile", "tiny", "--partitions", "cluster",
            "--seeds", "0", "--rounds", "1", "--threads", "1", "--no-comm"]  # fmt: skip
    assert main(argv) == 0
    metrics = sorted((out / "runs" / "cluster").glob("*/seed0/metrics.json"))
    assert [p.parent.parent.name for p in metrics] == sorted(runner.BENCH_METHODS)
    for path in metrics:
        m = json.loads(path.read_text())
        for where in ("in_domain", "unseen"):
            assert set(runner.METRIC_KEYS) <= set(m[where]), (path, m[where])
            assert all(math.isfinite(m[where][k]) for k in runner.METRIC_KEYS), (path, m[where])
        assert len(m["rounds"]) == 1 and m["seconds"]["total"] > 0
        federated = m["method"] not in ("centralized", "local-only")
        assert (m["bytes_per_round"]["up"] > m["bytes_per_round"]["shared_param_bytes"] > 0) == federated, m
        assert not (path.parent / "state").exists()  # the round checkpoint is gone once the run is finished
        for model in set(m["models"].values()):  # the exported model loads as `fedmrg evaluate --model` does
            assert not Path(model).is_absolute()  # relative to the run folder: the benchmark folder can move
            assert (path.parent / model / "checkpoint.json").is_file()

    table = (out / "benchmark.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    assert [r.split(" | ")[0].lstrip("| ") for r in body] == [*runner.BENCH_METHODS, "most frequent report"]
    width = header.count("|")
    for row in body:
        assert row.count("|") == width, row
        cells = row.strip("| ").split(" | ")[2 : 2 + 2 * len(runner.METRIC_KEYS)]
        assert all(_numbers(c) and all(math.isfinite(x) for x in _numbers(c)) for c in cells), row
    assert "FedMRG − Fed-LoRA" in table and "fedmrg-no-prompts" in table.split("Ablations")[1]
    for png in ("val_cluster.png", "frontier_cluster.png"):
        assert (out / png).stat().st_size > 1000

    stamps = {p: p.stat().st_mtime_ns for p in metrics}
    capsys.readouterr()
    assert main(argv) == 0  # every run finished: nothing is rerun
    assert (
        f"{len(runner.BENCH_METHODS)} of {len(runner.BENCH_METHODS)} run(s) already finished" in capsys.readouterr().err
    )
    assert {p: p.stat().st_mtime_ns for p in metrics} == stamps

    # --rescore scores the saved models again without training: the same scores, the history kept
    fedlora = out / "runs" / "cluster" / "fedlora" / "seed0" / "metrics.json"
    before = json.loads(fedlora.read_text())
    assert main([*argv, "--methods", "fedlora", "--rescore"]) == 0
    after = json.loads(fedlora.read_text())
    assert "rescored [1/1] cluster/fedlora/seed0" in capsys.readouterr().err
    assert after["in_domain"] == before["in_domain"] and after["rounds"] == before["rounds"]
    assert after["seconds"]["rescore"] > 0 and after["seconds"]["train"] == before["seconds"]["train"]

    # the same evaluation reads the exported model back: fedmrg evaluate --model on it gives the run's score
    fed_dir = out / "runs" / "cluster" / "fedlora" / "seed0"
    fed = json.loads((fed_dir / "metrics.json").read_text())
    assert main(["evaluate", "--model", str(fed_dir / fed["models"]["site-1"]), "--data", str(tiny_fed / "cluster"), "--site",
                 "unseen-1", "--out", str(tmp_path / "ev"), "--no-progress"]) == 0  # fmt: skip
    assert "CE_F1" in json.loads((tmp_path / "ev" / "metrics.json").read_text())["headline"]


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_interrupted_run_resumes_at_its_next_round(tiny_fed, tmp_path, capsys):
    profile = runner.PROFILES["tiny"]
    spec = runner.RunSpec("cluster", "fedlora", 0, tiny_fed / "cluster", tmp_path / "run")

    def stop_after_first(r: int) -> None:
        if r == 0:
            raise _Stop

    with pytest.raises(_Stop):
        runner.run_one(spec, profile, orchestrator="inprocess", threads=1, on_round=stop_after_first)
    first = json.loads((spec.out / "state" / "progress.json").read_text())
    assert first["round_done"] == 0 and not runner.is_finished(spec.out)
    capsys.readouterr()
    m = runner.run_one(spec, profile, orchestrator="inprocess", threads=1, on_round=lambda r: None)
    assert "resuming at round 1" in capsys.readouterr().err
    assert [h["round"] for h in m["rounds"]] == [0, 1]
    assert m["rounds"][0] == first["history"][0]


def test_the_in_process_rounds_log_no_aggregator_warning(tiny_fed, tmp_path, caplog):
    # a site without an aggregation weight makes NVFlare's aggregator warn once per site and round, and the warning's
    # event, with no engine in process, adds "Logic Error: no engine in fl_ctx" to the log of every benchmark run
    spec = runner.RunSpec("cluster", "fedlora", 0, tiny_fed / "cluster", tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        runner.run_one(spec, runner.PROFILES["tiny"], orchestrator="inprocess", threads=1, on_round=lambda r: None)
    noisy = [r.getMessage() for r in caplog.records if "Aggregation_weight" in r.getMessage()
             or "no engine" in r.getMessage()]  # fmt: skip
    assert noisy == []


def test_options_are_checked(tiny_fed, tmp_path):
    with pytest.raises(ConfigError, match="unknown benchmark method 'fedfoo'"):
        runner.method_overrides("fedfoo")
    assert runner.method_overrides("fedmrg-no-kd-s2g") == {"method": "fedmrg", "ablations": {"no_kd_s2g": True}}
    assert runner.method_overrides("local-only") == {"method": "fedmrg"}
    base = ["bench", "run", "--data", str(tiny_fed), "--out", str(tmp_path / "b"), "--profile", "tiny"]
    assert main([*base, "--partitions", "dirichlet"]) != 0
    assert main([*base, "--orchestrator", "simulator", "--methods", "centralized"]) != 0
    assert main([*base, "--local-steps", "0"]) != 0
    assert main([*base, "--set", "training.learning_rat=5e-4"]) != 0  # refused before any run starts
    assert not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="no benchmark partition here"):
        runner.plan(tmp_path, tmp_path / "o", ["cluster"], ["fedlora"], [0])


def test_set_overrides_the_run_configuration_of_every_row_and_refuses_bad_items():
    merged = runner.with_sets(
        {"training": {"batch_size": 8}}, ["training.learning_rate=5e-4", "encoder.trainable=false"]
    )
    assert merged == {"training": {"batch_size": 8, "learning_rate": 5e-4}, "encoder": {"trainable": False}}
    spec_overrides = runner.Profile(rounds=2, local_steps=1, seeds=(0,), image_size=32, eval_studies=2, val_studies=1,
                                    overrides=merged).run_overrides("fedlora", 1)  # fmt: skip
    assert spec_overrides["training"]["learning_rate"] == 5e-4 and spec_overrides["method"] == "fedlora"
    with pytest.raises(ConfigError, match=r"unknown key\(s\) `training.learning_rat`"):
        runner.with_sets({}, ["training.learning_rat=5e-4"])
    with pytest.raises(ConfigError, match=r"learning_rate` must be > 0"):
        runner.with_sets({}, ["training.learning_rate=-1"])
    with pytest.raises(ConfigError, match="given twice"):
        runner.with_sets({}, ["training.seed=1", "training.seed=2"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        runner.with_sets({}, ["training"])


def test_evaluation_draws_its_studies_at_random_and_the_same_for_every_row():
    drawn = runner.sample_indices(100, 10)
    assert drawn == runner.sample_indices(100, 10) and drawn == sorted(drawn) and len(set(drawn)) == 10
    assert drawn != list(range(10)) and max(drawn) >= 50  # not the first ten (the sets are ordered by site)
    assert runner.sample_indices(5, 10) == runner.sample_indices(5, 0) == list(range(5))


def test_in_domain_studies_name_their_site(tiny_fed):
    from fedmrg.report.data_loading import open_split

    test = open_split(tiny_fed / "cluster", site=None, split="test", image_size=32)
    sites = runner._study_sites(test)
    assert len(sites) == len(test) and set(sites) <= {"site-1", "site-2"} and len(set(sites)) == 2


def test_a_corrupt_metrics_file_is_named_with_the_remedy(tmp_path):
    from fedmrg.bench import report
    from fedmrg.errors import FedMRGError

    path = tmp_path / "runs" / "cluster" / "fedlora" / "seed0" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"partition": ')  # a run killed while its file was written by hand
    with pytest.raises(FedMRGError, match=r"metrics.json: unreadable run metrics .*delete that file"):
        report.load_runs(tmp_path)
    with pytest.raises(FedMRGError, match="unreadable run metrics"):
        runner.rescore(path.parent)


def test_a_report_refuses_runs_of_different_budgets(tmp_path):
    from fedmrg.bench import report
    from fedmrg.errors import FedMRGError

    for case, second in (("steps", {"local_steps": 20}), ("set", {"overrides": {"training": {"learning_rate": 5e-4}}})):
        for method, change in (("fedlora", {}), ("fedmrg", second)):
            path = tmp_path / case / "runs" / "cluster" / method / "seed0" / "metrics.json"
            path.parent.mkdir(parents=True)
            profile = {"rounds": 6, "local_steps": 8, "image_size": 96, "config": "default.yaml", "seeds": [0],
                       "eval_studies": 120, "overrides": {}} | change  # fmt: skip
            path.write_text(json.dumps({"partition": "cluster", "method": method, "seed": 0, "profile": profile}))
        with pytest.raises(FedMRGError, match=r"different budgets .*own --out folder"):
            report.write_report(tmp_path / case, comm=False)


def test_rows_without_a_diagnosis_prompt_train_without_the_finding_weight_or_reranking(tmp_path):
    from fedmrg.config import from_dict, load_yaml
    from fedmrg.report.config import FedMRGConfig
    from fedmrg.report.fl_learner import merge_overrides
    from fedmrg.report.run_config import packaged_config

    (tmp_path / "lm").mkdir()
    (tmp_path / "enc").mkdir()
    profile = runner.PROFILES["full"]
    packaged = load_yaml(packaged_config(profile.config))
    model_keys = {f.name for f in dataclasses.fields(FedMRGConfig)}
    for method in runner.BENCH_METHODS:
        overrides = runner.method_overrides(method)
        # every row on top of the packaged configuration the benchmark runs, as a learner loads it
        data = merge_overrides(packaged, profile.run_overrides(method, 0))
        data = {k: v for k, v in data.items() if k in model_keys}
        data = merge_overrides(data, {"decoder": {"path": "lm"}, "encoder": {"path": "enc"}})
        cfg = from_dict(FedMRGConfig, data, base_dir=tmp_path)
        assert (method in runner.PROMPTED_ROWS) == cfg.uses_prompts, method
        assert ("losses" in overrides) == (not cfg.uses_prompts), method
        if not cfg.uses_prompts:
            assert cfg.losses.finding_weight == 1.0
            assert cfg.generation.rerank_samples == 0


@pytest.mark.slow
def test_head_calibration_replaces_the_head_of_every_row_that_has_one(tiny_fed, tmp_path):
    import dataclasses

    from safetensors.numpy import load_file

    from fedmrg.report.head_calibration import ABSENT_STATE_BIAS

    base = runner.PROFILES["tiny"]
    profile = dataclasses.replace(base, seeds=(0,),
                                  overrides=runner.with_sets(base.overrides, ["training.head_calibration=lda"]))  # fmt: skip
    for method in ("fedmrg", "local-only", "centralized", "fedlora"):
        spec = runner.RunSpec("cluster", method, 0, tiny_fed / "cluster", tmp_path / method)
        m = runner.run_one(spec, profile, orchestrator="inprocess", threads=1, on_round=lambda r: None)
        for model in set(m["models"].values()):
            state = load_file(str(spec.out / model / "shared_state.safetensors"))
            bias = state.get("diagnosis_head.linear.bias")
            if method == "fedlora":  # no head: the row trains and exports as before
                assert bias is None
                continue
            # a head fitted from statistics: states no training study had are never predicted (a trained head's
            # biases are never -1e4)
            assert (bias == np.float32(ABSENT_STATE_BIAS)).any(), (method, model)

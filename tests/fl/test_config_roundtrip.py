"""Every component round-trips through FLARE's own job-config exporter, and the toy job's configs instantiate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nvflare.fuel.utils.class_utils import instantiate_class
from nvflare.job_config.fed_job_config import FedJobConfig

from fedmrg.paths import REPO_ROOT

TOY = "fedmrg.fl.toy_learner.ToyLearner"

# non-default JSON arguments for each component (so that the exporter writes every one of them back)
CASES = [
    (
        "fedmrg.fl.shared_state_executor.SharedStateExecutor",
        {
            "learner_path": TOY,
            "learner_args": {"seed": 3, "hidden": 5},
            "data_root_template": "/data/{site}",
            "private_dir": "/keep/{site}",
            "submit_model_task": "",
            "validate_before_train": False,
            "val_split": "dev",
            "test_split": "holdout",
            "personalized": False,
        },
    ),
    (
        "fedmrg.fl.shared_state_persistor.SharedStatePersistor",
        {
            "learner_path": TOY,
            "learner_args": {"hidden": 4},
            "state_dir": "/keep/server",
            "resume": False,
            "global_model_file_name": "g.safetensors",
            "best_global_model_file_name": "b.safetensors",
        },
    ),
    (
        "fedmrg.fl.finite_update_aggregator.FiniteUpdateAggregator",
        {"exclude_vars": "bn.*", "aggregation_weights": {"site-1": 2.0}, "weigh_by_local_iter": False},
    ),
    ("fedmrg.fl.extra_payload_relay.ExtraPayloadRelay", {"extra_keys": ["bank", "proto"], "max_items_per_site": 7}),
    ("fedmrg.fl.wire_bytes_meter.WireBytesMeter", {}),
    ("fedmrg.fl.shared_state_model_locator.SharedStateModelLocator", {"persistor_id": "p2"}),
    ("fedmrg.fl.run_summary.RunSummary", {"output_dir": "out", "tb_folder": ""}),
    (
        "fedmrg.fl.resumable_scatter_and_gather.ResumableScatterAndGather",
        {
            "min_clients": 2,
            "num_rounds": 7,
            "start_round": 1,
            "train_timeout": 60,
            "persistor_id": "persistor",
            "evaluation_sites": ["unseen-1"],
        },
    ),
    (TOY, {"hidden": 3, "fail_sites": ["site-1"], "fail_round": 2}),
]


@pytest.mark.parametrize(("path", "args"), CASES, ids=[c[0].rsplit(".", 1)[1] for c in CASES])
def test_constructor_args_are_stored_unchanged(tmp_path, path, args):
    exporter = FedJobConfig(job_name="t", min_clients=1)
    component = instantiate_class(path, json.loads(json.dumps(args)))
    exported = exporter._get_args(component, str(tmp_path))
    assert exported == args
    json.dumps(exported)  # JSON-native
    again = exporter._get_args(instantiate_class(path, exported), str(tmp_path))
    assert again == exported


def _components(config: dict):
    yield from config.get("components", [])
    yield from config.get("workflows", [])
    for e in config.get("executors", []):
        yield e["executor"]
    for chain in config.get("task_data_filters", []) + config.get("task_result_filters", []):
        yield from chain["filters"]


@pytest.mark.parametrize("name", ["config_fed_server.json", "config_fed_client.json"])
def test_toy_job_configs_instantiate(name):
    config = json.loads((Path(REPO_ROOT) / "jobs" / "toy" / "app" / "config" / name).read_text())
    assert config["format_version"] == 2
    built = [instantiate_class(c["path"], c.get("args", {})) for c in _components(config)]
    assert built

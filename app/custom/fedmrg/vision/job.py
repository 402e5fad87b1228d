"""FLARE job folders of the vision system, generated from one definition (:func:`job_configs`).

``jobs/vision_classification`` and ``jobs/vision_segmentation`` are :func:`write_job` outputs (a test checks they
match); ``fedmrg vision demo`` writes its own with the task, method and data root it is given. The jobs use the same
plumbing as ``jobs/fedmrg``: :class:`~fedmrg.fl.shared_state_executor.SharedStateExecutor` running
:class:`~fedmrg.vision.learner.VisionLearner`, :class:`~fedmrg.fl.shared_state_persistor.SharedStatePersistor`,
:class:`~fedmrg.fl.finite_update_aggregator.FiniteUpdateAggregator` (WEIGHT_DIFF, FedAvg by samples),
:class:`~fedmrg.fl.resumable_scatter_and_gather.ResumableScatterAndGather`, cross-site evaluation,
:class:`~fedmrg.fl.wire_bytes_meter.WireBytesMeter`, :class:`~fedmrg.fl.run_summary.RunSummary` and the optional
site-level DP filter (off). Each job carries ``app/custom/`` (BYOC, no allow-list step; see ``jobs/fedmrg``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedmrg.vision.config import load_vision_config
from fedmrg.vision.data import TASK_KINDS

LEARNER = "fedmrg.vision.learner.VisionLearner"
DEFAULT_ARGS = {
    "classification": {
        "task": "synthetic_cls",
        "method": "prompt_gen",
        "backbone": "builtin",
        "num_sites": 3,
        "rounds": 8,
        "local_steps": 15,
        "batch_size": 32,
    },
    "segmentation": {
        "task": "synthetic_seg",
        "method": "prompt_gen",
        "backbone": "builtin",
        "num_sites": 3,
        "rounds": 8,
        "local_steps": 15,
        "batch_size": 16,
    },
}


def job_configs(
    learner_args: dict[str, Any],
    *,
    data_root_template: str = "",
    min_clients: int | None = None,
    test_split: str = "test",
) -> tuple[dict, dict, dict]:
    """``(meta, config_fed_server, config_fed_client)`` for a vision run with ``learner_args`` (checked)."""
    cfg = load_vision_config(dict(learner_args), source="job learner_args")
    kind = TASK_KINDS[cfg.task]
    key_metric = "accuracy" if kind == "classification" else "dice"
    sites = cfg.num_sites
    min_clients = min_clients or max(1, sites - 1) if sites > 1 else 1
    name = f"vision_{kind}"
    meta = {"name": name, "resource_spec": {}, "deploy_map": {"app": ["@ALL"]}, "min_clients": min_clients}
    meter = {"path": "fedmrg.fl.wire_bytes_meter.WireBytesMeter", "args": {}}
    client = {
        "format_version": 2,
        "executors": [
            {
                "tasks": ["train", "validate", "submit_model"],
                "executor": {
                    "id": "executor",
                    "path": "fedmrg.fl.shared_state_executor.SharedStateExecutor",
                    "args": {
                        "learner_path": LEARNER,
                        "learner_args": dict(learner_args),
                        "data_root_template": data_root_template,
                        "private_dir": "",
                        "validate_before_train": True,
                        "val_split": "val",
                        "test_split": test_split,
                        "personalized": True,
                    },
                },
            }
        ],
        "task_data_filters": [],
        "task_result_filters": [
            {
                "tasks": ["train", "submit_model"],
                "filters": [
                    {
                        "path": "fedmrg.privacy.site_dp_filter.SiteDPFilter",
                        "args": {
                            "enabled": False,
                            "clip_norm": 1.0,
                            "noise_multiplier": 1.0,
                            "participation_rate": 1.0,
                            "delta": 1e-05,
                            "max_epsilon": None,
                            "accountant": "rdp",
                            "ledger_path": "",
                        },
                    }
                ],
            }
        ],
        "components": [],
    }
    server = {
        "format_version": 2,
        "task_data_filters": [{"tasks": ["train", "validate", "submit_model"], "filters": [meter]}],
        "task_result_filters": [{"tasks": ["train", "validate", "submit_model"], "filters": [meter]}],
        "components": [
            {
                "id": "persistor",
                "path": "fedmrg.fl.shared_state_persistor.SharedStatePersistor",
                "args": {"learner_path": LEARNER, "learner_args": dict(learner_args), "state_dir": "", "resume": True},
            },
            {
                "id": "shareable_generator",
                "path": "nvflare.app_common.shareablegenerators."
                "full_model_shareable_generator.FullModelShareableGenerator",
                "args": {},
            },
            {
                "id": "aggregator",
                "path": "fedmrg.fl.finite_update_aggregator.FiniteUpdateAggregator",
                "args": {"expected_data_kind": "WEIGHT_DIFF"},
            },
            {
                "id": "model_selector",
                "path": "nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector",
                "args": {"key_metric": key_metric},
            },
            {
                "id": "model_locator",
                "path": "fedmrg.fl.shared_state_model_locator.SharedStateModelLocator",
                "args": {"persistor_id": "persistor", "models": ["FL_global_model"]},
            },
            {
                "id": "run_summary",
                "path": "fedmrg.fl.run_summary.RunSummary",
                "args": {"output_dir": "summary", "tb_folder": "tb_events"},
            },
        ],
        "workflows": [
            {
                "id": "scatter_and_gather",
                "path": "fedmrg.fl.resumable_scatter_and_gather.ResumableScatterAndGather",
                "args": {
                    "min_clients": min_clients,
                    "num_rounds": cfg.rounds,
                    "start_round": 0,
                    "wait_time_after_min_received": 10,
                    "aggregator_id": "aggregator",
                    "persistor_id": "persistor",
                    "shareable_generator_id": "shareable_generator",
                    "train_task_name": "train",
                    "train_timeout": 0,
                    "evaluation_sites": [],
                },
            },
            {
                "id": "cross_site_validate",
                "path": "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval",
                "args": {"model_locator_id": "model_locator", "submit_model_timeout": 600, "validation_timeout": 600},
            },
        ],
    }
    return meta, server, client


def write_job(out: str | Path, learner_args: dict[str, Any], **kwargs: Any) -> Path:
    """Write a job folder (``meta.json``, ``app/config/*.json``, ``app/custom/README.md``) at ``out``."""
    from fedmrg.job import write_byoc_note

    meta, server, client = job_configs(learner_args, **kwargs)
    out = Path(out)
    (out / "app" / "config").mkdir(parents=True, exist_ok=True)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "app" / "config" / "config_fed_server.json").write_text(json.dumps(server, indent=2) + "\n")
    (out / "app" / "config" / "config_fed_client.json").write_text(json.dumps(client, indent=2) + "\n")
    write_byoc_note(out)
    return out


def main() -> None:
    """Regenerate the committed ``jobs/vision_*`` folders: ``python -m fedmrg.vision.job [REPO_ROOT]``."""
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for kind, args in DEFAULT_ARGS.items():
        print(write_job(root / "jobs" / f"vision_{kind}", args))


if __name__ == "__main__":
    main()

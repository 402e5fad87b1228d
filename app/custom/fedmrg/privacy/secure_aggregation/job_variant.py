"""Switch secure aggregation on in a FLARE job folder (it is off unless a job is transformed by this module).

    python -m fedmrg.privacy.secure_aggregation.job_variant JOB_DIR [--clip-norm 1.0] [--max-weight 1000]
        [--threshold 0] [--min-sites 3] [--identity auto]

edits ``JOB_DIR`` in place (make a copy first with ``fedmrg job variant``):

- server: the workflow becomes :class:`~.secure_scatter_and_gather.SecureScatterAndGather` (same arguments plus the
  secure-aggregation ones), the ``aggregator`` component :class:`~.secure_aggregator.SecureAggregator`, and the
  :class:`~fedmrg.fl.extra_payload_relay.ExtraPayloadRelay` filter is removed (no extras travel); the
  :class:`~fedmrg.fl.wire_bytes_meter.WireBytesMeter` filters also meter the new tasks;
- client: an executor :class:`~.secagg_executor.SecureAggregationExecutor` for ``secagg_*`` tasks and the result filter
  :class:`~.mask_filter.SecureAggregationMaskFilter` last on ``train``;
- learner: extras switched off where the learner is known (FedMRG ``overrides.memory_bank.upload_per_round = 0``,
  toy ``bank_size = 0``); for other learners the mask filter refuses any result that carries extras.

A job that encodes its wire (:mod:`fedmrg.fl.wire_codec`, jobs/fedmrg does by default) is refused here: ``fedmrg job
variant JOB --out DIR --set secure_aggregation=true`` sets the wire to float32 and switches secure aggregation on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedmrg.errors import ConfigError
from fedmrg.privacy.secure_aggregation.constants import SecAggTask

_PKG = "fedmrg.privacy.secure_aggregation"
WORKFLOW = f"{_PKG}.secure_scatter_and_gather.SecureScatterAndGather"
AGGREGATOR = f"{_PKG}.secure_aggregator.SecureAggregator"
EXECUTOR = f"{_PKG}.secagg_executor.SecureAggregationExecutor"
MASK_FILTER = f"{_PKG}.mask_filter.SecureAggregationMaskFilter"
RELAY = "fedmrg.fl.extra_payload_relay.ExtraPayloadRelay"
METER = "fedmrg.fl.wire_bytes_meter.WireBytesMeter"
DEFAULTS = {"clip_norm": 1.0, "max_weight": 1000, "threshold": 0, "min_sites": 3, "identity": "auto"}
#: learner path -> (learner_args dotted key, value) that switches its extra payloads off
EXTRAS_OFF = {
    "fedmrg.report.fl_learner.FedMRGLearner": ("overrides.memory_bank.upload_per_round", 0),
    "fedmrg.report.fl_job_learner.JobFedMRGLearner": ("overrides.memory_bank.upload_per_round", 0),  # same class
    "fedmrg.fl.toy_learner.ToyLearner": ("bank_size", 0),
}


def _set(node: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def apply_secure_aggregation(server: dict, client: dict, options: dict | None = None) -> None:
    """Transform the server and client configs (FLARE ``format_version`` 2 dicts) in place; see the module doc."""
    opts = DEFAULTS | (options or {})
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown secure-aggregation options {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
    from fedmrg.fl.wire_codec import job_wire_codecs

    workflow = server["workflows"][0]
    if workflow.get("path") == WORKFLOW:
        raise ConfigError("secure aggregation is already on in this job")
    up, down = job_wire_codecs(server, client)
    if (up, down) != ("float32", "float32"):
        raise ConfigError(
            f"this job encodes what crosses the wire (results up {up}, model down {down}); masked values cannot be "
            "encoded: use `fedmrg job variant JOB --out DIR --set secure_aggregation=true` (it sets both to float32) "
            "or first --set wire.up=float32 --set wire.down=float32"
        )
    workflow["path"] = WORKFLOW
    workflow.setdefault("args", {}).update(opts)
    agg_id = workflow["args"].get("aggregator_id", "aggregator")
    comps = [c for c in server.get("components", []) if c.get("id") == agg_id]
    if not comps:
        raise ConfigError(f"server component {agg_id!r} (the aggregator) not found")
    comps[0]["path"], comps[0]["args"] = AGGREGATOR, {}

    for group in server.get("task_data_filters", []):
        group["filters"] = [f for f in group.get("filters", []) if f.get("path") != RELAY]
    for chain in ("task_data_filters", "task_result_filters"):
        for group in server.get(chain, []):
            if "train" in group.get("tasks", []) and any(f.get("path") == METER for f in group["filters"]):
                group["tasks"] = [*group["tasks"], *(t for t in SecAggTask.ALL if t not in group["tasks"])]

    client.setdefault("executors", []).append(
        {"tasks": list(SecAggTask.ALL), "executor": {"id": "secagg_executor", "path": EXECUTOR,
                                                     "args": {"identity": opts["identity"]}}}
    )  # fmt: skip
    groups = client.setdefault("task_result_filters", [])
    train = [g for g in groups if "train" in g.get("tasks", [])]
    mask = {"path": MASK_FILTER, "args": {}}
    if train and train[0]["tasks"] == ["train"]:
        train[0]["filters"].append(mask)
    elif train:  # split "train" out of a shared group, keeping its filters first
        train[0]["tasks"] = [t for t in train[0]["tasks"] if t != "train"]
        groups.append({"tasks": ["train"], "filters": [*train[0]["filters"], mask]})
    else:
        groups.append({"tasks": ["train"], "filters": [mask]})

    for entry in client.get("executors", []):
        ex = entry.get("executor", {})
        args = ex.get("args", {})
        off = EXTRAS_OFF.get(args.get("learner_path", ""))
        if off:
            _set(args.setdefault("learner_args", {}), *off)


def enable_in_job(job_dir: str | Path, options: dict | None = None) -> Path:
    """Apply :func:`apply_secure_aggregation` to the config files of ``job_dir`` in place."""
    job = Path(job_dir)
    paths = [job / "app" / "config" / f"config_fed_{side}.json" for side in ("server", "client")]
    try:
        server, client = (json.loads(p.read_text()) for p in paths)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{job}: cannot read the FLARE job configs: {e}") from e
    apply_secure_aggregation(server, client, options)
    for p, cfg in zip(paths, (server, client), strict=True):
        p.write_text(json.dumps(cfg, indent=2) + "\n")
    return job


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", type=Path, help="job folder to edit in place (e.g. made by `fedmrg job variant`)")
    p.add_argument("--clip-norm", type=float, default=DEFAULTS["clip_norm"])
    p.add_argument("--max-weight", type=int, default=DEFAULTS["max_weight"])
    p.add_argument("--threshold", type=int, default=DEFAULTS["threshold"])
    p.add_argument("--min-sites", type=int, default=DEFAULTS["min_sites"])
    p.add_argument("--identity", default="auto", choices=["auto", "provisioned", "simulated"])
    a = p.parse_args(argv)
    opts = {"clip_norm": a.clip_norm, "max_weight": a.max_weight, "threshold": a.threshold,
            "min_sites": a.min_sites, "identity": a.identity}  # fmt: skip
    try:
        enable_in_job(a.job, opts)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"secure aggregation on in {a.job}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

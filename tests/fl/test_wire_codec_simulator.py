"""End to end: `nvflare simulator` on a copy of jobs/toy with the wire codec on both directions.

The test edits its own job copy: clients encode their ``train`` / ``submit_model`` results (``int8-row`` deltas) and
decode the model sent down; the server decodes results *after* its byte meter and encodes the model it sends
(``bfloat16``) *before* its meter, so the run summary counts the encoded bytes. A test-only recorder
(``tests/fl/sim_plugins/wire_recorder.py``) placed after the client's encoder records what left the site.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedmrg.fl.state_files import load_state
from fedmrg.fl.toy_learner import ToyLearner
from fedmrg.job import simulator_command
from fedmrg.paths import REPO_ROOT

SITES = ["site-1", "site-2"]
TOY_ARGS = {"in_features": 8, "hidden": 16, "num_train": 32, "num_val": 16, "local_steps": 10, "bank_size": 3, "seed": 0}
PLUGINS = Path(__file__).parent / "sim_plugins"
CODEC = "fedmrg.fl.wire_codec"
ALLOW = [
    "fedmrg.fl.",
    "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator",
    "nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector",
    "wire_recorder.WireRecorder",
]


def _edit(path: Path, fn) -> None:
    cfg = json.loads(path.read_text())
    fn(cfg)
    path.write_text(json.dumps(cfg, indent=2))


def _make_job(tmp: Path, *, up_codec: str, down_codec: str) -> Path:
    job = tmp / "job"
    shutil.copytree(Path(REPO_ROOT) / "jobs" / "toy", job)
    rec_dir = str(tmp / "wire")

    def server(cfg):
        for c in cfg["components"]:
            if c["id"] == "persistor":
                c["args"] |= {"learner_args": TOY_ARGS}
        sag = cfg["workflows"][0]
        sag["args"]["num_rounds"] = 2
        cfg["workflows"] = [sag]  # no cross-site evaluation: rounds only
        for chain in cfg["task_data_filters"]:  # encode the model sent down, before the meter measures it
            if "train" in chain["tasks"]:
                chain["filters"].insert(-1, {"path": f"{CODEC}.WireEncodeFilter", "args": {"codec": down_codec}})
        for chain in cfg["task_result_filters"]:  # decode after the meter: it counts what crossed the wire
            chain["filters"].append({"path": f"{CODEC}.WireDecodeFilter", "args": {}})

    def client(cfg):
        cfg["executors"][0]["executor"]["args"] |= {"learner_args": TOY_ARGS}
        recorder = {"path": "wire_recorder.WireRecorder", "args": {"out_dir": rec_dir}}
        tasks = ["train", "validate", "submit_model"]
        encode = {"path": f"{CODEC}.WireEncodeFilter", "args": {"codec": up_codec}}
        cfg["task_result_filters"] = [{"tasks": tasks, "filters": [encode, recorder]}]
        cfg["task_data_filters"] = [{"tasks": tasks, "filters": [{"path": f"{CODEC}.WireDecodeFilter", "args": {}}]}]

    _edit(job / "app" / "config" / "config_fed_server.json", server)
    _edit(job / "app" / "config" / "config_fed_client.json", client)
    return job


@pytest.mark.slow
def test_simulator_with_wire_codec(tmp_path):
    job = _make_job(tmp_path, up_codec="int8-row", down_codec="bfloat16")
    ws = tmp_path / "ws"
    (ws / "local").mkdir(parents=True)
    (ws / "local" / "resources.json").write_text(json.dumps({"class_allow_list": ALLOW}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        simulator_command(job, ws, sites=2, threads=2), env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    app = ws / "server" / "simulate_job" / "app_server"
    init = ToyLearner(**TOY_ARGS).initial_shared_state()
    keys = sorted(init)

    # the server aggregated decoded float32 deltas: the global model is float32 and moved
    final, meta = load_state(app / "FL_global_model.safetensors")
    assert sorted(final) == keys and meta["round"] == "1"
    assert all(v.dtype == np.float32 and np.all(np.isfinite(v)) for v in final.values())
    assert not np.allclose(final["shared.weight"], init["shared.weight"])

    # what left each site: int8 payloads plus float32 scales, under the shared keys
    for site in SITES:
        lines = (tmp_path / "wire" / f"{site}.jsonl").read_text().splitlines()
        ups = [json.loads(x) for x in lines if json.loads(x)["task"] == "train"]
        assert [r["round"] for r in ups] == [0, 1]
        for r in ups:
            assert r["dtypes"] == ["float32", "int8"] and "fedmrg.wire_codec" in r["meta_keys"]
            assert sorted(k for k in r["keys"] if "::" not in k) == keys

    # the meter counted the encoded bytes: 1 byte per value + 4 per row up, 2 bytes per value down
    values = sum(v.size for v in init.values())
    rows = sum(v.shape[0] if v.ndim >= 2 else 1 for v in init.values())
    summary = json.loads((app / "summary" / "summary.json").read_text())
    for r in summary["rounds"]:
        assert r["param_bytes_up"] == 2 * (values + 4 * rows) < 0.5 * 2 * 4 * values
        assert r["param_bytes_down"] == 2 * 2 * values

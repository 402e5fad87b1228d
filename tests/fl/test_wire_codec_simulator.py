"""End to end: `nvflare simulator` on a copy of jobs/toy with the wire codec on both directions.

The test edits its own job copy with :func:`fedmrg.fl.wire_codec.apply_wire_codec`: clients encode their ``train``
results (``int8-row`` deltas) and decode the model sent down; the server decodes results *after* its byte meter and
encodes the model it sends (``bfloat16``) *before* its meter, so the run summary counts the encoded bytes. A test-only recorder
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
from fedmrg.fl.wire_codec import apply_wire_codec
from fedmrg.job import simulator_command
from fedmrg.paths import REPO_ROOT

SITES = ["site-1", "site-2"]
TOY_ARGS = {
    "in_features": 8,
    "hidden": 16,
    "num_train": 32,
    "num_val": 16,
    "local_steps": 10,
    "bank_size": 3,
    "seed": 0,
}
PLUGINS = Path(__file__).parent / "sim_plugins"
ALLOW = [
    "fedmrg.fl.",
    "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator",
    "nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector",
    "wire_recorder.WireRecorder",
]


def _make_job(tmp: Path, *, up_codec: str, down_codec: str) -> Path:
    job = tmp / "job"
    shutil.copytree(Path(REPO_ROOT) / "jobs" / "toy", job)
    server_path, client_path = (
        job / "app" / "config" / "config_fed_server.json",
        job / "app" / "config" / "config_fed_client.json",
    )
    server, client = json.loads(server_path.read_text()), json.loads(client_path.read_text())
    for c in server["components"]:
        if c["id"] == "persistor":
            c["args"] |= {"learner_args": TOY_ARGS}
    sag = server["workflows"][0]
    sag["args"]["num_rounds"] = 2
    server["workflows"] = [sag]  # no cross-site evaluation: rounds only
    client["executors"][0]["executor"]["args"] |= {"learner_args": TOY_ARGS}
    client["task_result_filters"], client["task_data_filters"] = [], []
    apply_wire_codec(server, client, up=up_codec, down=down_codec)
    # the recorder last in the client's result chains: it sees what leaves the site
    recorder = {"path": "wire_recorder.WireRecorder", "args": {"out_dir": str(tmp / "wire")}}
    for chain in client["task_result_filters"]:
        chain["filters"].append(recorder)
    server_path.write_text(json.dumps(server, indent=2))
    client_path.write_text(json.dumps(client, indent=2))
    return job


@pytest.mark.slow
def test_simulator_with_wire_codec(tmp_path):
    job = _make_job(tmp_path, up_codec="int8-row", down_codec="bfloat16")
    ws = tmp_path / "ws"
    (ws / "local").mkdir(parents=True)
    (ws / "local" / "resources.json").write_text(json.dumps({"class_allow_list": ALLOW}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        simulator_command(job, ws, sites=2, threads=2), env=env, capture_output=True, text=True, timeout=480
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
    rows = sum(min(v.shape) if v.ndim == 2 else (v.shape[0] if v.ndim > 2 else 1) for v in init.values())  # scales
    summary = json.loads((app / "summary" / "summary.json").read_text())
    for r in summary["rounds"]:
        assert r["param_bytes_up"] == 2 * (values + 4 * rows) < 0.5 * 2 * 4 * values
        assert r["param_bytes_down"] == 2 * 2 * values

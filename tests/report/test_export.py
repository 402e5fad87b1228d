"""``fedmrg export``: a model folder that loads in a fresh process and writes the same greedy text as the in-run
model; every run output is accepted as a source (run folder, FLARE workspace, app_server, global model file, demo
folder); generic and personalized reports differ where the adapters differ; refusals name the problem."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fedmrg.cli import main
from fedmrg.errors import FedMRGError
from fedmrg.fl.state_files import save_state
from fedmrg.inference.predict import Predictor
from fedmrg.inference.sources import open_source
from fedmrg.report.export import export_model, load_model

_spec = importlib.util.spec_from_file_location("_tiny_model", Path(__file__).parents[1] / "inference" / "tiny_model.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("export")
    run = tiny.make_tiny_run(root)
    images = [tiny.write_png(root / f"img{i}.png", tiny.radiograph(48, seed=i)) for i in range(2)]
    images.append(tiny.write_dicom(root / "mono1.dcm", tiny.radiograph(40, seed=5), photometric="MONOCHROME1"))
    return {"root": root, "run": run, "images": images}


def _fake_workspace(ws: Path, run: Path, *, sites: tuple[str, ...] = ("site-1", "site-2")) -> Path:
    """The layout `nvflare simulator` leaves (server app with its persistor config and global model; each site's
    private state where SharedStateExecutor keeps it), filled from a run folder."""
    from safetensors.numpy import load_file

    app = ws / "server" / "simulate_job" / "app_server"
    (app / "config").mkdir(parents=True)
    config_file = ws / "tiny.yaml"  # the job names a YAML; the persistor learner reads it
    config_file.write_text((run / "config.yaml").read_text())
    server = {"format_version": 2, "components": [{"id": "persistor",
              "path": "fedmrg.fl.shared_state_persistor.SharedStatePersistor",
              "args": {"learner_path": "fedmrg.report.fl_learner.FedMRGLearner",
                       "learner_args": {"config": str(config_file)}}}]}  # fmt: skip
    (app / "config" / "config_fed_server.json").write_text(json.dumps(server))
    save_state(app / "FL_global_model.safetensors", load_file(str(run / "shared_state.safetensors")),
               metadata={"round": "4"})  # fmt: skip
    for site in sites:
        site_app = ws / site / "simulate_job" / f"app_{site}"
        (site_app / "config").mkdir(parents=True)
        client = {"format_version": 2, "executors": [{"tasks": ["train"], "executor": {
                  "path": "fedmrg.fl.shared_state_executor.SharedStateExecutor", "args": {}}}]}  # fmt: skip
        (site_app / "config" / "config_fed_client.json").write_text(json.dumps(client))
        private = site_app / "fedmrg_private" / "private"
        private.mkdir(parents=True)
        (private / "private_state.safetensors").write_bytes((run / "private" / f"{site}.safetensors").read_bytes())
    return app


@pytest.mark.slow  # a second interpreter imports torch, transformers, peft and monai (about 20 s of CPU)
def test_export_loads_in_a_fresh_process_with_the_same_greedy_text(env):
    """The exported model, loaded by a new interpreter with no run folder, writes what the in-run model writes."""
    out = export_model(env["run"], site="site-1", out=env["root"] / "model-site-1")
    for name in ("README.md", "fedmrg_model.json", "config.yaml", "base_lm/config.json", "base_lm/tokenizer.json",
                 "vision.safetensors", "decoder_shared.safetensors", "specialized.safetensors",
                 "adapters/generic/adapter_config.json", "adapters/spec_local/adapter_model.safetensors"):  # fmt: skip
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "config.yaml").read_text())["decoder"]["path"] == "base_lm"
    from safetensors import safe_open

    with safe_open(str(out / "vision.safetensors"), "pt") as f:
        prefixes = {k.split(".")[0] for k in f.keys()}  # noqa: SIM118
    assert prefixes == {"encoder", "projector", "diagnosis_head"}

    in_run = load_model(env["run"], site="site-1")  # the run's own model, as `fedmrg generate --checkpoint` had it
    expected = {mode: [p.to_dict() for p in Predictor(in_run).predict_files(env["images"], generic_only=g)]
                for mode, g in (("personalized", False), ("generic", True))}  # fmt: skip
    code = (
        "import json, sys\n"
        "from fedmrg.inference.predict import Predictor\n"
        "p = Predictor.load(sys.argv[1])\n"
        "imgs = sys.argv[2:]\n"
        "print(json.dumps({m: [x.to_dict() for x in p.predict_files(imgs, generic_only=g)] "
        "for m, g in (('personalized', False), ('generic', True))}))\n"
    )
    moved = env["root"] / "elsewhere" / "model"  # self-contained: it still loads after a move
    moved.parent.mkdir()
    out.rename(moved)
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: one thread is fastest on a shared CPU
    proc = subprocess.run([sys.executable, "-c", code, str(moved), *map(str, env["images"])], capture_output=True,
                          text=True, timeout=900, cwd=env["root"], env=env_vars)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["report"] for r in got["personalized"]] == [r["report"] for r in expected["personalized"]]
    assert [r["report"] for r in got["generic"]] == [r["report"] for r in expected["generic"]]
    for a, b in zip(got["personalized"], expected["personalized"], strict=True):
        assert [o["state"] for o in a["observations"]] == [o["state"] for o in b["observations"]]
        np.testing.assert_allclose([o["probability"] for o in a["observations"]],
                                   [o["probability"] for o in b["observations"]], atol=1e-4)  # fmt: skip
    assert all(r["site"] == "site-1" and r["adapter"] == "mixed" for r in got["personalized"])
    assert all(r["report"] for r in got["generic"])
    # the adapters differ, and so do the reports (at least one image; random adapters make all of them differ)
    assert [r["report"] for r in got["generic"]] != [r["report"] for r in got["personalized"]]


def test_two_sites_give_different_personalized_reports_and_generic_export_has_no_site(env):
    one, two = (Predictor(load_model(env["run"], site=s)) for s in ("site-1", "site-2"))
    r1 = [p.report for p in one.predict_files(env["images"])]
    r2 = [p.report for p in two.predict_files(env["images"])]
    assert r1 != r2
    generic = export_model(env["run"], site=None, out=env["root"] / "model-generic")
    assert not (generic / "specialized.safetensors").exists() and not (generic / "adapters" / "spec_local").exists()
    loaded = load_model(generic)
    assert loaded.private_site is None and loaded.adapter == "generic"
    info = json.loads((generic / "fedmrg_model.json").read_text())
    assert info["site"] is None and info["sites_with_adapter"] == ["site-1", "site-2"]


def test_peft_folders_hold_the_loaded_adapters(env):
    """The PEFT exports are the same weights the model uses: PeftModel.from_pretrained on the base LM."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = env["root"] / "model-peft"
    export_model(env["run"], site="site-2", out=out)
    loaded = load_model(out)
    ours = {k: v for k, v in loaded.model.decoder.state_dict().items() if ".spec_local." in k and "lora_" in k}
    base = AutoModelForCausalLM.from_pretrained(out / "base_lm")
    peft = PeftModel.from_pretrained(base, out / "adapters" / "spec_local")
    theirs = {k: v for k, v in peft.state_dict().items() if "lora_" in k}
    assert len(theirs) == len(ours) > 0
    for k, v in theirs.items():
        torch.testing.assert_close(v, ours[k.replace(".default.", ".spec_local.")])


def test_every_run_output_is_a_source(env, tmp_path):
    """A FLARE workspace, its app_server, its global model file and a demo folder give the run's states."""
    demo = tmp_path / "demo"
    app = _fake_workspace(demo / "workspace", env["run"])
    run_src = open_source(env["run"])
    want = run_src.shared_state()
    for path in (demo, demo / "workspace", app, app / "FL_global_model.safetensors"):
        src = open_source(path)
        assert src.kind == "workspace" and src.sites == ["site-1", "site-2"] and src.round == 4, path
        got = src.shared_state()
        assert sorted(got) == sorted(want)
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert torch.equal(src.private_state("site-2")["specialized.base_model.model.model.layers.0.self_attn."
                                                       "q_proj.lora_A.weight"],
                           run_src.private_state("site-2")["specialized.base_model.model.model.layers.0.self_attn."
                                                           "q_proj.lora_A.weight"])  # fmt: skip
    out = export_model(demo, site="site-2", out=tmp_path / "m")
    card = (out / "README.md").read_text()
    assert "site-2" in card and "round 4" in card and "DP-SGD in the run configuration: off" in card


def test_cli_export_generate_evaluate_with_model(env, tmp_path, capsys):
    out = tmp_path / "cli-model"
    assert main(["export", str(env["run"]), "--site", "site-1", "--out", str(out)]) == 0
    assert f"fedmrg generate --model {out}" in capsys.readouterr().out
    csv_path, sr_dir = tmp_path / "batch.csv", tmp_path / "sr"
    assert main(["generate", "--model", str(out), "--json", "--csv", str(csv_path), "--sr", str(sr_dir),
                 *map(str, env["images"])]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 3 and all(len(r["observations"]) == 14 and r["site"] == "site-1" for r in rows)
    assert len(csv_path.read_text().splitlines()) == 4
    import pydicom

    sr = pydicom.dcmread(sr_dir / "mono1.dcm.sr.dcm")
    source = pydicom.dcmread(env["images"][2], stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == "P-0001"
    assert sr.ContentSequence[0].TextValue == rows[2]["report"]


def test_refusals_name_the_problem(env, tmp_path):
    with pytest.raises(FedMRGError, match=r"no specialized adapter for site 'site-9' \(sites with one: site-1, site-2"):
        export_model(env["run"], site="site-9", out=tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(FedMRGError, match="exists and is not empty"):
        export_model(env["run"], site=None, out=tmp_path / "full")
    with pytest.raises(FedMRGError, match="no FedMRG model found"):
        open_source(tmp_path)
    with pytest.raises(FedMRGError, match="no specialized adapter for site 'site-9'"):
        load_model(env["run"], site="site-9")
    assert load_model(env["run"], site="unseen-1", require_site=False).adapter == "generic"

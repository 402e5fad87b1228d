"""The vision learner through its protocol, model folders, predict / evaluate, and the committed jobs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedmrg.cli import main
from fedmrg.errors import ConfigError
from fedmrg.fl.learner import SharedStateLearner, check_state
from fedmrg.fl.site_config import SiteConfig
from fedmrg.vision.bundle import load_model_dir, save_model_dir
from fedmrg.vision.learner import VisionLearner

REPO = Path(__file__).resolve().parents[2]


def _learner(tiny_backbones, tmp_path, task="synthetic_seg", method="prompt_gen", site="site-1", **kw):
    b = tiny_backbones["sam" if task.endswith("seg") else "vit"]
    args = dict(task=task, method=method, backbone=str(b), num_sites=2, synthetic_samples=60, rounds=2,
                local_steps=2, batch_size=8, cnn_image_size=32, **kw)
    learner = VisionLearner(**args)
    learner.setup(site, str(tmp_path / site), SiteConfig(site=site))
    return learner, args


@pytest.mark.parametrize("task", ["synthetic_cls", "synthetic_seg"])
def test_round_trip_only_trained_parts_travel(tiny_backbones, tmp_path, task):
    learner, args = _learner(tiny_backbones, tmp_path, task)
    assert isinstance(learner, SharedStateLearner)
    server = VisionLearner(**args)
    init = server.initial_shared_state()
    assert sorted(init) == server.shared_keys() == learner.shared_keys()
    assert all(k.startswith(("prompter.", "head.", "backbone.mask_decoder.")) for k in init)
    assert any(k.startswith("prompter.task_embedding") for k in init)
    out = learner.train(init, round_num=0, extra={})
    check_state(out.shared_state, learner.shared_keys(), what="vision update")
    assert any(not np.array_equal(out.shared_state[k], init[k]) for k in init)
    assert 0 < out.metrics["trained_share"] < 1 and out.metrics["shared_bytes"] == 4 * sum(v.size for v in init.values())
    val = learner.validate(out.shared_state, personalized=False, split="val")
    assert set(val) >= ({"accuracy"} if task == "synthetic_cls" else {"dice"})
    info = json.loads((tmp_path / "site-1" / "vision_site_info.json").read_text())
    assert info["sizes"]["train"] > 0 and info["trained_share"] < 1


def test_local_method_keeps_its_own_model(tiny_backbones, tmp_path):
    learner, args = _learner(tiny_backbones, tmp_path, "synthetic_cls", method="local")
    init = VisionLearner(**args).initial_shared_state()
    first = learner.train(init, round_num=0, extra={})
    other = {k: np.zeros_like(v) for k, v in init.items()}
    second = learner.train(other, round_num=1, extra={})  # the aggregate is ignored: continues from its own model
    assert any(np.abs(second.shared_state[k]).sum() > 0 for k in init if k.startswith("head."))
    learner.save_private(str(tmp_path))
    fresh, _ = _learner(tiny_backbones, tmp_path / "b", "synthetic_cls", method="local")
    fresh.load_private(str(tmp_path))
    assert all(np.array_equal(fresh.own_state[k], second.shared_state[k]) for k in init)
    assert first.num_samples == second.num_samples


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown key.*`promts`"):
        VisionLearner(promts=3)
    with pytest.raises(ConfigError, match="num_sites"):
        VisionLearner(method="centralized", num_sites=3)
    with pytest.raises(ConfigError, match="`task`"):
        VisionLearner(task="mnist")


def test_site_names_must_fit_num_sites(tiny_backbones, tmp_path):
    with pytest.raises(ConfigError, match="site-1..site-2"):
        _learner(tiny_backbones, tmp_path, site="site-7")


def _seg_folder(root: Path, n: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), np.uint8)).save(root / "images" / f"x{i}.png")
        m = np.zeros((40, 50), np.uint8)
        m[10:25, 10:30] = 255
        Image.fromarray(m).save(root / "masks" / f"x{i}.png")
    return root


def test_model_folder_predict_and_evaluate_segmentation(tiny_backbones, tmp_path):
    learner, args = _learner(tiny_backbones, tmp_path, "synthetic_seg")
    state = learner.train(learner.initial_shared_state(), round_num=0, extra={}).shared_state
    from fedmrg.vision.config import load_vision_config

    model_dir = save_model_dir(tmp_path / "model", load_vision_config(args), state)
    model, pre, info = load_model_dir(model_dir)
    assert info["kind"] == "segmentation" and pre.image_size == 32
    assert torch.equal(model.state_dict()["prompter.task_embedding"], torch.from_numpy(state["prompter.task_embedding"]))
    data = _seg_folder(tmp_path / "data")
    assert main(["vision", "predict", "--model", str(model_dir), "--images", str(data / "images"), "--out",
                 str(tmp_path / "pred"), "--overlays"]) == 0
    mask = np.asarray(Image.open(tmp_path / "pred" / "x0.png"))
    assert mask.shape == (40, 50) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "pred" / "overlays" / "x0.png").is_file()
    assert main(["vision", "evaluate", "--model", str(model_dir), "--data", str(data), "--out",
                 str(tmp_path / "m.json")]) == 0
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["images"] == 3 and 0 <= res["metrics"]["dice"] <= 1


def test_model_folder_predict_and_evaluate_classification(tiny_backbones, tmp_path):
    learner, args = _learner(tiny_backbones, tmp_path, "synthetic_cls")
    state = learner.train(learner.initial_shared_state(), round_num=0, extra={}).shared_state
    from fedmrg.vision.config import load_vision_config

    model_dir = save_model_dir(tmp_path / "model", load_vision_config(args), state)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(4):
        Image.new("L" if i == 3 else "RGB", (30, 30), 100 + i).save(imgs / f"i{i}.png")  # one grayscale
    with (imgs / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "label"], *[[f"i{i}.png", ["plain", "striped"][i % 2]] for i in range(4)]])
    assert main(["vision", "predict", "--model", str(model_dir), "--images", str(imgs), "--out", str(tmp_path / "p")]) == 0
    rows = list(csv.DictReader((tmp_path / "p" / "predictions.csv").open()))
    assert [r["image"] for r in rows] == [f"i{i}.png" for i in range(4)]
    assert set(rows[0]) == {"image", "prediction", "p_plain", "p_striped"}
    assert abs(float(rows[0]["p_plain"]) + float(rows[0]["p_striped"]) - 1) < 1e-4
    np.savez(tmp_path / "t.npz", test_images=np.zeros((6, 28, 28, 3), np.uint8), test_labels=np.array([0, 1] * 3))
    assert main(["vision", "evaluate", "--model", str(model_dir), "--data", str(tmp_path / "t.npz"), "--out",
                 str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["images"] == 6
    assert main(["vision", "evaluate", "--model", str(model_dir), "--data", str(imgs), "--out",
                 str(tmp_path / "m2.json")]) == 0


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a vision model folder"):
        load_model_dir(tmp_path)


def test_committed_jobs_match_their_definition(tmp_path):
    from fedmrg.job import is_byoc
    from fedmrg.vision.job import DEFAULT_ARGS, write_job

    for kind, args in DEFAULT_ARGS.items():
        fresh = write_job(tmp_path / kind, args)
        committed = REPO / "jobs" / f"vision_{kind}"
        for rel in ("meta.json", "app/config/config_fed_server.json", "app/config/config_fed_client.json"):
            assert json.loads((committed / rel).read_text()) == json.loads((fresh / rel).read_text()), rel
        assert is_byoc(committed)

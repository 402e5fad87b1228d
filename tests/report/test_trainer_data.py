"""The trainer's inputs: ReportDataset (images, views, states, bad records) and the run configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from fedmrg.data.records import ImageRef, StudyRecord
from fedmrg.errors import ConfigError, DataError
from fedmrg.report.data_loading import ReportDataset
from fedmrg.report.run_config import (
    load_run_config,
    packaged_config,
    run_config_from_dict,
    run_config_to_dict,
)

from .test_trainer import write_records


def test_samples_have_model_images_states_and_reproducible_views(tmp_path):
    records = write_records(tmp_path, n=3)
    ds = ReportDataset(records, image_size=32, views=True, seed=5)
    s = ds[1]
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert s["view"].shape == (3, 32, 32) and not torch.equal(s["view"], s["image"])
    assert s["states"] == ds.states[1] and len(s["states"]) == 14 and s["study_id"] == "s1"
    again = ReportDataset(records, image_size=32, views=True, seed=5)[1]
    assert torch.equal(again["view"], s["view"])  # same seed, epoch and index: same draw
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["view"], s["view"])  # a new epoch draws again
    assert torch.equal(ds[1]["image"], s["image"])  # the image itself is deterministic


def test_site_transform_is_applied_before_the_model_transform(tmp_path):
    records = write_records(tmp_path, n=1)
    plain = ReportDataset(records, image_size=32)[0]["image"]
    dark = ReportDataset(records, image_size=32, site_transform=lambda x: x * 0.5)[0]["image"]
    assert dark.mean() < plain.mean() - 0.3  # half the intensity, then ImageNet normalisation


def test_unlabelled_records_get_states_from_the_labeler(tmp_path):
    rec = write_records(tmp_path, n=1)[0]
    rec = StudyRecord("u", "p", images=rec.images, findings="Mild cardiomegaly. No pleural effusion.")
    states = ReportDataset([rec], image_size=32).states[0]
    from fedmrg.observations import OBSERVATIONS, State

    assert states[OBSERVATIONS.index("Cardiomegaly")] == State.POSITIVE
    assert states[OBSERVATIONS.index("Pleural Effusion")] == State.NEGATIVE


def test_records_that_cannot_train_are_refused_by_name(tmp_path):
    good = write_records(tmp_path, n=1)[0]
    no_image = StudyRecord("no-img", "p", findings="Heart normal.")
    empty = StudyRecord("empty", "p", images=good.images, findings="  ", impression="")
    with pytest.raises(DataError, match=r"1 of 2 studies have no image.*no-img"):
        ReportDataset([good, no_image], image_size=32)
    with pytest.raises(DataError, match=r"empty report.*empty"):
        ReportDataset([good, empty], image_size=32)


def test_an_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    rec = StudyRecord("b", "p", images=[ImageRef(str(bad), "PA")], findings="Heart normal.", labels={})
    with pytest.raises(DataError, match="broken.png"):
        ReportDataset([rec], image_size=32)[0]


# ---------------------------------------------------------------------------------------------------- run config


def test_run_config_reads_model_and_training_sections(tiny_llama_dir, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "decoder": {"path": str(tiny_llama_dir), "mode": "llm"},
                "encoder": {"preset": "resnet-tiny", "image_size": 64},
                "training": {"batch_size": 4, "learning_rate": 0.01, "rounds": 3},
            }
        )
    )
    cfg = load_run_config(path)
    assert cfg.model.decoder.mode == "llm" and cfg.training.batch_size == 4 and cfg.training.rounds == 3
    assert cfg.training.weight_decay == 0.05  # the paper's default
    assert run_config_to_dict(cfg)["training"]["learning_rate"] == 0.01


def test_run_config_errors_name_the_key(tiny_llama_dir, tmp_path):
    base = {"decoder": {"path": str(tiny_llama_dir)}}
    with pytest.raises(ConfigError, match="unknown key.*`trainin`.*allowed.*training"):
        run_config_from_dict({**base, "trainin": {}})
    with pytest.raises(ConfigError, match=r"`training.batch_size` must be >= 1"):
        run_config_from_dict({**base, "training": {"batch_size": 0}})
    with pytest.raises(ConfigError, match=r"`training.lr`"):
        run_config_from_dict({**base, "training": {"lr": 1.0}})
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match=rf"`decoder.path`: dir not found: {missing}"):
        run_config_from_dict({"decoder": {"path": str(missing)}})


def test_builtin_keyword_resolves_and_is_written_back(tmp_path):
    cfg = run_config_from_dict(
        {"decoder": {"path": "builtin-tiny"}, "encoder": {"path": "builtin-tiny"}}, cache_root=tmp_path, progress=False
    )
    assert Path(cfg.model.decoder.path).parent.parent == tmp_path / "builtin"
    assert (Path(cfg.model.encoder.path) / "config.json").is_file()
    assert cfg.builtin == {"decoder.path": "builtin-tiny", "encoder.path": "builtin-tiny"}
    data = run_config_to_dict(cfg)
    assert data["decoder"]["path"] == "builtin-tiny" and data["encoder"]["path"] == "builtin-tiny"


@pytest.mark.parametrize("name", ["default.yaml", "llama2-7b.yaml"])
def test_packaged_configs_parse(name, tmp_path):
    from fedmrg.config import load_yaml

    raw = load_yaml(packaged_config(name))
    raw["decoder"]["path"] = str(tmp_path)  # the model folders themselves are tested elsewhere
    raw["encoder"]["path"] = None
    cfg = run_config_from_dict(raw)
    assert cfg.model.method == "fedmrg" and cfg.training.weight_decay == 0.05
    with pytest.raises(ConfigError, match="no packaged config"):
        packaged_config("nope.yaml")


def test_balance_findings_is_refused_with_dp_sgd(tiny_llama_dir):
    base = {"decoder": {"path": str(tiny_llama_dir)}, "ablations": {"no_contrastive": True}}
    dp = {"privacy": {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0}}}
    run_config_from_dict({**base, **dp})  # DP alone is fine
    with pytest.raises(ConfigError, match=r"run.yaml: `training.balance_findings` > 0 .*Poisson"):
        run_config_from_dict({**base, **dp, "training": {"balance_findings": 0.5}}, source="run.yaml")
    with pytest.raises(ConfigError, match=r"`training.balance_findings` must be in \[0, 2\]"):
        run_config_from_dict({**base, "training": {"balance_findings": -0.1}})

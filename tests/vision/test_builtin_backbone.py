"""The built-in backbone's recipe (``fedmrg.vision.builtin``) on a tiny scale: pretraining lowers the contrastive loss,
a rebuild gives the same bytes, the saved folder loads as a plain ViT, and the probe's paired AUC interval is sane."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmrg.errors import ConfigError
from fedmrg.vision.builtin import (
    RECIPE,
    augment,
    paired_auc_gain,
    pretrain,
    pretraining_images,
    save_backbone,
    sha256,
)

TINY = RECIPE | {"image_size": 16, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "intermediate_size": 64, "projection_hidden": 32, "projection_dim": 16, "num_rendered": 24,
                 "steps": 30, "batch_size": 8, "warmup_steps": 2, "lr": 3e-3}  # fmt: skip


@pytest.fixture
def data_root(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "medmnist").mkdir()
    for name in TINY["medmnist_files"]:
        shape = (12, 28, 28, 3) if name.startswith("retina") else (12, 28, 28)  # BreastMNIST is grayscale
        np.savez(tmp_path / "medmnist" / name, train_images=rng.integers(0, 256, shape, dtype=np.uint8))
    return tmp_path


def test_pool_is_medmnist_plus_rendered_images_and_a_missing_file_is_named(data_root, tmp_path):
    images, sources = pretraining_images(data_root, TINY)
    assert images.shape == (12 + 12 + 24, 16, 16, 3) and images.dtype == np.uint8
    assert {k.split(":")[0] for k in sources} == {f"medmnist/{n}" for n in TINY["medmnist_files"]} | {"rendered"}
    with pytest.raises(ConfigError, match=r"medmnist/retinamnist_trainval.npz: missing.*--data-root"):
        pretraining_images(tmp_path / "elsewhere", TINY)


def test_two_views_of_a_batch_differ_and_stay_in_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a, b = augment(x, TINY, g), augment(x, TINY, g)
    assert a.shape == b.shape == (4, 3, 16, 16) and not torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1


def test_pretraining_lowers_the_loss_and_rebuilds_bit_for_bit(data_root, tmp_path):
    torch.set_num_threads(1)
    images, _ = pretraining_images(data_root, TINY)
    with torch.random.fork_rng():
        vit, log = pretrain(images, TINY, log_every=10)
        again, _ = pretrain(images, TINY, log_every=10)
    assert len(log) == 3 and log[-1]["loss"] < log[0]["loss"]
    save_backbone(vit, tmp_path / "a", {"recipe": TINY})
    save_backbone(again, tmp_path / "b", {"recipe": TINY})
    assert sha256(tmp_path / "a" / "model.safetensors") == sha256(tmp_path / "b" / "model.safetensors")

    from fedmrg.vision.backbones import load_vit

    loaded, _ = load_vit(tmp_path / "a")  # what `--backbone DIR` and the built-in default load
    x = torch.zeros(2, 3, 16, 16)
    assert loaded(pixel_values=x).last_hidden_state.shape == (2, 1 + 4, 32)


def test_paired_auc_gain_is_zero_for_the_same_model_and_positive_for_a_better_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    good = np.stack([1 - y * 0.8 - 0.1, y * 0.8 + 0.1], 1) + rng.normal(0, 0.3, (200, 2))
    bad = rng.random((200, 2))
    same = paired_auc_gain(y, bad, bad, n_boot=50)
    assert same["auc_gain"] == 0 and same["ci95"] == [0.0, 0.0]
    better = paired_auc_gain(y, good, bad, n_boot=50)
    assert better["auc_gain"] > 0.2 and 0 < better["ci95"][0] < better["auc_gain"] < better["ci95"][1]


def test_probes_score_the_backbone_against_random_init_on_both_tasks(tmp_path):
    """``run_probes`` on a small copy of the two layouts: a RetinaMNIST ``.npz`` and a HAM10000 CSV + JPEGs whose
    melanoma images are brighter, so a probe on any features separates them."""
    from PIL import Image

    from fedmrg.vision.builtin import run_probes

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "medmnist").mkdir(parents=True)
    grades = np.arange(40) % 5
    np.savez(root / "medmnist" / "retinamnist_trainval.npz",
             train_images=rng.integers(0, 256, (40, 28, 28, 3), dtype=np.uint8), train_labels=grades[:, None],
             val_images=rng.integers(0, 256, (20, 28, 28, 3), dtype=np.uint8), val_labels=grades[:20, None])  # fmt: skip
    (root / "ham10000" / "images").mkdir(parents=True)
    rows = ["lesion_id,image_id,dx"]
    for i in range(60):
        mel = i % 3 == 0
        pixels = rng.integers(150 if mel else 0, 256 if mel else 110, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "ham10000" / "images" / f"ISIC_{i:07d}.jpg")
        rows.append(f"HAM_{i // 2:07d},ISIC_{i:07d},{'mel' if mel else 'nv'}")
    (root / "ham10000" / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    from transformers import ViTModel

    from fedmrg.vision.builtin import vit_config

    save_backbone(ViTModel(vit_config(TINY), add_pooling_layer=False), tmp_path / "vit", {"recipe": TINY})
    out = run_probes(tmp_path / "vit", root)
    for name in ("builtin", "random_init"):
        for task in ("retinamnist_val", "ham10000_melanoma"):
            assert 0 <= out[name][task]["accuracy"] <= 1 and 0 <= out[name][task]["auc"] <= 1
        assert out[name]["ham10000_melanoma"]["auc"] > 0.9  # brightness separates the classes
    gain = out["builtin_minus_random"]["ham10000_melanoma"]
    assert gain["ci95"][0] <= gain["auc_gain"] <= gain["ci95"][1]
    assert "split by lesion_id" in out["protocol"]

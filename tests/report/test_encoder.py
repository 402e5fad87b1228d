from __future__ import annotations

import pytest
import torch
from transformers import ResNetConfig, ResNetModel

from fedmrg.errors import ConfigError
from fedmrg.report.config import EncoderConfig
from fedmrg.report.encoder import ENCODER_PRESETS, VisualEncoder
from fedmrg.report.projector import VisualProjector


def test_patch_and_pooled_features_have_documented_shapes():
    torch.manual_seed(0)
    enc = VisualEncoder(EncoderConfig(preset="resnet-tiny")).eval()
    feats = enc(torch.rand(2, 3, 96, 64))
    c = ENCODER_PRESETS["resnet-tiny"]["hidden_sizes"][-1]
    assert enc.out_dim == c
    assert feats.patches.shape == (2, 3 * 2, c)  # (96 / 32) * (64 / 32) patches
    assert feats.pooled.shape == (2, c)
    assert torch.allclose(feats.pooled, feats.patches.mean(1), atol=1e-5)  # pooled = average of the patches
    tokens = VisualProjector(c, 24)(feats.patches)
    assert tokens.shape == (2, 6, 24)
    assert torch.allclose(tokens.mean(-1), torch.zeros(2, 6), atol=1e-5)  # LayerNorm output


@pytest.mark.parametrize(
    ("images", "problem"),
    [
        (torch.rand(2, 1, 64, 64), r"got shape \(2, 1, 64, 64\)"),
        (torch.rand(3, 64, 64), r"got shape \(3, 64, 64\)"),
        (torch.rand(2, 3, 16, 64), "too small"),
        (torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), "got dtype torch.uint8"),
    ],
)
def test_bad_images_get_a_clear_error(images, problem):
    enc = VisualEncoder(EncoderConfig(preset="resnet-tiny"))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\), floating dtype, H and W >= 32"):
        enc(images)
    with pytest.raises(ValueError, match=problem):
        enc(images)


def test_encoder_loads_a_local_hf_directory(tmp_path):
    torch.manual_seed(0)
    saved = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1])).eval()
    saved.save_pretrained(tmp_path / "resnet")
    enc = VisualEncoder(EncoderConfig(path=str(tmp_path / "resnet"))).eval()
    x = torch.rand(1, 3, 64, 64)
    assert enc.out_dim == 16
    assert torch.allclose(enc(x).pooled, saved(x).pooler_output.flatten(1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        VisualEncoder(EncoderConfig(path=str(tmp_path / "empty")))


def test_untrained_projector_emits_zero_tokens_and_opens_after_one_step():
    torch.manual_seed(0)
    proj = VisualProjector(8, 16)
    patches = torch.randn(2, 5, 8)
    assert torch.equal(proj(patches), torch.zeros(2, 5, 16))  # the frozen decoder first sees only its prompt
    target = torch.randn(2, 5, 16)
    torch.nn.functional.mse_loss(proj(patches), target).backward()
    assert proj.norm.weight.grad.abs().sum() > 0  # the gain learns although the output was zero
    torch.optim.SGD(proj.parameters(), lr=0.1).step()
    assert proj(patches).abs().sum() > 0

"""Self-supervised pretraining of the built-in encoder: loss, views, cache folder, and the ``builtin-ssl`` keyword."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import ResNetModel

from fedmrg.errors import ConfigError
from fedmrg.report.builtin_encoder import MANIFEST, SSLRecipe, ensure_ssl_encoder, random_views, render_pool
from fedmrg.report.builtin_lm import make_resnet_encoder
from fedmrg.report.run_config import resolve_builtin_paths
from fedmrg.training.contrastive import nt_xent


def test_nt_xent_rewards_matching_views():
    z = torch.nn.functional.one_hot(torch.arange(8), 16).float()
    matched = nt_xent(z, z, temperature=0.1)
    shuffled = nt_xent(z, z[torch.randperm(8, generator=torch.Generator().manual_seed(0))], temperature=0.1)
    assert matched < 0.05 < math.log(15) * 0.5 < shuffled


def test_views_are_normalised_three_channel_and_random():
    x = render_pool(4, 32, seed=0)
    assert x.shape == (4, 1, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1 and float(x.std()) > 0.05
    gen = torch.Generator().manual_seed(0)
    v1, v2 = random_views(x, gen), random_views(x, gen)
    assert v1.shape == (4, 3, 32, 32)
    torch.testing.assert_close(v1[:, 0] * 0.229 + 0.485, v1[:, 1] * 0.224 + 0.456)  # one gray image, 3 channels
    assert not torch.allclose(v1, v2)


def test_ensure_ssl_encoder_builds_once_and_changes_the_weights(tmp_path):
    base = tmp_path / "base"
    make_resnet_encoder(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], seed=0).save_pretrained(
        str(base)
    )
    recipe = SSLRecipe(num_images=16, image_size=32, steps=4, batch_size=8)
    out = ensure_ssl_encoder(base, tmp_path / "cache", recipe=recipe, progress=False)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["recipe"]["steps"] == 4 and math.isfinite(manifest["final_loss"])
    a, b = ResNetModel.from_pretrained(str(base)), ResNetModel.from_pretrained(str(out))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    stamp = (out / MANIFEST).stat().st_mtime_ns
    assert ensure_ssl_encoder(base, tmp_path / "cache", recipe=recipe, progress=False) == out
    assert (out / MANIFEST).stat().st_mtime_ns == stamp  # cached, not rebuilt


def test_builtin_ssl_is_an_encoder_keyword_only():
    with pytest.raises(ConfigError, match="names an encoder"):
        resolve_builtin_paths({"decoder": {"path": "builtin-ssl"}})
    with pytest.raises(ValueError, match="batch_size"):
        SSLRecipe(batch_size=1)


def test_builtin_ssl_resolves_to_the_pretrained_copy_of_the_builtin_encoder(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import fedmrg.report.builtin as builtin
    import fedmrg.report.builtin_encoder as builtin_encoder

    models = SimpleNamespace(encoder_dir=tmp_path / "enc", decoder_dir=tmp_path / "dec")
    calls = []
    monkeypatch.setattr(builtin, "ensure_builtin_models", lambda *a, **k: models)
    monkeypatch.setattr(
        builtin_encoder, "ensure_ssl_encoder", lambda base, root, **k: calls.append((base, root)) or tmp_path / "ssl"
    )
    data, replaced = resolve_builtin_paths(
        {"encoder": {"path": "builtin-ssl"}, "decoder": {"path": "builtin"}}, cache_root=tmp_path
    )
    assert data["encoder"]["path"] == str(tmp_path / "ssl") and data["decoder"]["path"] == str(tmp_path / "dec")
    assert calls == [(tmp_path / "enc", tmp_path)]
    assert replaced == {"encoder.path": "builtin-ssl", "decoder.path": "builtin"}

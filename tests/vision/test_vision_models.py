"""Prompt generator and prompted backbones: shapes, per-image prompts, what gets gradients, frozen weights."""

from __future__ import annotations

import pytest
import torch

from fedmrg.vision.backbones import load_sam, load_vit, sam_from_vit, tiny_vit
from fedmrg.vision.generator import PromptGenerator, StaticPrompts
from fedmrg.vision.models import PromptedSamSegmenter, PromptedViTClassifier


def test_generator_shapes_and_per_image_prompts():
    torch.manual_seed(0)
    gen = PromptGenerator(num_prompts=5, dim=16, kv_dim=24, out_dim=32, num_heads=4)
    patches = torch.randn(3, 10, 24)
    out = gen(patches)
    assert out.shape == (3, 5, 32)
    assert not torch.allclose(out[0], out[1], atol=1e-4)  # two images, two prompts
    assert torch.allclose(gen(patches[:1]), out[:1], atol=1e-6)  # a function of the image alone
    with pytest.raises(ValueError, match=r"\(B, N, 24\)"):
        gen(torch.randn(2, 10, 16))


def test_static_prompts_are_the_same_for_every_image():
    sp = StaticPrompts(4, 8)
    out = sp(torch.randn(3, 10, 99))
    assert out.shape == (3, 4, 8) and torch.equal(out[0], out[2])


def _train_steps(model, x, target, loss_fn, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), target).backward()
        opt.step()


@pytest.mark.parametrize("method", ["prompt_gen", "vpt"])
def test_vit_only_prompter_and_head_train_backbone_bit_identical(tiny_backbones, method):
    vit, pre = load_vit(tiny_backbones["vit"])
    assert pre.image_size == 32
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    model = PromptedViTClassifier(vit, num_classes=3, method=method, num_prompts=4)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    _train_steps(model, x, y, torch.nn.functional.cross_entropy)
    with_grad = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"prompter", "head"}
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert not model.backbone.training  # frozen backbone stays in eval mode (no dropout)
    assert model(x).shape == (4, 3)
    prompts = model.prompts(x)
    assert prompts.shape == (4, 4, 32)
    assert (not torch.allclose(prompts[0], prompts[1])) == (method == "prompt_gen")
    share = model.share_report()
    trained = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("prompter", "head")))
    assert share["trained_params"] == trained and share["backbone_params"] == sum(p.numel() for p in vit.parameters())


def test_vit_full_finetuning_trains_the_backbone(tiny_backbones):
    vit, _ = load_vit(tiny_backbones["vit"])
    before = vit.embeddings.patch_embeddings.projection.weight.clone()
    model = PromptedViTClassifier(vit, num_classes=2, method="full_ft")
    assert model.prompter is None
    _train_steps(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]), torch.nn.functional.cross_entropy)
    assert not torch.equal(before, vit.embeddings.patch_embeddings.projection.weight)


def test_sam_only_generator_and_mask_decoder_train(tiny_backbones):
    sam, pre = load_sam(tiny_backbones["sam"])
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    model = PromptedSamSegmenter(sam, method="prompt_gen", num_prompts=3)
    x = torch.randn(2, 3, 32, 32)
    m = (torch.rand(2, 1, 32, 32) > 0.5).float()
    _train_steps(model, x, m, torch.nn.functional.binary_cross_entropy_with_logits)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith(("prompter.", "backbone.mask_decoder.")) for n in with_grad)
    assert any(n.startswith("prompter.") for n in with_grad)
    for k, v in model.backbone.state_dict().items():
        if not k.startswith("mask_decoder."):
            assert torch.equal(before[k], v), k
    assert any(not torch.equal(before[k], v) for k, v in model.backbone.state_dict().items()
               if k.startswith("mask_decoder."))
    assert model(x).shape == (2, 1, 32, 32)
    p = model.prompts(x)
    assert p.shape == (2, 3, 32) and not torch.allclose(p[0], p[1])


def test_sam_from_vit_carries_the_vit_weights():
    vit = tiny_vit(hidden=32, heads=2)
    sam = sam_from_vit(vit, seed=0)
    layer = sam.vision_encoder.layers[0]
    q = vit.layers[0].attention.q_proj.weight
    assert torch.equal(layer.attn.qkv.weight[: q.shape[0]], q)
    assert torch.equal(sam.vision_encoder.pos_embed.reshape(-1, 32), vit.embeddings.position_embeddings[0, 1:])
    seg = PromptedSamSegmenter(sam, method="prompt_gen", num_prompts=2)
    assert seg(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_wrong_image_size_is_refused(tiny_backbones):
    vit, _ = load_vit(tiny_backbones["vit"])
    model = PromptedViTClassifier(vit, num_classes=2)
    with pytest.raises(ValueError, match="resize images to 32"):
        model(torch.randn(1, 3, 48, 48))


def test_backbone_folder_errors(tmp_path, tiny_backbones):
    from fedmrg.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        load_vit(tmp_path / "nope")
    with pytest.raises(ConfigError, match="not a ViT"):
        load_vit(tiny_backbones["sam"])

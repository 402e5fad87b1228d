"""Patient-level DP-SGD: per-sample gradients through PEFT LoRA (Opacus issue 820), clipping bound, updates of LoRA A
and B and the encoder, accounting against an independent Opacus accountant, the budget, the ledger on disk."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedmrg.errors import ConfigError
from fedmrg.privacy.accounting import PrivacyBudgetExhausted
from fedmrg.privacy.dp_sgd import (
    LEDGER_FILE,
    FrozenBatchNorm2d,
    PatientLevelDP,
    dp_generic_losses,
    dp_specialized_losses,
)
from fedmrg.report.data_loading import ReportDataset
from fedmrg.report.model import FedMRGModel
from fedmrg.report.run_config import TrainingConfig
from fedmrg.report.shared_state import get_shared_state, shared_keys
from fedmrg.report.tokenization import ReportCollator
from fedmrg.report.trainer import LocalTrainer, batch_to

from .conftest import IMAGE_SIZE

DP = {"enabled": True, "noise_multiplier": 0.8, "max_grad_norm": 1.0, "delta": 1e-3}


def make_trainer(make_config, records, tmp_path: Path, dp: dict | None = DP, *, seed: int = 0, **training):
    training.setdefault("batch_size", 4)
    training.setdefault("learning_rate", 1e-2)
    training.setdefault("rounds", 2)
    config = TrainingConfig(seed=seed, device="cpu", **training)
    torch.manual_seed(seed)
    model = FedMRGModel(make_config(dp))
    dataset = ReportDataset(records, image_size=IMAGE_SIZE, views=False, seed=seed)
    trainer = LocalTrainer(
        model, config, site="site-1", train_dataset=dataset, workspace=tmp_path / "ws", progress=False
    )
    if trainer.dp is not None:
        trainer.dp.generator = torch.Generator().manual_seed(seed)  # tests only: production noise is unseeded
    return trainer


def randomize_lora(model: FedMRGModel, scale: float = 0.3) -> None:
    """Random LoRA weights (PEFT starts B at 0, which gives A a zero gradient)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if "lora_" in name:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def batch_of(model: FedMRGModel, dataset: ReportDataset, idx: list[int]) -> dict:
    collate = ReportCollator(model.tokenizer, max_report_tokens=model.config.decoder.max_report_tokens)
    return batch_to(collate([dataset[i] for i in idx]), torch.device("cpu"))


def lora_params(model: FedMRGModel, adapter: str) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.decoder.named_parameters() if "lora_" in n and f".{adapter}." in n}


def encoder_conv(model: FedMRGModel) -> torch.nn.Parameter:
    return next(p for n, p in model.encoder.named_parameters() if "convolution.weight" in n)


def test_batchnorm_is_frozen_and_shared_keys_unchanged(make_config, records, tmp_path):
    plain = make_trainer(make_config, records, tmp_path / "a", dp=None)
    dp = make_trainer(make_config, records, tmp_path / "b")
    assert dp.dp.frozen_batchnorms > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in dp.model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in dp.model.modules())
    assert shared_keys(dp.model) == shared_keys(plain.model)  # a DP site stays compatible with non-DP sites
    bn_before = {k: v for k, v in get_shared_state(dp.model).items() if "normalization" in k}
    assert bn_before
    dp.train_round(None, None, round_num=0, steps=2)
    bn_after = get_shared_state(dp.model)
    assert all(torch.equal(bn_before[k], bn_after[k]) for k in bn_before)  # never updated from private batches


@pytest.mark.parametrize("phase", ["generic", "specialized"])
def test_per_sample_gradients_match_autograd_through_lora(make_config, records, tmp_path, phase):
    """Opacus grad_sample of every trainable parameter (LoRA A and B, encoder, state tokens, ...) equals the gradient
    of that study's own loss computed alone, for the G step and the S step (issue 820: silent LoRA corruption)."""
    trainer = make_trainer(make_config, records, tmp_path)
    model = trainer.model
    randomize_lora(model)
    model.train()
    idx = [0, 1, 2]

    def loss_of(batch):
        if phase == "generic":
            return dp_generic_losses(model, batch).total
        encoded = dp_generic_losses(model, batch).encoded
        for p in model.parameters():
            p.grad_sample = None
            p.grad = None
        return dp_specialized_losses(model, batch, encoded).total

    loss_of(batch_of(model, trainer.dataset, idx)).backward()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    names = set(params)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    if phase == "generic":
        assert any(n.startswith("encoder.") for n in names) and any(n.startswith("state_tokens.") for n in names)
    else:
        assert all(".spec_local." in n for n in names)
    per_sample = {n: p.grad_sample.clone() for n, p in params.items()}
    assert all(g.shape[0] == len(idx) for g in per_sample.values())

    trainer.dp.hooks.disable_hooks()
    for i, j in enumerate(idx):
        for p in model.parameters():
            p.grad = None
        model.set_phase("generic")
        loss_of(batch_of(model, trainer.dataset, [j])).backward()
        for n, p in params.items():
            torch.testing.assert_close(per_sample[n][i], p.grad, rtol=1e-3, atol=1e-5, msg=f"{n} study {j}")
    model.set_phase("generic")


def test_clipping_bound_holds_per_sample(make_config, records, tmp_path):
    """Each study's clipped gradient has norm <= C (checked on grad_sample) and the optimizer sums exactly those."""
    c = 1e-3  # small enough that every study is clipped, so the test exercises the clip
    trainer = make_trainer(make_config, records, tmp_path, dp=DP | {"max_grad_norm": c})
    model, dp = trainer.model, trainer.dp
    randomize_lora(model)
    dp.prepare_round(1, 0)
    model.train()
    params = [p for p in model.trainable_parameters() if p.requires_grad]
    opt = dp.make_step(params, lr=1e-2).dp_optimizer
    dp_generic_losses(model, batch_of(model, trainer.dataset, [0, 1, 2, 3])).total.backward()
    grads = [p.grad_sample.reshape(4, -1) for p in opt.params]
    norms = torch.cat(grads, dim=1).norm(dim=1)
    assert (norms > c).all()
    factors = (c / (norms + 1e-6)).clamp(max=1.0)
    clipped = torch.cat(grads, dim=1) * factors[:, None]
    assert (clipped.norm(dim=1) <= c * (1 + 1e-5)).all()
    opt.clip_and_accumulate()
    summed = torch.cat([p.summed_grad.reshape(-1) for p in opt.params])
    torch.testing.assert_close(summed, clipped.sum(0), rtol=1e-4, atol=1e-9)
    assert summed.norm() <= 4 * c * (1 + 1e-5)


def test_dp_round_moves_lora_a_b_and_encoder(make_config, records, tmp_path):
    trainer = make_trainer(make_config, records, tmp_path, dp=DP | {"noise_multiplier": 0.05}, learning_rate=5e-2)
    model = trainer.model
    before = {
        f"{a}:{n}": p.detach().clone() for a in ("generic", "spec_local") for n, p in lora_params(model, a).items()
    }
    enc0 = encoder_conv(model).detach().clone()
    out = trainer.train_round(None, None, round_num=0, steps=3)
    for key, value in before.items():
        adapter, name = key.split(":", 1)
        assert not torch.equal(value, lora_params(model, adapter)[name]), f"{key} did not change under DP-SGD"
    assert any("lora_A" in k for k in before) and any("lora_B" in k for k in before)
    assert not torch.equal(enc0, encoder_conv(model))
    assert out.num_samples == 4 * 3  # the expected count, not the realised Poisson count
    assert out.bank_features is None
    assert out.metrics["dp/steps_total"] == 3 and out.metrics["dp/epsilon"] > 0
    released = PatientLevelDP.releasable(out.metrics)
    assert "g/lm" in out.metrics and "g/lm" not in released and released["dp/epsilon"] == out.metrics["dp/epsilon"]


def test_epsilon_matches_an_independent_opacus_accountant(make_config, records, tmp_path):
    trainer = make_trainer(make_config, records, tmp_path)
    eps = [trainer.train_round(None, None, round_num=r, steps=2).metrics["dp/epsilon"] for r in range(2)]
    q = 4 / len(records)
    acct = RDPAccountant()
    for _ in range(4):  # 2 rounds x 2 batches; G and S steps of a batch = one step at sigma / sqrt(2)
        acct.step(noise_multiplier=DP["noise_multiplier"] / math.sqrt(2), sample_rate=q)
    assert eps[1] == pytest.approx(acct.get_epsilon(delta=DP["delta"]), rel=1e-9)
    assert 0 < eps[0] < eps[1]


def test_target_epsilon_is_reached_after_the_configured_rounds(make_config, records, tmp_path):
    cfg = {"enabled": True, "target_epsilon": 4.0, "delta": 1e-3, "max_grad_norm": 1.0}
    trainer = make_trainer(make_config, records, tmp_path, dp=cfg, rounds=2)
    for r in range(2):
        out = trainer.train_round(None, None, round_num=r, steps=2)
    sigma_eff = get_noise_multiplier(target_epsilon=4.0, target_delta=1e-3, sample_rate=4 / len(records), steps=4)
    assert trainer.dp.noise_multiplier == pytest.approx(sigma_eff * math.sqrt(2))
    assert out.metrics["dp/epsilon"] == pytest.approx(4.0, abs=0.05)


def test_budget_refuses_the_round_that_would_exceed_it(make_config, records, tmp_path):
    probe = make_trainer(make_config, records, tmp_path / "probe")
    eps1 = probe.train_round(None, None, round_num=0, steps=2).metrics["dp/epsilon"]
    trainer = make_trainer(make_config, records, tmp_path, dp=DP | {"max_epsilon": eps1 * 1.05})
    trainer.train_round(None, None, round_num=0, steps=2)
    state = get_shared_state(trainer.model)
    with pytest.raises(PrivacyBudgetExhausted, match=r"round 1: privacy budget exhausted.*max_epsilon"):
        trainer.train_round(None, None, round_num=1, steps=2)
    assert trainer.dp.ledger.steps == 2  # nothing spent, nothing trained
    after = get_shared_state(trainer.model)
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_ledger_survives_a_restart(make_config, records, tmp_path):
    trainer = make_trainer(make_config, records, tmp_path / "a")
    eps = trainer.train_round(None, None, round_num=0, steps=2).metrics["dp/epsilon"]
    trainer.dp.save(tmp_path / "private")
    assert (tmp_path / "private" / LEDGER_FILE).is_file()
    restarted = make_trainer(make_config, records, tmp_path / "b")
    assert restarted.dp.load(tmp_path / "private")
    assert restarted.dp.ledger.epsilon() == pytest.approx(eps)
    out = restarted.train_round(None, None, round_num=1, steps=2)
    assert out.metrics["dp/steps_total"] == 4 and out.metrics["dp/epsilon"] > eps


def test_incompatible_settings_are_rejected_with_a_clear_message(make_config, records, tmp_path):
    from fedmrg.report.config import AblationConfig

    with pytest.raises(ValueError, match="requires `ablations.no_contrastive: true`"):
        make_config(DP, ablations=AblationConfig(no_contrastive=False))
    with pytest.raises(ValueError, match="exactly one of `noise_multiplier` and `target_epsilon`"):
        make_config(DP | {"target_epsilon": 3.0})
    with pytest.raises(ConfigError, match="grad_accum_steps: 1"):
        make_trainer(make_config, records, tmp_path, grad_accum_steps=2)

"""DP-SGD in the generic loop on a small model: Opacus per-sample clipping and noise, Poisson batches (empty ones
still release noise), one ledger step per batch matching an independent Opacus accountant, the budget refused
before a round, a non-finite loss failing the round."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.grad_sample import GradSampleHooks
from torch import nn
from torch.utils.data import Dataset

from fedmrg.errors import FedMRGError
from fedmrg.privacy.accounting import PrivacyBudgetExhausted
from fedmrg.privacy.dp_config import DPSGDConfig
from fedmrg.training import DPSGD, Phase, run_round

CPU = torch.device("cpu")


class Points(Dataset):
    def __init__(self, n: int = 40) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 3.0, 0.5])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def collate(samples):
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def setup(config: DPSGDConfig, *, rounds: int = 2, batch_size: int = 8):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    GradSampleHooks(model, batch_first=True, loss_reduction="mean")
    dataset = Points()
    dp = DPSGD(config, dataset_size=len(dataset), batch_size=batch_size, rounds=rounds, who="site 'a'",
               generator=torch.Generator().manual_seed(1))  # fmt: skip
    return model, dataset, dp


def loss_of(model):
    return lambda b, carry: {"loss": nn.functional.mse_loss(model(b["x"]).squeeze(-1), b["y"])}


def dp_round(model, dataset, dp, n_steps: int, round_num: int, loss=None) -> dict[str, float]:
    dp.prepare_round(n_steps, round_num)
    phase = Phase("t", loss or loss_of(model), dp.make_step(model.parameters(), lr=0.05))
    metrics = run_round(model, [phase], dp.batches(dataset, collate, steps=n_steps), n_steps=n_steps, device=CPU,
                        after_step=dp.record_step, who=f"site 'a' round {round_num}")  # fmt: skip
    return metrics | dp.metrics()


def test_rounds_train_and_are_accounted_like_an_independent_accountant():
    cfg = DPSGDConfig(enabled=True, noise_multiplier=0.8, max_grad_norm=1.0, delta=1e-3)
    model, dataset, dp = setup(cfg)
    w0 = model.weight.detach().clone()
    eps = [dp_round(model, dataset, dp, 3, r)["dp/epsilon"] for r in range(2)]
    acct = RDPAccountant()
    for _ in range(6):
        acct.step(noise_multiplier=0.8, sample_rate=8 / 40)
    assert eps[1] == pytest.approx(acct.get_epsilon(delta=1e-3), rel=1e-9) and 0 < eps[0] < eps[1]
    assert dp.ledger.steps == 6 and not torch.equal(w0, model.weight)
    assert set(DPSGD.releasable({"t/loss": 1.0, "dp/epsilon": 2.0, "steps": 3.0})) == {"dp/epsilon", "steps"}


def test_an_empty_poisson_batch_still_releases_noise():
    cfg = DPSGDConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-3)
    model, dataset, dp = setup(cfg, batch_size=1)
    dp.sample_rate = 1e-9  # (almost) every Poisson draw is empty
    w0 = model.weight.detach().clone()
    m = dp_round(model, dataset, dp, 2, 0)
    assert m["empty_batches"] == 2 and m["samples"] == 0 and dp.ledger.steps == 2
    assert not torch.equal(w0, model.weight)  # the noise moved the weights


def test_the_round_that_would_exceed_the_budget_is_refused_before_it_starts():
    probe_model, dataset, probe = setup(DPSGDConfig(enabled=True, noise_multiplier=0.8, delta=1e-3))
    eps2 = [dp_round(probe_model, dataset, probe, 3, r)["dp/epsilon"] for r in range(2)][-1]
    model, dataset, dp = setup(DPSGDConfig(enabled=True, noise_multiplier=0.8, delta=1e-3, max_epsilon=eps2 * 1.01))
    for r in range(2):
        dp_round(model, dataset, dp, 3, r)
    w = model.weight.detach().clone()
    with pytest.raises(PrivacyBudgetExhausted, match=r"site 'a' round 2: privacy budget exhausted"):
        dp_round(model, dataset, dp, 3, 2)
    assert dp.ledger.steps == 6 and torch.equal(w, model.weight)


def test_a_non_finite_loss_fails_the_round_instead_of_skipping():
    cfg = DPSGDConfig(enabled=True, noise_multiplier=1.0, delta=1e-3)
    model, dataset, dp = setup(cfg)

    def bad(b, carry):
        return {"loss": loss_of(model)(b, carry)["loss"] * torch.tensor(float("nan"))}

    with pytest.raises(FedMRGError, match=r"site 'a' round 0 step \d: non-finite loss in phase 't'.*refused"):
        dp_round(model, dataset, dp, 5, 0, loss=bad)


def test_ledger_round_trip(tmp_path):
    cfg = DPSGDConfig(enabled=True, noise_multiplier=0.8, delta=1e-3)
    model, dataset, dp = setup(cfg)
    dp_round(model, dataset, dp, 2, 0)
    dp.save(tmp_path)
    _, _, fresh = setup(cfg)
    assert not fresh.load(tmp_path / "missing") and fresh.load(tmp_path)
    assert fresh.ledger.epsilon() == pytest.approx(dp.ledger.epsilon())

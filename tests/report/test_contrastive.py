from __future__ import annotations

import math

import pytest
import torch

from fedmrg.report.contrastive import client_aware_contrastive_loss
from fedmrg.report.memory_bank import MemoryBank


def test_contrastive_loss_equals_hand_computed_value():
    # Two studies, two views each, unit vectors in 2-D; one bank negative. tau = 0.5.
    # z0 = (1, 0), z1 = (0.6, 0.8) [study A]; z2 = (0, 1), z3 = (-0.6, 0.8) [study B]; bank m = (-1, 0).
    features = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]])
    groups = torch.tensor([0, 0, 1, 1])
    bank = torch.tensor([[-1.0, 0.0]])
    tau = 0.5
    z = [(1.0, 0.0), (0.6, 0.8), (0.0, 1.0), (-0.6, 0.8)]
    m = (-1.0, 0.0)

    def dot(a, b):
        return a[0] * b[0] + a[1] * b[1]

    positive = {0: 1, 1: 0, 2: 3, 3: 2}
    losses = []
    for i in range(4):
        denominator = sum(math.exp(dot(z[i], z[a]) / tau) for a in range(4) if a != i) + math.exp(dot(z[i], m) / tau)
        losses.append(-math.log(math.exp(dot(z[i], z[positive[i]]) / tau) / denominator))
    expected = sum(losses) / 4
    # anchor 0 by hand: sims to 1, 2, 3, bank = 0.6, 0, -0.6, -1 -> -log(e^1.2 / (e^1.2 + e^0 + e^-1.2 + e^-2))
    assert losses[0] == pytest.approx(-math.log(math.exp(1.2) / (math.exp(1.2) + 1 + math.exp(-1.2) + math.exp(-2))))
    got = client_aware_contrastive_loss(features, groups, bank, temperature=tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # more negatives make the loss larger; features are normalised inside (scale does not matter)
    assert client_aware_contrastive_loss(features, groups, None, temperature=tau).item() < expected
    assert client_aware_contrastive_loss(3 * features, groups, bank, temperature=tau).item() == pytest.approx(expected)


def test_contrastive_loss_without_positives_raises():
    with pytest.raises(ValueError, match="positives"):
        client_aware_contrastive_loss(torch.randn(3, 4), torch.arange(3))


def _bank() -> MemoryBank:
    torch.manual_seed(0)
    bank = MemoryBank(4, per_site_capacity=5)
    for i, site in enumerate(["site-a", "site-b", "site-c"]):
        # every feature of a site points along its own axis, so a sample's site is readable from it
        bank.add(torch.eye(4)[i].repeat(3, 1) + 0.01 * torch.randn(3, 4), site)
    return bank


def test_bank_never_returns_the_sites_own_features():
    bank = _bank()
    g = torch.Generator().manual_seed(0)
    for site_index, site in enumerate(bank.sites):
        for _ in range(20):
            sample = bank.sample(4, exclude_site=site, generator=g)
            assert sample.shape == (4, 4)
            assert (sample.argmax(1) != site_index).all()
    assert bank.sample(100, exclude_site="site-a").shape == (6, 4)  # only the other two sites' 6 features
    lonely = MemoryBank(4)
    lonely.add(torch.randn(2, 4), "site-a")
    assert lonely.sample(3, exclude_site="site-a").shape == (0, 4)


def test_bank_caps_replaces_and_round_trips():
    bank = _bank()
    bank.add(torch.randn(8, 4), "site-a", replace=False)
    assert len(bank) == 5 + 3 + 3  # site-a capped at 5 (newest kept)
    bank.add(torch.randn(2, 4), "site-b")
    assert len(bank) == 5 + 2 + 3  # a new upload replaces the old one
    state = bank.state_dict()
    assert state["features"].shape == (10, 4) and state["sites"] == ["site-a", "site-b", "site-c"]
    assert torch.allclose(state["features"].norm(dim=1), torch.ones(10))
    copy = MemoryBank(4, per_site_capacity=5)
    copy.load_state_dict(state)
    assert torch.allclose(copy.state_dict()["features"], state["features"], atol=1e-6)
    with pytest.raises(ValueError, match="dim"):
        MemoryBank(3).load_state_dict(state)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        bank.add(torch.randn(2, 3), "site-d")

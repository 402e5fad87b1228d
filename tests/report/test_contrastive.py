from __future__ import annotations

import math

import pytest
import torch

from fedmrg.report.contrastive import client_aware_contrastive_loss


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

"""scripts/probe_head_averaging.py: the head-only FedAvg probe trains, averages and scores what it says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_PATH = Path(__file__).parents[2] / "scripts" / "probe_head_averaging.py"
_spec = importlib.util.spec_from_file_location("probe_head_averaging", _PATH)
probe_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe_mod)


def _features(n: int, normal_rate: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature 0 says "normal" (No Finding positive) or "cardiomegaly positive"; the rest is noise."""
    from fedmrg.observations import OBSERVATIONS, State

    normal = torch.rand(n, generator=gen) < normal_rate
    x = torch.randn(n, 16, generator=gen) * 0.3
    x[:, 0] = torch.where(normal, 2.0, -2.0)
    y = torch.full((n, len(OBSERVATIONS)), int(State.BLANK))
    y[normal, OBSERVATIONS.index("No Finding")] = int(State.POSITIVE)
    y[~normal, OBSERVATIONS.index("Cardiomegaly")] = int(State.POSITIVE)
    return x, y


def test_every_variant_trains_and_the_central_head_learns_a_separable_finding():
    gen = torch.Generator().manual_seed(0)
    feats = {}
    for site, rate in (("a", 0.9), ("b", 0.1), ("c", 0.5)):  # label skew, as in the cluster partition
        feats[(site, "train")] = _features(64, rate, gen)
        feats[(site, "val")] = _features(16, 0.5, gen)
    probe = probe_mod.Probe(feats, balance=0.5)
    assert probe.sites == ["a", "b", "c"] and probe.val_x.shape == (48, 16)
    results = {}
    for variant in probe_mod.VARIANTS:
        curve, head = probe.run(variant, rounds=3, local_steps=10, lr=5e-2, sgd_lr=0.5, seed=0)
        assert len(curve) == 3 and all(0.0 <= v <= 1.0 for v in curve)
        assert probe.f1(head) == curve[-1]
        results[variant] = curve[-1]
    assert results["central"] > 0.9  # one feature decides the finding: a head that learns gets it right
    # the same seed repeats the same curve
    assert (
        probe.run("fedavg", rounds=2, local_steps=5, lr=5e-2, sgd_lr=0.5, seed=1)[0]
        == probe.run("fedavg", rounds=2, local_steps=5, lr=5e-2, sgd_lr=0.5, seed=1)[0]
    )

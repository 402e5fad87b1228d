"""scripts/probe_unseen_site.py: the label-shift EM finds a shifted prior, the summary counts what it says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

_PATH = Path(__file__).parents[2] / "scripts" / "probe_unseen_site.py"
_spec = importlib.util.spec_from_file_location("probe_unseen_site", _PATH)
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def _posteriors(states: np.ndarray, prior: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exact Bayes posteriors (N, 14, 4) under ``prior`` (14, 4) of evidence x = onehot(state) + N(0, sigma^2 I):
    p(x | k) is proportional to exp(x_k / sigma^2), so the posteriors are calibrated (EM's assumption)."""
    sigma = 0.7
    x = (states[..., None] == np.arange(4)) + sigma * rng.standard_normal((*states.shape, 4))  # (N, 14, 4)
    post = np.exp(x / sigma**2) * prior[None]
    return post / post.sum(-1, keepdims=True)


def test_em_recovers_the_test_sets_prior_and_the_summary_reads_no_finding():
    from fedmrg.observations import OBSERVATIONS, State

    rng = np.random.default_rng(0)
    train_prior = np.full((14, 4), 0.25)
    test_prior = np.tile([0.1, 0.7, 0.1, 0.1], (14, 1))
    states = np.stack([rng.choice(4, size=4000, p=test_prior[0]) for _ in range(14)], axis=1)  # (N, 14)
    probs = _posteriors(states, train_prior, rng)
    adjusted = probe.em_prior_adjust(probs, train_prior)
    assert adjusted.shape == probs.shape and np.allclose(adjusted.sum(-1), 1.0)
    # the estimated prior moves from the training prior to the test set's (within sampling and evidence noise)
    assert np.abs(adjusted.mean(0) - test_prior).max() < 0.08 < np.abs(probs.mean(0) - test_prior).max()
    # and the adjusted calls are more often right than the unadjusted ones
    assert (adjusted.argmax(-1) == states).mean() > (probs.argmax(-1) == states).mean()

    s = probe.summary(adjusted, states)
    nf, pos = OBSERVATIONS.index("No Finding"), int(State.POSITIVE)
    assert s["true_nf"] == (states[:, nf] == pos).mean()
    assert s["called_nf"] == (adjusted[:, nf].argmax(-1) == pos).mean()
    assert 0.8 < s["nf_auroc"] <= 1.0 and 0.0 < s["head_f1"] <= 1.0


def test_head_posteriors_read_the_encoder_and_head_of_a_model():
    class Encoded:
        def __init__(self, pooled: torch.Tensor) -> None:
            self.pooled = pooled

    class Model:
        def encoder(self, images: torch.Tensor) -> Encoded:  # (B, 3, S, S) -> pooled (B, 2): the mean intensity
            return Encoded(torch.stack([images.mean((1, 2, 3)), torch.ones(images.shape[0])], dim=1))

        def diagnosis_head(self, pooled: torch.Tensor) -> torch.Tensor:  # bright image -> state 1 everywhere
            logits = torch.zeros(pooled.shape[0], 14, 4)
            logits[:, :, 1] = 10.0 * pooled[:, :1]
            return logits

    items = [{"image": torch.full((3, 4, 4), float(v)), "states": [v] * 14} for v in (0, 1, 1)]
    probs, states = probe.head_posteriors(Model(), items, batch_size=2)
    assert probs.shape == (3, 14, 4) and states.tolist() == [[0] * 14, [1] * 14, [1] * 14]
    assert probs[0, 0].argmax() != 1 and (probs[1:, :, 1] > 0.99).all()

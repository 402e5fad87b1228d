"""Diagnosis-head calibration from pooled feature statistics: a closed-form LDA head after federated training.

Why: under label skew each site's head fits its own finding rates within a few local steps (in the benchmark's
clustered partition "No Finding" is positive for 64-78 % of three sites' studies and 3-10 % of the other two), and
the average of such heads calls almost nothing (``scripts/probe_head_averaging.py``; docs/results/benchmark.md). The
encoder the federation trains is fine; its head is not. So, after the last round, every site sends additive
statistics of the final encoder's pooled features on its training studies, per observation and state: the count
(14, 4), the feature sum (14, 4, C), and once the feature scatter ``sum x x^T`` (C, C) and study count. Summed over
sites they are exactly the statistics of the pooled data, and the head becomes, per observation, the linear
discriminant (shared within-state covariance, shrunk towards a multiple of the identity) of those pooled statistics:

    W[o, k] = Sigma_o^-1 mu[o, k],   b[o, k] = -1/2 mu[o, k]^T Sigma_o^-1 mu[o, k] + log(n[o, k] / N)

A state no site has seen for an observation gets bias -1e4 (never predicted). The statistics are summed, so they can
travel the way the shared state does; they are not protected by DP-SGD, which is why the configuration refuses
``training.head_calibration: lda`` together with ``privacy.dp_sgd``.

Written by hand because the libraries' LDA (scikit-learn's ``LinearDiscriminantAnalysis``) fits from samples, not
from statistics summed across sites.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from fedmrg.errors import FedMRGError
from fedmrg.observations import NUM_OBSERVATIONS

NUM_STATES = 4
#: bias of a state that no study had for an observation: never the argmax
ABSENT_STATE_BIAS = -1e4


@dataclass
class HeadStatistics:
    """Additive statistics of pooled encoder features (float64).

    Attributes:
        count: studies.
        scatter: (C, C) sum of ``x x^T`` over studies.
        sums: (14, 4, C) sum of ``x`` over the studies with state k for observation o.
        counts: (14, 4) studies with state k for observation o.
    """

    count: int
    scatter: np.ndarray
    sums: np.ndarray
    counts: np.ndarray

    @classmethod
    def zeros(cls, dim: int) -> HeadStatistics:
        return cls(0, np.zeros((dim, dim)), np.zeros((NUM_OBSERVATIONS, NUM_STATES, dim)),
                   np.zeros((NUM_OBSERVATIONS, NUM_STATES)))  # fmt: skip

    def __add__(self, other: HeadStatistics) -> HeadStatistics:
        if other.scatter.shape != self.scatter.shape:
            raise ValueError(f"feature widths differ: {self.scatter.shape[0]} vs {other.scatter.shape[0]}")
        return HeadStatistics(self.count + other.count, self.scatter + other.scatter, self.sums + other.sums,
                              self.counts + other.counts)  # fmt: skip

    def add(self, features: torch.Tensor, states: torch.Tensor) -> None:
        """Accumulate pooled features (B, C) and their states (B, 14) int64 in place."""
        x = features.detach().double().cpu().numpy()
        s = states.detach().cpu().numpy()
        self.count += x.shape[0]
        self.scatter += x.T @ x
        for k in range(NUM_STATES):
            mask = (s == k).astype(np.float64)  # (B, 14)
            self.counts[:, k] += mask.sum(0)
            self.sums[:, k] += mask.T @ x

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The statistics as named arrays (what a site sends)."""
        return {"count": np.array([self.count], dtype=np.float64), "scatter": self.scatter, "sums": self.sums,
                "counts": self.counts}  # fmt: skip

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> HeadStatistics:
        """The statistics of :meth:`to_arrays`; ValueError on other names or inconsistent shapes."""
        if set(arrays) != {"count", "scatter", "sums", "counts"}:
            raise ValueError(f"head statistics need count, scatter, sums, counts; got {sorted(arrays)}")
        dim = np.shape(arrays["scatter"])[-1]
        shapes = {"count": (1,), "scatter": (dim, dim), "sums": (NUM_OBSERVATIONS, NUM_STATES, dim),
                  "counts": (NUM_OBSERVATIONS, NUM_STATES)}  # fmt: skip
        bad = {k: np.shape(v) for k, v in arrays.items() if np.shape(v) != shapes[k]}
        if bad:
            raise ValueError(f"head statistics: shapes {bad}, expected {shapes}")
        return cls(int(arrays["count"][0]), np.asarray(arrays["scatter"], np.float64),
                   np.asarray(arrays["sums"], np.float64), np.asarray(arrays["counts"], np.float64))  # fmt: skip


@torch.no_grad()
def collect_statistics(model, dataset: Dataset, *, batch_size: int = 32) -> HeadStatistics:
    """:class:`HeadStatistics` of ``model``'s encoder (eval mode) over ``dataset`` (items with ``image`` (3, H, W)
    and ``states`` (14,)); the model's training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        stats = HeadStatistics.zeros(model.encoder.out_dim)
        n = len(dataset)  # type: ignore[arg-type]
        for start in range(0, n, batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, n))]
            images = torch.stack([it["image"] for it in items])
            states = torch.stack([torch.as_tensor(it["states"]) for it in items]).long()
            stats.add(model.encoder(images).pooled, states)
        return stats
    finally:
        model.train(was_training)


def fit_lda_head(stats: HeadStatistics, *, shrinkage: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's ``linear.weight`` (56, C) and ``linear.bias`` (56,) float32 (rows ``o * 4 + k``) from pooled
    statistics; ``shrinkage`` adds ``shrinkage * mean(diag(Sigma_o))`` to the covariance's diagonal."""
    n_all, dim = stats.count, stats.scatter.shape[0]
    if n_all <= NUM_STATES:
        raise FedMRGError(f"head calibration needs more than {NUM_STATES} training studies, got {n_all}")
    weight = np.zeros((NUM_OBSERVATIONS, NUM_STATES, dim))
    bias = np.full((NUM_OBSERVATIONS, NUM_STATES), ABSENT_STATE_BIAS)
    for o in range(NUM_OBSERVATIONS):
        n = stats.counts[o]
        seen = n > 0
        mu = stats.sums[o] / np.maximum(n, 1.0)[:, None]  # (4, C)
        within = stats.scatter - (mu.T * n) @ mu  # sum_k n_k mu_k mu_k^T removed
        cov = within / (n_all - int(seen.sum()))
        cov = cov + (shrinkage * float(np.mean(np.diag(cov))) + 1e-12) * np.eye(dim)
        solved = np.linalg.solve(cov, mu[seen].T).T  # (seen, C)
        weight[o, seen] = solved
        bias[o, seen] = -0.5 * np.einsum("kc,kc->k", mu[seen], solved) + np.log(n[seen] / n_all)
    return (torch.from_numpy(weight.reshape(-1, dim)).float(),
            torch.from_numpy(bias.reshape(-1)).float())  # fmt: skip


def head_state(stats: HeadStatistics, *, shrinkage: float) -> dict[str, np.ndarray]:
    """The calibrated head as shared-state entries (``diagnosis_head.linear.weight`` / ``.bias``, float32)."""
    weight, bias = fit_lda_head(stats, shrinkage=shrinkage)
    return {"diagnosis_head.linear.weight": weight.numpy(), "diagnosis_head.linear.bias": bias.numpy()}


@torch.no_grad()
def calibrate(model, datasets: list[Dataset], *, shrinkage: float, batch_size: int = 32) -> HeadStatistics:
    """Fit the LDA head on ``datasets``' statistics (summed, as sites' would be) and load it into ``model``'s
    diagnosis head; returns the summed statistics."""
    if model.diagnosis_head is None:
        raise FedMRGError("head calibration: the model has no diagnosis head")
    stats = HeadStatistics.zeros(model.encoder.out_dim)
    for dataset in datasets:
        stats = stats + collect_statistics(model, dataset, batch_size=batch_size)
    weight, bias = fit_lda_head(stats, shrinkage=shrinkage)
    linear = model.diagnosis_head.linear
    linear.weight.copy_(weight.to(linear.weight))
    linear.bias.copy_(bias.to(linear.bias))
    return stats

"""Does a rendered image carry its labels? Train a tiny CNN on renders, report per-finding AUC on held-out renders.

Used by ``scripts/bench_renderer.py`` and the renderer's tests. Labels are sampled with realistic prevalence and
co-occurrence (:func:`~fedmrg.data.synthetic.sampling.sample_findings`); a finding's target is 1 when it is
present (positive or uncertain: CheXpert's "U-Ones" policy) for training, and the AUC is computed on held-out
images with uncertain cases of that finding left out (positives vs. absent).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from fedmrg.data.synthetic.renderer import render_study_image
from fedmrg.data.synthetic.sampling import sample_findings
from fedmrg.observations import OBSERVATIONS

FINDINGS: tuple[str, ...] = tuple(o for o in OBSERVATIONS if o != "No Finding")


@dataclass
class SignalResult:
    """AUC per observation (NaN when the test set lacks positives or negatives), counts and timings (seconds)."""

    auc: dict[str, float]
    n_pos_test: dict[str, int]
    render_s: float
    train_s: float


def render_set(n: int, *, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` renders (n, size, size) uint8 and their states (n, 14) int8 in 1 / -1 / 0 (absent), OBSERVATIONS order."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 303]))
    images = np.empty((n, size, size), np.uint8)
    states = np.zeros((n, len(OBSERVATIONS)), np.int8)
    with threadpool_limits(1):
        for i in range(n):
            present = sample_findings(rng)
            images[i] = render_study_image(present, seed=int(rng.integers(2**31)), size=size)
            for j, name in enumerate(OBSERVATIONS):
                states[i, j] = present.get(name, 0)
            if not any(k != "Support Devices" for k in present):
                states[i, OBSERVATIONS.index("No Finding")] = 1
    return images, states


def renderer_auc(
    *, n_train: int = 2000, n_test: int = 600, size: int = 128, epochs: int = 8, seed: int = 0, threads: int = 2
) -> SignalResult:
    """Train a small CNN on ``n_train`` renders at ``size`` px and return the AUC per observation on ``n_test``."""
    import torch
    from sklearn.metrics import roc_auc_score
    from torch import nn

    t0 = time.perf_counter()
    x_tr, s_tr = render_set(n_train, seed=seed, size=size)
    x_te, s_te = render_set(n_test, seed=seed + 1, size=size)
    render_s = time.perf_counter() - t0

    torch.manual_seed(seed)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    t1 = time.perf_counter()

    def block(cin: int, cout: int, k: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, stride=2, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    class TinyCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(block(1, 16, 5), block(16, 32, 3), block(32, 48, 3), block(48, 64, 3))
            self.head = nn.Linear(128, len(OBSERVATIONS))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.features(x)
            return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))

    model = TinyCNN()
    xt = torch.from_numpy(x_tr).unsqueeze(1)
    yt = torch.from_numpy((s_tr != 0).astype(np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((n_train + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n_train, generator=g)
        for k in range(0, n_train, 64):
            idx = perm[k : k + 64]
            xb = xt[idx].float().div_(255.0).sub_(0.5)
            loss = loss_fn(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        xe = torch.from_numpy(x_te).unsqueeze(1).float().div_(255.0).sub_(0.5)
        scores = torch.cat([model(xe[k : k + 256]) for k in range(0, n_test, 256)]).numpy()
    train_s = time.perf_counter() - t1
    torch.set_num_threads(prev_threads)

    auc: dict[str, float] = {}
    n_pos: dict[str, int] = {}
    for j, name in enumerate(OBSERVATIONS):
        keep = s_te[:, j] != -1
        y = s_te[keep, j] == 1
        n_pos[name] = int(y.sum())
        auc[name] = float(roc_auc_score(y, scores[keep, j])) if 0 < y.sum() < len(y) else float("nan")
    return SignalResult(auc, n_pos, render_s, train_s)

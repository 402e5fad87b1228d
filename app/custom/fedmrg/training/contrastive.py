"""Self-supervised contrastive pretraining (SimCLR), shared by both systems' built-in encoders.

FedMRG's ResNet (:mod:`fedmrg.report.builtin_encoder`, on rendered radiographs) and the vision system's ViT
(:mod:`fedmrg.vision.builtin`, on MedMNIST and rendered images) differ in their images and views; the loop is one:
every step draws a batch, makes two random views of each image, passes both through ``features`` and a projection head
that is thrown away afterwards, and minimises NT-Xent (MONAI's ``ContrastiveLoss``: the two views of an image against
the other ``2B - 2`` views) with AdamW and a linear warm-up then cosine decay. Every random draw comes from one
``torch.Generator`` in a fixed order, so a build on one thread with deterministic algorithms is reproducible bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ContrastiveSchedule:
    """The optimisation of one pretraining run.

    Attributes:
        steps: AdamW steps; batch_size: images per step (two views each, so 2 x batch_size through the encoder).
        lr: peak learning rate; warmup_steps: linear warm-up, then cosine decay to 0; weight_decay: AdamW's.
        temperature: NT-Xent temperature; clip_norm: gradient-norm clip (None: none).
    """

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    temperature: float
    clip_norm: float | None = None


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss (nats) for two ``(B, D)`` batches of projections, row i of each a view of the same image."""
    from monai.losses import ContrastiveLoss

    return ContrastiveLoss(temperature=temperature)(z1, z2)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup_steps`` (at least 1), then cosine decay to 0 at ``steps``."""
    warm = max(1, warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))),
    )


def pretrain_contrastive(
    features: Callable[[torch.Tensor], torch.Tensor],
    trained: Iterable[nn.Module],
    head: nn.Module,
    images: torch.Tensor,
    view: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    schedule: ContrastiveSchedule,
    gen: torch.Generator,
    *,
    log_every: int = 0,
    on_log: Callable[[int, float, float], None] | None = None,
) -> list[float]:
    """Train ``trained`` (the encoder) and ``head`` in place; returns the loss of every step (nats).

    Args:
        features: encoder output for a batch of views, ``(2B, C, S, S)`` -> ``(2B, F)``.
        trained: the modules whose parameters the optimiser updates besides ``head`` (the encoder).
        head: projection ``(2B, F)`` -> ``(2B, D)``, discarded by the caller afterwards.
        images: the pool ``(N, C, S, S)``; a batch is ``images[idx]`` with ``idx`` drawn from ``gen``.
        view: one random view of a batch, drawn from ``gen``.
        log_every: call ``on_log(step, mean loss of the last log_every steps, seconds)`` every that many steps.
    """
    params = [p for m in trained for p in m.parameters()] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    sched = warmup_cosine(opt, schedule.steps, schedule.warmup_steps)
    losses: list[float] = []
    t0 = time.time()
    for step in range(schedule.steps):
        idx = torch.randint(0, len(images), (schedule.batch_size,), generator=gen)
        x = images[idx]
        z = head(features(torch.cat([view(x, gen), view(x, gen)])))
        loss = nt_xent(z[: len(idx)], z[len(idx) :], schedule.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if schedule.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, schedule.clip_norm)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log_every and on_log is not None and (step + 1) % log_every == 0:
            on_log(step + 1, sum(losses[-log_every:]) / log_every, time.time() - t0)
    return losses

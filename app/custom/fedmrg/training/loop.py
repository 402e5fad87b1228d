"""The round loop: ``n_steps`` optimizer steps over micro-batches, each step made of one or more phases.

A phase is a loss function plus an :class:`~fedmrg.training.steps.OptimStep`. Per optimizer step the loop draws
``grad_accum_steps`` micro-batches (None = an empty Poisson batch), moves them to the device and runs every phase in
order on the micro-batches the previous phase kept:

1. ``phase.enter()`` (e.g. choose which parameters train), ``step.zero_grad()``;
2. for each micro-batch: the loss under autocast; a non-finite loss is skipped and counted, and the float buffers
   (BatchNorm statistics) it touched are restored, when the step allows skipping, else the round fails;
   otherwise ``step.backward(loss / n_micro)``;
3. ``step.step(n_kept, n_micro)`` (False: a non-finite gradient, the step is skipped and counted).

Then the learning rates follow ``schedule`` (a factor of the global step, so a round can start mid-schedule), the
``after_step`` hook runs (e.g. the privacy ledger), and the logs are averaged. More skipped micro-batches than
``max_skipped_fraction`` of the round fail it with :class:`~fedmrg.errors.FedMRGError`: nothing is dropped silently.
"""

from __future__ import annotations

import re
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedmrg.errors import FedMRGError
from fedmrg.training.precision import autocast
from fedmrg.training.scalar_log import ScalarLog
from fedmrg.training.steps import OptimStep

Batch = Mapping[str, Any]
#: ``loss(batch, carry) -> {"loss": 0-dim tensor, other 0-dim tensors to log}``; ``carry`` is a dict per
#: micro-batch that the phases of one step share (e.g. the first phase's features for the second).
LossFn = Callable[[Batch, dict[str, Any]], Mapping[str, torch.Tensor]]


@dataclass
class Phase:
    """One phase of an optimizer step.

    Attributes:
        name: log prefix: ``"g"`` logs ``g/<key>`` for each entry of the loss dict.
        loss: the loss function (:data:`LossFn`); its ``"loss"`` entry is differentiated.
        step: the optimisation step (owns the optimizer of this phase's parameters).
        enter: called at the start of the phase, before its losses and step; None: nothing.
        loss_name: the log name of the ``"loss"`` entry.
    """

    name: str
    loss: LossFn
    step: OptimStep
    enter: Callable[[], None] | None = None
    loss_name: str = "loss"


def batch_to(batch: Batch, device: torch.device) -> dict[str, Any]:
    """Move the tensors of a collated batch to ``device`` (other entries unchanged)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def count_samples(batch: Batch) -> dict[str, float]:
    """The default ``measure``: ``samples`` = the first dimension of the batch's first tensor."""
    first = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    return {"samples": float(0 if first is None else first.shape[0])}


def _float_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in model.named_buffers() if b.is_floating_point()}


@torch.no_grad()
def _restore_buffers(model: nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    buffers = dict(model.named_buffers())
    for name, value in saved.items():
        buffers[name].copy_(value)


def run_round(
    model: nn.Module,
    phases: Sequence[Phase],
    batches: Iterator[Batch | None],
    *,
    n_steps: int,
    device: torch.device,
    grad_accum_steps: int = 1,
    amp_dtype: torch.dtype | None = None,
    schedule: Callable[[int], float] | None = None,
    first_step: int = 0,
    max_skipped_fraction: float = 0.0,
    measure: Callable[[Batch], Mapping[str, float]] = count_samples,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int], None] | None = None,
    scalars: ScalarLog | None = None,
    log_every: int = 10,
    progress: str | None = None,
    progress_keys: Sequence[str] = (),
    who: str = "training",
    remedy: str = "lower the learning rate, check the data, or train without mixed precision",
) -> dict[str, float]:
    """Train ``n_steps`` optimizer steps (see the module docstring); returns the round's metrics.

    Args:
        model: the model (its float buffers are restored after a skipped micro-batch; put it in train mode first).
        phases: the phases of every step, in order.
        batches: micro-batches (dicts of tensors on any device; None = empty); at least
            ``n_steps * grad_accum_steps`` of them.
        n_steps: optimizer steps of this round.
        device: where the batches go.
        grad_accum_steps: micro-batches per optimizer step.
        amp_dtype: autocast dtype of the losses (None: full precision).
        schedule: learning-rate factor of a global step (e.g. :class:`~fedmrg.training.schedule.CosineSchedule`);
            None: constant.
        first_step: global index of this round's first step (for ``schedule`` and the TensorBoard steps).
        max_skipped_fraction: the round fails when more than this fraction of its micro-batches is skipped.
        measure: counts of a kept micro-batch, summed over the round and reported as ``<key>`` and ``<key>_per_s``.
        before_step, after_step: hooks called with the step index (0-based in the round).
        scalars: TensorBoard log (``train/<phase>/<key>`` and ``train/lr`` every ``log_every`` steps), or None.
        progress: tqdm description of a progress bar, or None for no bar; ``progress_keys`` are shown on it.
        who, remedy: name the run in error messages (e.g. ``"site 'site-1' round 3"``) and say what to change.

    Returns:
        the phase logs averaged over the steps (``<phase>/<key>``), ``steps``, ``micro_batches``,
        ``empty_batches``, ``skipped_batches``, ``skipped_steps``, ``seconds``, ``lr`` (of the first phase, after
        the last step), and the ``measure`` sums with their rates per second.
    """
    if n_steps < 1 or grad_accum_steps < 1:
        raise ValueError(f"`n_steps` and `grad_accum_steps` must be >= 1, got {n_steps} and {grad_accum_steps}")
    if not phases:
        raise ValueError("`phases` is empty")
    schedulers = []
    if schedule is not None:
        for phase in phases:
            schedulers.append(
                torch.optim.lr_scheduler.LambdaLR(phase.step.optimizer, lambda s: schedule(first_step + s))
            )
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    measured: dict[str, float] = defaultdict(float, samples=0.0)
    micro_total = empty = skipped_batches = skipped_steps = 0
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, desc=progress, unit="step", leave=False)
    t0 = time.perf_counter()
    for step in range(n_steps):
        if before_step is not None:
            before_step(step)
        micro = [next(batches) for _ in range(grad_accum_steps)]
        micro_total += len(micro)
        items = [(batch_to(b, device), {}) for b in micro if b is not None]
        empty += len(micro) - len(items)
        logs: dict[str, float] = {}
        counted: list[tuple[dict[str, Any], dict[str, Any]]] | None = None
        for phase in phases:
            if phase.enter is not None:
                phase.enter()
            phase.step.zero_grad()
            kept = []
            phase_sums: dict[str, float] = defaultdict(float)
            for b, carry in items:
                saved = _float_buffers(model) if phase.step.skip_nonfinite else None
                with autocast(device, amp_dtype):
                    out = phase.loss(b, carry)
                loss = out["loss"]
                if not torch.isfinite(loss.detach()):
                    if saved is None:
                        raise FedMRGError(
                            f"{who} step {step}: non-finite loss in phase {phase.name!r}, whose optimisation step "
                            f"does not skip batches; the round is refused ({remedy})"
                        )
                    _restore_buffers(model, saved)  # the bad batch must not leave its BatchNorm statistics
                    continue
                phase.step.backward(loss / len(items))
                kept.append((b, carry))
                for k, v in out.items():
                    if isinstance(v, torch.Tensor) and v.ndim == 0:
                        phase_sums[phase.loss_name if k == "loss" else k] += float(v.detach())
            skipped_batches += len(items) - len(kept)
            if not phase.step.step(len(kept), len(items)):
                skipped_steps += 1
            logs |= {f"{phase.name}/{k}": v / len(kept) for k, v in phase_sums.items()}
            if counted is None:
                counted = kept
            items = kept
        with warnings.catch_warnings():  # a skipped step leaves the optimizer un-stepped: expected
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            for scheduler in schedulers:
                scheduler.step()
        if after_step is not None:
            after_step(step)
        for k, v in logs.items():
            sums[k] += v
            counts[k] += 1
        for b, _ in counted or []:
            for k, v in measure(b).items():
                measured[k] += v
        if skipped_batches > max_skipped_fraction * grad_accum_steps * n_steps:
            raise FedMRGError(
                f"{who}: {skipped_batches} of {micro_total} micro-batches had a non-finite loss (limit "
                f"{max_skipped_fraction:.0%} of the round); {remedy}"
            )
        lr = _lr(phases[0])
        if bar is not None:
            bar.update(1)
            if step % log_every == 0 or step == n_steps - 1:
                bar.set_postfix({k: f"{sums[k] / counts[k]:.3f}" for k in progress_keys if counts[k]})
        if scalars is not None and (step % log_every == 0 or step == n_steps - 1):
            scalars.log(logs | {"lr": lr}, step=first_step + step, group="train/")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    metrics = {k: sums[k] / counts[k] for k in sorted(sums)}
    metrics |= {
        "steps": float(n_steps),
        "micro_batches": float(micro_total),
        "empty_batches": float(empty),
        "skipped_batches": float(skipped_batches),
        "skipped_steps": float(skipped_steps),
        "seconds": seconds,
        "lr": _lr(phases[0]),
    }
    for k, v in measured.items():
        metrics[k] = v
        metrics[f"{k}_per_s"] = v / seconds if seconds > 0 else 0.0
    return metrics


def _lr(phase: Phase) -> float:
    return float(phase.step.optimizer.param_groups[0]["lr"])


__all__ = ["Batch", "LossFn", "Phase", "batch_to", "count_samples", "run_round"]

"""The local training loop every system of the project shares (FedMRG's report generator, a vision prompt generator).

One round loop (:func:`run_round`) with pluggable optimisation steps (:class:`AdamWStep`: AdamW + clipping +
non-finite skipping; :class:`DPSGDStep` / :class:`DPSGD`: Opacus DP-SGD with the persistent privacy ledger), the
cosine schedule addressed by global step (:class:`CosineSchedule`), autocast (:func:`autocast_dtype`), TensorBoard
scalars (:class:`ScalarLog`) and a tqdm bar. A system plugs in a model, a batch iterator and a loss function that
returns a dict of tensors with a ``loss`` key::

    import torch
    from fedmrg.training import AdamWStep, CosineSchedule, Phase, endless, run_round

    model.train()
    step = AdamWStep(model.parameters(), lr=1e-4, weight_decay=0.05, max_grad_norm=1.0)
    phase = Phase("train", lambda batch, carry: {"loss": my_loss(model, batch)}, step)
    schedule = CosineSchedule(rounds=10, steps_per_round=50, warmup=20)
    for round_num in range(10):  # one call per federated round
        metrics = run_round(model, [phase], endless(lambda epoch: loader), n_steps=50, device=torch.device("cpu"),
                            schedule=schedule, first_step=schedule.first_step(round_num))
    # metrics: {"train/loss": mean loss, "samples": ..., "samples_per_s": ..., "skipped_batches": ..., "lr": ...}

Several phases per step (FedMRG's G step then S step) are a list of :class:`Phase`, each with its own step; the
second phase sees the micro-batches the first kept and a per-micro-batch ``carry`` dict the first filled. DP-SGD:
build the step with :meth:`DPSGD.make_step`, draw batches with :meth:`DPSGD.batches` and pass
``after_step=dp.record_step`` (see ``docs/training.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from fedmrg.training.loop import Batch, LossFn, Phase, batch_to, count_samples, run_round
from fedmrg.training.precision import autocast, autocast_dtype, cpu_has_native_bf16, resolve_device
from fedmrg.training.scalar_log import ScalarLog
from fedmrg.training.schedule import CosineSchedule, cosine_factor
from fedmrg.training.steps import AdamWStep, OptimStep

T = TypeVar("T")


def endless(make_epoch: Callable[[int], Iterable[T]]) -> Iterator[T]:
    """Yield from ``make_epoch(0)``, ``make_epoch(1)``, ... forever (reseed or reshuffle per epoch there).

    Raises ValueError when an epoch yields nothing (an endless loop over nothing).
    """
    epoch = 0
    while True:
        n = 0
        for item in make_epoch(epoch):
            n += 1
            yield item
        if n == 0:
            raise ValueError("`endless`: an epoch yielded no batch")
        epoch += 1


def __getattr__(name: str):  # DP-SGD pulls in Opacus: imported on first use
    if name in ("DPSGD", "DPSGDStep", "poisson_batches"):
        from fedmrg.training import dp

        return getattr(dp, name)
    raise AttributeError(name)


__all__ = [
    "DPSGD",
    "AdamWStep",
    "Batch",
    "CosineSchedule",
    "DPSGDStep",
    "LossFn",
    "OptimStep",
    "Phase",
    "ScalarLog",
    "autocast",
    "autocast_dtype",
    "batch_to",
    "count_samples",
    "cosine_factor",
    "cpu_has_native_bf16",
    "endless",
    "poisson_batches",
    "resolve_device",
    "run_round",
]

"""Optimisation steps the round loop plugs in: what happens between the micro-batch losses and the new weights.

A step owns its optimizer. The loop calls, per optimizer step and phase: :meth:`OptimStep.zero_grad`, then
:meth:`OptimStep.backward` on each micro-batch's ``loss / n_micro``, then :meth:`OptimStep.step`.

- :class:`AdamWStep`: AdamW, optional fp16 gradient scaling, global-norm clipping; a micro-batch with a non-finite
  loss is skipped by the loop (``skip_nonfinite``), a step with a non-finite gradient norm is skipped here.
- :class:`~fedmrg.training.dp.DPSGDStep`: Opacus DP-SGD (per-sample clipping and Gaussian noise); never skips
  (skipping would be a data-dependent decision outside the privacy accounting).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import torch


class OptimStep(Protocol):
    """What the round loop needs from an optimisation step."""

    #: True: the loop drops a micro-batch whose loss is not finite (counted); False: the loop fails the round.
    skip_nonfinite: bool

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer whose ``param_groups[*]["lr"]`` the learning-rate schedule scales."""
        ...

    def zero_grad(self) -> None:
        """Forget the gradients of the previous step."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of ``loss`` (0-dim; already divided by the number of micro-batches)."""
        ...

    def step(self, n_used: int, n_all: int) -> bool:
        """Apply the accumulated gradient of ``n_used`` of ``n_all`` micro-batches (``n_used`` may be 0).

        Returns False when the step was skipped (non-finite gradient), True otherwise.
        """
        ...


def weight_decay_groups(
    params: Iterable[torch.nn.Parameter], weight_decay: float, *, lr: float | None = None
) -> list[dict[str, Any]]:
    """Two optimizer groups: weight decay on matrices, none on biases, norms and embedding-row vectors (ndim <= 1);
    ``lr`` (when given) is these groups' own base learning rate instead of the optimizer's."""
    params = list(params)
    extra = {} if lr is None else {"lr": lr}
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, **extra},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, **extra},
    ]


class AdamWStep:
    """``torch.optim.AdamW`` with optional fp16 loss scaling and global-norm gradient clipping.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.AdamW``.
        lr: the base learning rate (the schedule multiplies it).
        max_grad_norm: clip the global L2 norm of the step's gradient to this; None: no clipping.
        fp16: scale the loss with a ``torch.amp.GradScaler`` (for ``float16`` autocast on CUDA).
        device_type: the device type of the gradient scaler (``"cuda"`` with ``fp16``).
        **adamw: further ``torch.optim.AdamW`` arguments (``weight_decay``, ``betas``, ...).
    """

    skip_nonfinite = True

    def __init__(
        self,
        params: Iterable[Any],
        *,
        lr: float,
        max_grad_norm: float | None = None,
        fp16: bool = False,
        device_type: str = "cuda",
        **adamw: Any,
    ) -> None:
        self._optimizer = torch.optim.AdamW(params, lr=lr, **adamw)
        self.max_grad_norm = max_grad_norm
        self.scaler = torch.amp.GradScaler(device_type, enabled=fp16)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._optimizer

    def _params_with_grad(self) -> list[torch.nn.Parameter]:
        return [p for group in self._optimizer.param_groups for p in group["params"] if p.grad is not None]

    def zero_grad(self) -> None:
        self._optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, n_used: int, n_all: int) -> bool:
        """Rescale for skipped micro-batches (``n_all / n_used``), clip, step; no step when the norm is not finite."""
        if n_used == 0:
            self.zero_grad()
            return True
        params = self._params_with_grad()
        self.scaler.unscale_(self._optimizer)
        if n_used < n_all:
            for p in params:
                p.grad.mul_(n_all / n_used)
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
        if not torch.isfinite(norm):
            self.zero_grad()
            self.scaler.update()
            return False
        self.scaler.step(self._optimizer)
        self.scaler.update()
        self.zero_grad()
        return True


__all__ = ["AdamWStep", "OptimStep", "weight_decay_groups"]

"""DP-SGD for the round loop, with Opacus (Abadi et al. 2016): the step, the Poisson batches and the accounting.

- :class:`DPSGDStep`: an :class:`~fedmrg.training.steps.OptimStep` over ``opacus.optimizers.DPOptimizer``
  (AdamW inside): clips every sample's gradient to ``max_grad_norm`` and adds ``N(0, (sigma C)^2)``. The model needs
  Opacus per-sample gradients (``opacus.grad_sample.GradSampleHooks``) and a loss that is a mean of per-sample
  losses. An empty batch still releases a noise-only step.
- :func:`poisson_batches`: each step draws every sample independently with probability ``q`` (Opacus
  ``UniformWithReplacementSampler``), the sampling the accountant assumes; an empty draw yields None.
- :class:`DPSGD`: resolves sigma (given, or from ``target_epsilon`` over the whole run), refuses a round that would
  exceed ``max_epsilon`` before it starts, and records one sampled Gaussian step per batch in the persistent
  :class:`~fedmrg.privacy.accounting.PrivacyLedger` (saved with the site's private state). When a batch is released
  ``r`` times (r noisy steps on one Poisson batch, each with sensitivity C), the ledger records one step at
  ``sigma / sqrt(r)``.

Randomness (sampling and noise) comes from a generator seeded from the OS entropy pool (``secrets``), never from the
run's seed; tests pass a seeded one.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader, Dataset

from fedmrg.privacy.accounting import PrivacyLedger
from fedmrg.privacy.dp_config import DPSGDConfig

#: File of the ledger in the site's private-state folder.
LEDGER_FILE = "dp_sgd_ledger.json"
#: Prefix of the releasable privacy metrics.
METRIC_PREFIX = "dp/"
#: Metric keys that may leave the site under DP-SGD besides ``dp/*`` (data-independent bookkeeping); the losses,
#: computed on private batches without noise, stay local.
RELEASABLE_METRICS = ("steps", "lr", "seconds")


def fill_missing_grad_samples(params: Iterable[torch.nn.Parameter], batch_size: int) -> None:
    """Zero per-sample gradients (batch_size, *shape) for parameters the batch did not reach (or an empty batch)."""
    for p in params:
        if getattr(p, "grad_sample", None) is None:
            p.grad_sample = torch.zeros((batch_size, *p.shape), dtype=p.dtype, device=p.device)


class DPSGDStep:
    """One noisy step per batch: Opacus ``DPOptimizer`` over AdamW (see the module docstring).

    Args:
        params: parameters or parameter groups (AdamW), all of which get per-sample gradients from Opacus hooks.
        lr: the base learning rate.
        noise_multiplier: sigma (noise std / ``max_grad_norm``).
        max_grad_norm: the per-sample clipping bound C.
        expected_batch_size: ``q * N``, the denominator of the noisy mean.
        generator: the noise generator.
        **adamw: further ``torch.optim.AdamW`` arguments.
    """

    skip_nonfinite = False

    def __init__(
        self,
        params: Iterable[Any],
        *,
        lr: float,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        generator: torch.Generator | None,
        **adamw: Any,
    ) -> None:
        groups = list(params)
        self.dp_optimizer = DPOptimizer(
            torch.optim.AdamW(groups, lr=lr, **adamw),
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
            generator=generator,
        )
        for group in self.dp_optimizer.original_optimizer.param_groups:
            for p in group["params"]:  # DPOptimizer initialises only the parameters trainable when it is built
                if not hasattr(p, "summed_grad"):
                    p.summed_grad = None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.dp_optimizer.original_optimizer

    def zero_grad(self) -> None:
        self.dp_optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        with warnings.catch_warnings():  # frozen inputs (images, frozen layers) before the first trainable layer
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()

    def step(self, n_used: int, n_all: int) -> bool:
        """Clip each sample's gradient, add noise, step (noise only when ``n_used`` is 0); never skips."""
        params = self.dp_optimizer.params
        sizes = [p.grad_sample.shape[0] for p in params if isinstance(getattr(p, "grad_sample", None), torch.Tensor)]
        fill_missing_grad_samples(params, sizes[0] if sizes and n_used else 0)
        self.dp_optimizer.step()
        self.zero_grad()
        return True


def poisson_batches(
    dataset: Dataset,
    collate: Callable[[list[Any]], Mapping[str, Any]],
    *,
    sample_rate: float,
    steps: int,
    generator: torch.Generator,
    num_workers: int = 0,
) -> Iterator[Mapping[str, Any] | None]:
    """``steps`` Poisson batches of ``dataset`` (each sample kept with probability ``sample_rate``); None if empty."""
    sampler = UniformWithReplacementSampler(
        num_samples=len(dataset),  # type: ignore[arg-type]
        sample_rate=sample_rate,
        generator=generator,
        steps=steps,
    )

    def collate_or_none(samples: list[Any]) -> Mapping[str, Any] | None:
        return collate(samples) if samples else None

    yield from DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_or_none, num_workers=num_workers)


class DPSGD:
    """The privacy side of DP-SGD training for one site: sigma, the budget, the ledger, the steps, the batches.

    Args:
        config: the ``privacy.dp_sgd`` section (must be enabled).
        dataset_size: N, the number of samples (patients' studies) of the site.
        batch_size: the expected batch size ``q * N``.
        rounds: the number of rounds of the run (``target_epsilon`` is spent over all of them).
        releases_per_batch: noisy steps taken on each Poisson batch (phases of the loop).
        who: names the site in messages.
        generator: sampling and noise generator; None (production) seeds one from ``secrets``.
    """

    def __init__(
        self,
        config: DPSGDConfig,
        *,
        dataset_size: int,
        batch_size: int,
        rounds: int,
        releases_per_batch: int = 1,
        who: str = "",
        generator: torch.Generator | None = None,
    ) -> None:
        if not config.enabled:
            raise ValueError("DP-SGD needs `privacy.dp_sgd.enabled: true`")
        if dataset_size < 1:
            raise ValueError("DP-SGD needs a non-empty dataset")
        self.config = config
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.rounds = rounds
        self.who = who
        self.sample_rate = min(1.0, batch_size / dataset_size)
        self.releases_per_batch = releases_per_batch
        self.noise_multiplier: float | None = config.noise_multiplier
        self.ledger = PrivacyLedger(config.accountant, delta=config.delta)
        self.generator = generator or torch.Generator().manual_seed(secrets.randbits(63))

    @property
    def accounted_noise_multiplier(self) -> float:
        """The noise multiplier of the one sampled Gaussian step recorded per batch: sigma / sqrt(releases)."""
        if self.noise_multiplier is None:
            raise RuntimeError("noise multiplier not resolved yet (call prepare_round first)")
        return self.noise_multiplier / math.sqrt(self.releases_per_batch)

    def prepare_round(self, n_steps: int, round_num: int) -> float:
        """Resolve sigma (from ``target_epsilon`` over ``rounds`` rounds of ``n_steps``) and check the budget.

        Returns the projected epsilon after the round; raises PrivacyBudgetExhausted when it exceeds ``max_epsilon``.
        """
        cfg = self.config
        if self.noise_multiplier is None:
            sigma_eff = get_noise_multiplier(
                target_epsilon=cfg.target_epsilon,
                target_delta=cfg.delta,
                sample_rate=self.sample_rate,
                steps=self.rounds * n_steps,
                accountant=cfg.accountant,
            )
            self.noise_multiplier = sigma_eff * math.sqrt(self.releases_per_batch)
        return self.ledger.check_budget(
            cfg.max_epsilon,
            noise_multiplier=self.accounted_noise_multiplier,
            sample_rate=self.sample_rate,
            steps=n_steps,
            who=f"{self.who} round {round_num}".strip(),
        )

    def make_step(self, params: Iterable[Any], *, lr: float, **adamw: Any) -> DPSGDStep:
        """A :class:`DPSGDStep` with this site's sigma, C, expected batch size and generator."""
        if self.noise_multiplier is None:
            raise RuntimeError("noise multiplier not resolved yet (call prepare_round first)")
        return DPSGDStep(
            params,
            lr=lr,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.config.max_grad_norm,
            expected_batch_size=self.batch_size,
            generator=self.generator,
            **adamw,
        )

    def batches(
        self,
        dataset: Dataset,
        collate: Callable[[list[Any]], Mapping[str, Any]],
        *,
        steps: int,
        num_workers: int = 0,
    ) -> Iterator[Mapping[str, Any] | None]:
        """:func:`poisson_batches` at this site's sample rate and generator."""
        return poisson_batches(
            dataset, collate, sample_rate=self.sample_rate, steps=steps, generator=self.generator,
            num_workers=num_workers,
        )  # fmt: skip

    def record_step(self, step: int | None = None) -> None:
        """Record one batch (all its releases) in the ledger; the loop's ``after_step`` hook."""
        self.ledger.step(noise_multiplier=self.accounted_noise_multiplier, sample_rate=self.sample_rate)

    def metrics(self) -> dict[str, float]:
        """The releasable privacy metrics: epsilon at delta so far and the mechanism's parameters."""
        return {
            f"{METRIC_PREFIX}epsilon": self.ledger.epsilon(),
            f"{METRIC_PREFIX}delta": self.config.delta,
            f"{METRIC_PREFIX}noise_multiplier": float(self.noise_multiplier or 0.0),
            f"{METRIC_PREFIX}max_grad_norm": self.config.max_grad_norm,
            f"{METRIC_PREFIX}sample_rate": self.sample_rate,
            f"{METRIC_PREFIX}steps_total": float(self.ledger.steps),
        }

    @staticmethod
    def releasable(metrics: Mapping[str, float]) -> dict[str, float]:
        """The subset of round metrics that may leave the site (``dp/*`` and data-independent bookkeeping)."""
        return {k: v for k, v in metrics.items() if k.startswith(METRIC_PREFIX) or k in RELEASABLE_METRICS}

    def save(self, directory: str | Path) -> None:
        """Write the ledger into the site's private-state folder."""
        self.ledger.save(Path(directory) / LEDGER_FILE)

    def load(self, directory: str | Path) -> bool:
        """Restore the ledger from the private-state folder; False when none was saved there."""
        return self.ledger.load(Path(directory) / LEDGER_FILE)


__all__ = [
    "DPSGD",
    "LEDGER_FILE",
    "METRIC_PREFIX",
    "RELEASABLE_METRICS",
    "DPSGDStep",
    "fill_missing_grad_samples",
    "poisson_batches",
]

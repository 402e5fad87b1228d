"""Configuration of patient-level differential privacy (DP-SGD in the local trainer), off by default.

It is the ``privacy`` section of the run configuration (:class:`~fedmrg.report.config.FedMRGConfig`)::

    privacy:
      dp_sgd: {enabled: true, noise_multiplier: 1.0, max_grad_norm: 1.0, delta: 1.0e-5, max_epsilon: 8.0}
    ablations: {no_contrastive: true}     # required with DP-SGD (see DPSGDConfig)

In a FLARE job the same keys go into the learner's ``overrides`` (``fedmrg job variant ... --set
learner.overrides.privacy.dp_sgd.enabled=true``). Privacy settings are validated strictly: unknown keys and impossible
values raise (never a warning), because a typo must not silently turn privacy off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from fedmrg.report.config import FedMRGConfig

Accountant = Literal["rdp", "prv"]
#: train metric every DP-SGD round reports (epsilon spent so far at ``delta``); a site whose configuration asks for
#: DP-SGD never sends an update without it (:class:`~fedmrg.fl.shared_state_executor.SharedStateExecutor`)
DP_EPSILON_METRIC = "dp/epsilon"


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


@dataclass
class DPSGDConfig:
    """Patient-level DP-SGD (Abadi et al. 2016) with Opacus: Poisson sampling, per-sample clipping, Gaussian noise.

    The privacy unit is one training study (one report with its images; a patient with several studies is covered
    by group privacy only, see the README). Every noisy optimizer step is accounted: the G step and the S step of
    one Poisson batch count as one sampled Gaussian mechanism with noise multiplier ``noise_multiplier / sqrt(2)``
    (two clipped releases of the same batch compose like one Gaussian with sensitivity ``sqrt(2) * C``).

    Args:
        enabled: train with DP-SGD. Requires ``ablations.no_contrastive: true`` (the contrastive loss couples the
            samples of a batch and the memory bank exports raw patient-derived features) and
            ``training.grad_accum_steps: 1``.
        noise_multiplier: sigma, the ratio of the noise standard deviation to ``max_grad_norm`` in each step. Give
            this or ``target_epsilon``, not both.
        target_epsilon: calibrate sigma (Opacus ``get_noise_multiplier``) so that ``training.rounds`` rounds of
            training spend exactly this epsilon at ``delta``.
        max_grad_norm: C, the L2 bound of each study's gradient (over every parameter of the step).
        delta: the delta of the reported (epsilon, delta); should be well below 1 / (training studies at the site).
        max_epsilon: the site's budget: a round that would push epsilon above it is refused before training
            (:class:`~fedmrg.privacy.errors.PrivacyBudgetExhausted`); None = no budget.
        accountant: ``"rdp"`` (Renyi DP, Mironov 2017; Opacus ``RDPAccountant``) or ``"prv"`` (privacy random
            variables, Gopi et al. 2021; tighter, slower).
    """

    enabled: bool = False
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    max_epsilon: float | None = None
    accountant: Accountant = "rdp"

    def __post_init__(self) -> None:
        _check(self.max_grad_norm > 0, f"`privacy.dp_sgd.max_grad_norm` must be > 0, got {self.max_grad_norm}")
        _check(0 < self.delta < 1, f"`privacy.dp_sgd.delta` must be in (0, 1), got {self.delta}")
        _check(
            self.accountant in ("rdp", "prv"),
            f"`privacy.dp_sgd.accountant` must be 'rdp' or 'prv', got {self.accountant}",
        )
        for name in ("noise_multiplier", "target_epsilon", "max_epsilon"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"`privacy.dp_sgd.{name}` must be > 0 or null, got {value}")
        if self.enabled:
            _check(
                (self.noise_multiplier is None) != (self.target_epsilon is None),
                "`privacy.dp_sgd`: give exactly one of `noise_multiplier` and `target_epsilon`, got "
                f"noise_multiplier={self.noise_multiplier}, target_epsilon={self.target_epsilon}",
            )
            _check(
                self.max_epsilon is None or self.target_epsilon is None or self.target_epsilon <= self.max_epsilon,
                f"`privacy.dp_sgd.target_epsilon` ({self.target_epsilon}) exceeds `max_epsilon` ({self.max_epsilon})",
            )


@dataclass
class PrivacyConfig:
    """Privacy options of a run; every one is off by default.

    Args:
        dp_sgd: patient-level DP-SGD in the local trainer (:class:`DPSGDConfig`). Site-level DP (clipping and
            noising the whole upload) is a FLARE filter, :class:`~fedmrg.privacy.site_dp_filter.SiteDPFilter`,
            configured in the job or forced by a site's ``privacy.json``, not here.
    """

    dp_sgd: DPSGDConfig = field(default_factory=DPSGDConfig)


def apply_site_dp_sgd(
    model_config: FedMRGConfig, settings: DPSGDConfig | dict[str, Any], *, site: str, source: str = "fedmrg_site.json"
) -> FedMRGConfig:
    """``model_config`` with ``privacy.dp_sgd`` replaced by a site's own settings.

    A hospital switches DP-SGD on for its site alone with the key ``dp_sgd`` in its ``local/fedmrg_site.json``
    (e.g. ``{"dp_sgd": {"enabled": true, "noise_multiplier": 1.0, "max_epsilon": 8}}``; read and typed by
    :mod:`fedmrg.fl.site_config`); the site's settings replace the job's entirely. The architecture and the shared
    keys do not change, so the site stays compatible with the federation.

    Args:
        model_config: the run's model configuration.
        settings: the site's ``dp_sgd`` (typed, or the raw mapping, checked strictly here).
        site: the site's name (in messages).
        source: the file the settings come from (in messages).

    Raises:
        ConfigError: naming the site, the file and the key when the settings are invalid or clash with the job (e.g.
            the job uses the contrastive loss), with the remedy.
    """
    from fedmrg.config import from_dict
    from fedmrg.errors import ConfigError

    where = f"site {site!r} {source}"
    dp = (
        settings
        if isinstance(settings, DPSGDConfig)
        else from_dict(DPSGDConfig, settings, source=where, _prefix="dp_sgd.")
    )
    try:
        return dataclasses.replace(model_config, privacy=PrivacyConfig(dp_sgd=dp))
    except ValueError as e:
        raise ConfigError(
            f"{where}: `dp_sgd` cannot be honoured with this job: {e}; change the job (e.g. `fedmrg job variant "
            f"... --set learner.overrides.ablations.no_contrastive=true`) or remove `dp_sgd` from the file"
        ) from e

"""Site-level differential privacy: a FLARE task-result filter that clips and noises a site's whole update (DP-FedAvg).

Put it in a client's ``task_result_filters`` (job config) or force it on every job with the site's
``local/privacy.json`` (see ``provisioning/PRIVACY.md``). For each train result (a WEIGHT_DIFF DXO) it:

1. clips the whole delta (all keys together) to L2 norm ``clip_norm`` C: ``delta * min(1, C / ||delta||)``;
2. adds independent Gaussian noise ``N(0, (noise_multiplier * C)^2)`` to every coordinate (McMahan et al. 2018,
   "Learning differentially private recurrent language models", with the noise added at the site);
3. records one sampled Gaussian mechanism (noise multiplier sigma, sample rate ``participation_rate``) in its own
   :class:`~fedmrg.privacy.accounting.PrivacyLedger` (Opacus RDP), saved before the result leaves the site;
4. writes epsilon at ``delta`` into the DXO meta (``"fedmrg.site_dp"``) and into the train metrics
   (``site_dp/epsilon``, ...), which the server's run summary and TensorBoard show, and logs it;
5. keeps from the train metrics only privacy parameters and data-independent bookkeeping (``dp/*``, ``steps``,
   ``lr``, ``seconds``; the losses are un-noised functions of the data) and drops extra payloads such as
   memory-bank features (raw patient-derived features that no clipping protects), saying so in the log.

What the guarantee means: neighbouring inputs differ by *the whole site's contribution in a round* (its update
replaced by zero). Each upload is then an (epsilon, delta)-DP release w.r.t. everything the site trained on, so
it also covers each patient of the site (group privacy over the whole site). The noise is added before the upload,
so the guarantee holds against the server too (no trust in the aggregator). Assumptions, stated plainly:

- ``participation_rate`` q < 1 amplifies privacy only if the site takes part in a round at random with
  probability q, independently and secretly. The server always knows who uploaded, so against the server use
  q = 1 (the default); q < 1 applies to parties who see only the global model (other sites, model users).
- One step per round: every round's upload is one Gaussian mechanism, composed over rounds by the accountant.
- The ledger is per run unless ``ledger_path`` points outside the run (an absolute path keeps one budget for the
  site across jobs, which is what a hospital's ``privacy.json`` should do).

What it does not protect: validation metrics (other splits), the sample count used as FedAvg weight (``steps x
batch size``), and the model the site submits for cross-site evaluation: with the filter enabled a WEIGHTS result
(``submit_model``) is refused (EMPTY_RESULT), because un-noised local weights would void the guarantee, and so are
the statistics of the statistics round after training (a STATISTICS result, :mod:`fedmrg.fl.statistics_round`):
the server then stops the job, naming the site and this reason.

With 3-10 sites and q = 1 epsilon is large for any useful noise level; see ``scripts/dp_site_level_table.py``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.app_common.app_constant import AppConstants

from fedmrg.fl.constants import FedHeaderKey, FedMetaKey
from fedmrg.privacy.errors import PrivacyBudgetExhausted

#: DXO meta key of the filter's report: ``{"epsilon", "delta", "noise_multiplier", "clip_norm", "rounds", ...}``.
SITE_DP_META_KEY = "fedmrg.site_dp"
#: Train-metric prefix of the filter's report (shown by the run summary and TensorBoard).
SITE_DP_METRIC_PREFIX = "site_dp/"
#: Train metrics that may leave the site under site-level DP (privacy parameters and data-independent bookkeeping).
_RELEASABLE_METRICS = ("steps", "lr", "seconds")


def global_l2_norm(arrays: dict[str, np.ndarray]) -> float:
    """L2 norm of all arrays together, as if flattened and concatenated (computed in float64)."""
    return float(math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays.values())))


def clip_to_norm(arrays: dict[str, np.ndarray], clip_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """``arrays * min(1, clip_norm / ||arrays||)`` (one factor for all keys); returns (clipped, norm before clipping)."""
    norm = global_l2_norm(arrays)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: (np.asarray(v, dtype=np.float64) * factor).astype(v.dtype) for k, v in arrays.items()}, norm


def add_gaussian_noise(arrays: dict[str, np.ndarray], std: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each array plus i.i.d. ``N(0, std^2)`` noise of its shape, keeping its dtype."""
    return {k: (v + rng.normal(0.0, std, size=v.shape)).astype(v.dtype) for k, v in arrays.items()}


class SiteDPFilter(DXOFilter):
    def __init__(
        self,
        enabled: bool = False,
        clip_norm: float = 1.0,
        noise_multiplier: float = 1.0,
        participation_rate: float = 1.0,
        delta: float = 1e-5,
        max_epsilon: float | None = None,
        accountant: str = "rdp",
        ledger_path: str = "",
    ):
        """Clips a site's whole WEIGHT_DIFF to ``clip_norm`` and adds Gaussian noise (see the module docstring).

        Args:
            enabled: apply the filter; False passes every result through unchanged (the job ships it switched off).
                Defaults to False.
            clip_norm: C, the L2 bound of the whole update (all shared keys together). Defaults to 1.0.
            noise_multiplier: sigma; the noise standard deviation per coordinate is ``sigma * C``. Defaults to 1.0.
            participation_rate: q, the probability that the site takes part in a round (sample rate of the
                accountant); 1.0 unless participation is random and hidden (see the module docstring).
            delta: the delta of the reported epsilon. Defaults to 1e-5.
            max_epsilon: budget: an upload that would push epsilon above it is refused (the round goes on without
                this site). None (default) = no budget.
            accountant: ``"rdp"`` (default) or ``"prv"`` (Opacus accountants).
            ledger_path: JSON file of the filter's ledger. ``""`` (default): ``site_dp_ledger.json`` in the run's
                app folder (one budget per run); a relative path is under the site's workspace root; an absolute
                path (e.g. ``"/var/fedmrg/{site}/site_dp_ledger.json"``) keeps one budget across jobs. ``{site}`` is
                replaced by the client name.

        Raises:
            TypeError, ValueError: when an argument has a wrong type or value (even when disabled: a switched-off
                privacy filter must still be a valid one to switch on).
        """
        super().__init__(supported_data_kinds=None, data_kinds_to_filter=None)
        if not isinstance(enabled, bool):
            raise TypeError(f"`enabled` must be a bool, got {type(enabled).__name__}")
        for name, value in (("clip_norm", clip_norm), ("noise_multiplier", noise_multiplier)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"`{name}` must be a number > 0, got {value!r}")
        if isinstance(participation_rate, bool) or not isinstance(participation_rate, (int, float)):
            raise TypeError(f"`participation_rate` must be a number, got {participation_rate!r}")
        if not 0 < participation_rate <= 1:
            raise ValueError(f"`participation_rate` must be in (0, 1], got {participation_rate}")
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
            raise ValueError(f"`delta` must be in (0, 1), got {delta!r}")
        if max_epsilon is not None and (
            isinstance(max_epsilon, bool) or not isinstance(max_epsilon, (int, float)) or not max_epsilon > 0
        ):
            raise ValueError(f"`max_epsilon` must be a number > 0 or null, got {max_epsilon!r}")
        if accountant not in ("rdp", "prv"):
            raise ValueError(f"`accountant` must be 'rdp' or 'prv', got {accountant!r}")
        if not isinstance(ledger_path, str):
            raise TypeError(f"`ledger_path` must be a str, got {type(ledger_path).__name__}")

        # stored unchanged: the job API exports components by reading these attributes back
        self.enabled = enabled
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.participation_rate = participation_rate
        self.delta = delta
        self.max_epsilon = max_epsilon
        self.accountant = accountant
        self.ledger_path = ledger_path

        self._ledger: Any = None
        self._ledger_file: Path | None = None
        # OS entropy, never a configured seed (a job author who knew the seed could subtract the noise)
        self._rng = np.random.default_rng()

    # -- ledger -----------------------------------------------------------------------------------------------
    def _resolve_ledger_file(self, fl_ctx: FLContext) -> Path:
        try:
            path = Path(os.path.expanduser(self.ledger_path.format(site=fl_ctx.get_identity_name())))
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"`ledger_path` {self.ledger_path!r}: only {{site}} is allowed") from e
        if self.ledger_path and path.is_absolute():
            return path
        workspace = fl_ctx.get_engine().get_workspace()
        if not self.ledger_path:
            return Path(workspace.get_app_dir(fl_ctx.get_job_id())) / "site_dp_ledger.json"
        return Path(workspace.get_root_dir()) / path

    def ledger(self, fl_ctx: FLContext) -> Any:
        """The filter's :class:`~fedmrg.privacy.accounting.PrivacyLedger`, loaded from its file on first use."""
        if self._ledger is None:
            from fedmrg.privacy.accounting import PrivacyLedger

            self._ledger_file = self._resolve_ledger_file(fl_ctx)
            self._ledger = PrivacyLedger(self.accountant, delta=self.delta)
            self._ledger.load(self._ledger_file)
        return self._ledger

    # -- filtering ----------------------------------------------------------------------------------------------
    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            return super().process(shareable, fl_ctx)
        except PrivacyBudgetExhausted as e:  # refuse this upload; the server goes on without the site
            self.log_error(fl_ctx, f"site-level DP: refused: {e}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        except _Withheld as e:
            self.log_warning(fl_ctx, f"site-level DP: {e}")
            reply = make_reply(ReturnCode.EMPTY_RESULT)
            reply.set_header(FedHeaderKey.ERROR, f"site-level DP: {e}")  # the server says why the result is missing
            return reply

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        if not self.enabled:
            return None
        if dxo.data_kind == DataKind.WEIGHTS:
            raise _Withheld("un-noised model weights (e.g. submit_model for cross-site evaluation) are not released")
        if dxo.data_kind == DataKind.STATISTICS:
            raise _Withheld("un-noised statistics (the statistics round after training: `training.head_calibration`) "
                            "are not released; set `training.head_calibration: none` with site-level DP")  # fmt: skip
        if dxo.data_kind != DataKind.WEIGHT_DIFF:
            return None  # metrics of validation on other splits pass (not covered; see the module docstring)
        r = shareable.get_header(AppConstants.CURRENT_ROUND)
        who = f"site {fl_ctx.get_identity_name()!r} round {r}"
        ledger = self.ledger(fl_ctx)
        epsilon = ledger.check_budget(
            self.max_epsilon,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.participation_rate,
            steps=1,
            who=who,
        )
        clipped, norm = clip_to_norm(dxo.data, self.clip_norm)
        noised = add_gaussian_noise(clipped, self.noise_multiplier * self.clip_norm, self._rng)
        ledger.step(noise_multiplier=self.noise_multiplier, sample_rate=self.participation_rate)
        ledger.save(self._ledger_file)  # spent before anything leaves the site
        report = {
            "epsilon": epsilon,
            "delta": self.delta,
            "noise_multiplier": float(self.noise_multiplier),
            "clip_norm": float(self.clip_norm),
            "participation_rate": float(self.participation_rate),
            "rounds": ledger.steps,
        }
        meta = dict(dxo.meta)
        dropped = sorted((meta.pop(FedMetaKey.EXTRA, None) or {}).keys())
        train = meta.get(FedMetaKey.TRAIN_METRICS) or {}
        kept = {k: v for k, v in train.items() if k.startswith("dp/") or k in _RELEASABLE_METRICS}
        meta[FedMetaKey.TRAIN_METRICS] = kept | {f"{SITE_DP_METRIC_PREFIX}{k}": float(v) for k, v in report.items()}
        meta[SITE_DP_META_KEY] = report
        self.log_debug(fl_ctx, f"{who}: update norm before clipping {norm:.4g}")  # data-dependent: debug only
        self.log_info(
            fl_ctx,
            f"{who}: site-level DP: clipped to {self.clip_norm:g}, noise std {self.noise_multiplier * self.clip_norm:g};"
            f" epsilon = {epsilon:.3f} at delta = {self.delta:g} after {ledger.steps} upload(s)"
            + (f", budget {self.max_epsilon:g}" if self.max_epsilon is not None else "")
            + (f"; dropped extra payloads {dropped} (patient-derived, not covered)" if dropped else "")
            + (f"; withheld train metrics {sorted(set(train) - set(kept))}" if set(train) - set(kept) else ""),
        )
        out = DXO(data_kind=DataKind.WEIGHT_DIFF, data=noised, meta=meta)
        if MetaKey.NUM_STEPS_CURRENT_ROUND in dxo.meta:
            out.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, dxo.meta[MetaKey.NUM_STEPS_CURRENT_ROUND])
        return out


class _Withheld(Exception):
    """A result the filter does not release (not an error of the site)."""

"""The contract between a model system (FedMRG, the visual prompt generator) and the federated plumbing.

A system implements :class:`SharedStateLearner`; FLARE never sees the model. The job config names the learner by a
dotted class path and passes constructor arguments (``learner_path`` / ``learner_args`` of
:class:`~fedmrg.fl.shared_state_executor.SharedStateExecutor` and
:class:`~fedmrg.fl.shared_state_persistor.SharedStatePersistor`), so both sides build the same model configuration.

Life cycle at a site (all calls from one thread, in this order)::

    learner = LearnerClass(**learner_args)          # cheap: store the configuration only
    learner.setup(site_name, workspace_dir, config)  # START_RUN: load data and the model (heavy)
    learner.load_private(private_dir)               # when a saved private state exists (later rounds, restarts)
    per round:  metrics = learner.validate(global_state, personalized=True, split="val")   # optional
                outcome = learner.train(global_state, round_num=r, extra=peer_extra)
                learner.save_private(private_dir)
    cross-site: learner.validate(model_state, personalized=True, split="test")

On the server only ``LearnerClass(**learner_args).initial_shared_state()`` is called (no ``setup``), so that method
must build the model from the constructor arguments alone, deterministically from their seed. Optional hook: a
learner with ``apply_site_config(config: SiteConfig)`` gets the participant's own ``fedmrg_site.json`` before its
model is built (the server's from :class:`~fedmrg.fl.shared_state_persistor.SharedStatePersistor`; at a site the
learner calls it from ``setup``), e.g. for local model directories (``model_paths``).

Optional statistics round (:mod:`fedmrg.fl.statistics_round`): a learner with ``needs_statistics_round()``,
``round_statistics(global_state)`` (site: additive float arrays) and ``finish_state(global_state, summed)`` (server,
no ``setup``) gets one more exchange after the last round, in which the server derives the final global model from
the sum of every training site's statistics; such a learner declares ``runs_statistics_round = False``, which the
executor sets to True before ``setup`` when the job sends the ``statistics`` task.

Site settings arrive typed (:class:`~fedmrg.fl.site_config.SiteConfig`, already checked for unknown keys and types).
A learner must honour every setting it is given or raise :class:`~fedmrg.errors.ConfigError` in ``setup`` naming
``config.where(key)`` (e.g. ``model_paths`` it cannot apply). Privacy: a learner that trains with DP-SGD when
``config.dp_sgd`` enables it declares the class attribute ``honours_dp_sgd = True`` and reports
``dp/epsilon`` (:data:`~fedmrg.privacy.dp_config.DP_EPSILON_METRIC`) in every ``TrainOutcome.metrics``; the executor
refuses a DP-SGD site whose learner does not declare it, and withholds an update without the metric.

State dictionaries map the shared-key names (:meth:`SharedStateLearner.shared_keys`, e.g. FedMRG's ``encoder.*`` and
``adapter.*``) to numpy ``float32`` arrays on the CPU. A learner's ``shared_keys()`` must equal the keys of its
``initial_shared_state()`` and of every ``TrainOutcome.shared_state``; the executor and server check it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedmrg.errors import ConfigError
from fedmrg.fl.site_config import SiteConfig

#: A model state: shared-key name -> float32 array.
State = dict[str, np.ndarray]


@dataclass
class TrainOutcome:
    """What one local round produced.

    Attributes:
        shared_state: the site's new shared state, exactly the shared keys, float32 arrays (not the difference: the
            executor computes the WEIGHT_DIFF against the global state it received).
        num_samples: training samples seen this round (> 0); the server weighs the update by it (FedAvg).
        metrics: scalar training metrics of the round, e.g. ``{"loss": 0.71}``; finite floats.
        extra: payloads for the other sites, e.g. ``{"bank": features}`` with ``features`` a float32 ``(K, D)`` array
            of memory-bank features; relayed by :class:`~fedmrg.fl.extra_payload_relay.ExtraPayloadRelay`.
    """

    shared_state: State
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)


@runtime_checkable
class SharedStateLearner(Protocol):
    """A site's local trainer, seen by the federated plumbing only through shared (travelling) state."""

    def setup(self, site_name: str, workspace_dir: str, config: SiteConfig) -> None:
        """Load data and build the model (called once per client process, at START_RUN).

        Args:
            site_name: the FLARE client name, e.g. ``"site-1"``.
            workspace_dir: a folder of this site's run where the learner may write files (logs, caches).
            config: the site's own settings (``fedmrg_site.json``, typed): ``data_root`` resolved by the executor
                (absolute or ``""``), ``role``, ``device``, ``torch_threads``, ``model_paths``, ``dp_sgd``; see
                :mod:`fedmrg.fl.site_config`. ConfigError when a setting cannot be honoured.
        """
        ...

    def initial_shared_state(self) -> State:
        """The initial global model (server side, no ``setup``): exactly ``shared_keys()``, float32."""
        ...

    def shared_keys(self) -> list[str]:
        """Sorted names of everything that travels; the same at every site and on the server."""
        ...

    def train(self, global_state: State, *, round_num: int, extra: dict[str, Any]) -> TrainOutcome:
        """Load ``global_state`` into the shared part, train locally, return the new shared state.

        Args:
            global_state: the global shared state of this round.
            round_num: the FL round (0-based).
            extra: the other sites' extras, by key then site: ``{"bank": {"site-2": (K, D) float32}}``; a site's own
                payloads are never included. Empty in round 0.
        """
        ...

    def validate(self, global_state: State, *, personalized: bool, split: str) -> dict[str, float]:
        """Evaluate ``global_state`` on the local ``split`` (e.g. ``"val"``, ``"test"``).

        With ``personalized`` the site's private part (e.g. FedMRG's specialized adapter) is used together with the
        shared state; without, the shared state alone (e.g. the generic adapter). The learner's training state must
        be left unchanged. Returns finite scalar metrics, e.g. ``{"bleu4": 0.1, "rouge_l": 0.3, "ce_f1": 0.2}``.
        """
        ...

    def save_private(self, directory: str) -> None:
        """Write the private state (never sent) into the existing, empty ``directory``."""
        ...

    def load_private(self, directory: str) -> None:
        """Restore the private state written by :meth:`save_private` (after a client restart)."""
        ...


def build_learner(learner_path: str, learner_args: Mapping[str, Any] | None) -> SharedStateLearner:
    """Instantiate ``learner_path`` (``package.module.Class``) with ``learner_args``; ConfigError on any problem."""
    module_name, _, class_name = learner_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"`learner_path` {learner_path!r}: cannot import module {module_name!r}: {e}") from e
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"`learner_path` {learner_path!r}: module {module_name!r} has no class {class_name!r}")
    try:
        learner = cls(**dict(learner_args or {}))
    except TypeError as e:
        raise ConfigError(f"`learner_args` do not fit {learner_path}: {e}") from e
    if not isinstance(learner, SharedStateLearner):
        missing = [m for m in _PROTOCOL_METHODS if not callable(getattr(learner, m, None))]
        raise ConfigError(f"{learner_path} is not a SharedStateLearner: missing methods {missing}")
    return learner


_PROTOCOL_METHODS = (
    "setup",
    "initial_shared_state",
    "shared_keys",
    "train",
    "validate",
    "save_private",
    "load_private",
)


def check_state(state: Mapping[str, Any], expected_keys: list[str] | None, *, what: str) -> State:
    """Check a shared state: exact keys (when ``expected_keys`` is given), float32 numpy arrays, finite values.

    Returns the state as a plain dict. Raises ValueError naming ``what`` and the offending keys.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"{what} must be a dict of arrays, got {type(state).__name__}")
    if expected_keys is not None:
        missing = sorted(set(expected_keys) - set(state))
        unknown = sorted(set(state) - set(expected_keys))
        if missing or unknown:
            raise ValueError(
                f"{what} does not hold exactly the shared keys: missing {_head(missing)}, unknown {_head(unknown)}"
            )
    not_f32 = [k for k, v in state.items() if not (isinstance(v, np.ndarray) and v.dtype == np.float32)]
    if not_f32:
        k = not_f32[0]
        got = state[k].dtype if isinstance(state[k], np.ndarray) else type(state[k]).__name__
        raise ValueError(f"{what}: {len(not_f32)} value(s) are not numpy float32 arrays, e.g. `{k}` is {got}")
    bad = nonfinite_keys(state)
    if bad:
        raise ValueError(f"{what}: non-finite values (NaN/Inf) in {len(bad)} key(s): {_head(bad)}")
    return dict(state)


def nonfinite_keys(state: Mapping[str, Any]) -> list[str]:
    """Sorted keys whose array holds NaN or Inf (non-float arrays are skipped)."""
    out = []
    for k, v in state.items():
        a = np.asarray(v)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            out.append(k)
    return sorted(out)


def state_nbytes(state: Mapping[str, np.ndarray]) -> int:
    """Raw bytes of the arrays of a state (float32: 4 per value)."""
    return int(sum(np.asarray(v).nbytes for v in state.values()))


def _head(keys: list[str], n: int = 5) -> str:
    return str(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")

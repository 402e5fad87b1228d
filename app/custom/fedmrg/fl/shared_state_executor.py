"""Client-side FLARE executor that runs a :class:`~fedmrg.fl.learner.SharedStateLearner` for every FL task.

Tasks:

- ``train``: receives a WEIGHTS DXO holding exactly the shared keys (the global model of the round; the other sites'
  extra payloads in its meta under ``FedMetaKey.PEER_EXTRA``), optionally validates it on the ``val_split``
  (reported as ``MetaKey.INITIAL_METRICS`` for :class:`~nvflare.app_common.widgets.intime_model_selector.
  IntimeModelSelector`), trains, and returns a WEIGHT_DIFF DXO holding exactly the shared keys with
  ``MetaKey.NUM_STEPS_CURRENT_ROUND`` = the number of training samples. Training metrics and the site's extra
  payloads (e.g. memory-bank features) travel in the DXO meta, never in the data;
- ``validate`` (cross-site evaluation): evaluates the received model on the ``test_split`` with the shared state alone
  (generic only: keys as the learner names them, e.g. ``bleu4``) and, at a site that has trained and with
  ``personalized``, also with the site's private part (the same keys prefixed ``personalized_``); returns a METRICS
  DXO. A personalized model never leaves its site, so "site A's personalized model on site B's data" cannot exist:
  each site personalizes every received model with its own private part;
- ``submit_model`` (cross-site evaluation): returns the site's last local shared state as a WEIGHTS DXO;
- ``statistics`` (once, after the last FL round, when the learner asks for it; :mod:`fedmrg.fl.statistics_round`):
  receives the final global model (WEIGHTS DXO) and returns the learner's ``round_statistics`` of it as a STATISTICS
  DXO of float arrays (e.g. FedMRG's head statistics for ``training.head_calibration: lda``).

A site whose ``fedmrg_site.json`` says ``"role": "evaluate"`` (see :mod:`fedmrg.fl.site_config`) declines ``train``
and ``statistics`` with ``TASK_UNSUPPORTED`` and the header ``FedHeaderKey.ROLE`` (our ScatterAndGather sends it no further ``train``
tasks; see :mod:`fedmrg.fl.resumable_scatter_and_gather`) and takes part in cross-site evaluation only: the benchmark's unseen site. A site's ``test_split`` in ``fedmrg_site.json``
replaces the job's (an unseen site of a prepared dataset has only ``test``).

Site configuration (:mod:`fedmrg.fl.site_config`) is read at START_RUN, checked against the job's clients (a
``sites`` section for a name that is not a client is refused) and handed to ``learner.setup`` as a typed
:class:`~fedmrg.fl.site_config.SiteConfig`. A site that cannot start (an invalid ``fedmrg_site.json``, a learner that
refuses a setting) refuses every task of the job with ``EXECUTION_EXCEPTION`` and the reason (file, key, remedy) in
the reply's ``FedHeaderKey.ERROR``: it never trains. Privacy fails closed: a site whose ``fedmrg_site.json`` enables
``dp_sgd`` runs only a learner that declares ``honours_dp_sgd = True``, and each of its updates must report
``dp/epsilon`` in its train metrics, or the update is withheld (``EXECUTION_RESULT_ERROR``).

The private state is saved in ``private_dir`` after every round and loaded at START_RUN, so it survives rounds,
client-process restarts (the simulator recreates processes when ``-t`` < ``-n``) and, with a ``private_dir``
outside the run, restarted runs.

A learner exception never hangs the run: it is logged with the site, task and round, and the task returns an error
return code (``EXECUTION_EXCEPTION``; ``BAD_TASK_DATA`` for a malformed task, ``EXECUTION_RESULT_ERROR`` for an
invalid learner output), which the server's ``ignore_result_error`` policy handles. A site whose differential-privacy
budget is spent (:class:`~fedmrg.privacy.errors.PrivacyBudgetExhausted`) refuses the round the same way, with a
one-line error instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants
from nvflare.security.logging import secure_format_exception

from fedmrg.errors import ConfigError
from fedmrg.fl.checks import check_bool, check_dict, check_dotted_path, check_str
from fedmrg.fl.constants import FedHeaderKey, FedMetaKey
from fedmrg.fl.learner import SharedStateLearner, State, TrainOutcome, build_learner, check_state
from fedmrg.fl.site_config import SITE_CONFIG_FILE, load_site_config, resolve_data_root
from fedmrg.fl.state_files import load_state, replace_dir, save_state
from fedmrg.fl.statistics_round import STATISTICS_TASK, check_statistics
from fedmrg.privacy.dp_config import DP_EPSILON_METRIC
from fedmrg.privacy.errors import PrivacyBudgetExhausted

_PRIVATE_SUBDIR = "private"
_LOCAL_MODEL_FILE = "local_model.safetensors"
_PROGRESS_FILE = "progress.json"
#: prefix of the cross-site metrics computed with the site's private part
PERSONALIZED_PREFIX = "personalized_"


class _TaskError(Exception):
    """A task cannot proceed; carries the return code to send back."""

    def __init__(self, message: str, rc: str) -> None:
        super().__init__(message)
        self.rc = rc


class SharedStateExecutor(Executor):
    def __init__(
        self,
        learner_path: str,
        learner_args: dict | None = None,
        data_root_template: str = "",
        private_dir: str = "",
        train_task: str = AppConstants.TASK_TRAIN,
        validate_task: str = AppConstants.TASK_VALIDATION,
        submit_model_task: str = AppConstants.TASK_SUBMIT_MODEL,
        statistics_task: str = STATISTICS_TASK,
        validate_before_train: bool = True,
        val_split: str = "val",
        test_split: str = "test",
        personalized: bool = True,
    ):
        """Runs a SharedStateLearner at a site.

        Args:
            learner_path: dotted class path of the learner, e.g. ``"fedmrg.fl.toy_learner.ToyLearner"``.
            learner_args: constructor arguments of the learner (the model/training configuration, identical at every
                site and on the server). Defaults to ``{}``.
            data_root_template: the site's data folder, ``{site}`` replaced by the client name; overridable at the
                site by ``$FEDMRG_DATA_ROOT_<SITE>``, ``$FEDMRG_DATA_ROOT`` or ``local/fedmrg_site.json`` (see
                :mod:`fedmrg.fl.site_config`). Defaults to ``""`` (none).
            private_dir: folder of the site's private state (never sent) and last local model; ``{site}`` and
                ``{job_id}`` are replaced; relative to the site workspace root. ``""`` (default): a folder in the
                run's app folder, kept across rounds and process restarts of one run. Point it outside the workspace
                (e.g. ``"/data/fedmrg_runs/exp1/{site}"``) to keep it across runs (resume).
            train_task: name of the training task. Defaults to ``"train"``.
            validate_task: name of the cross-site validation task. Defaults to ``"validate"``.
            submit_model_task: name of the cross-site model-submission task. Defaults to ``"submit_model"``.
            statistics_task: name of the statistics round's task after the last FL round
                (:mod:`fedmrg.fl.statistics_round`); ``""``: the job runs no such round, and a learner that needs it
                refuses at setup. Defaults to ``"statistics"``.
            validate_before_train: validate the received global model on ``val_split`` before training each round
                and report it as ``MetaKey.INITIAL_METRICS`` (best-model selection, summary). Defaults to True.
            val_split: split used by ``validate_before_train``. Defaults to ``"val"``.
            test_split: split used by the validate task. Defaults to ``"test"``.
            personalized: use the site's private part in the per-round validation and add personalized metrics to
                the cross-site ones (True), or use the shared state alone (False). Defaults to True.

        Raises:
            TypeError, ValueError: when an argument has a wrong type or value (the message names it).
        """
        super().__init__()
        check_dotted_path("learner_path", learner_path)
        if learner_args is not None:
            check_dict("learner_args", learner_args)
        for name, value in (
            ("data_root_template", data_root_template),
            ("private_dir", private_dir),
            ("submit_model_task", submit_model_task),
            ("validate_task", validate_task),
            ("statistics_task", statistics_task),
        ):
            check_str(name, value)
        for name, value in (("train_task", train_task), ("val_split", val_split), ("test_split", test_split)):
            check_str(name, value, allow_empty=False)
        check_bool("validate_before_train", validate_before_train)
        check_bool("personalized", personalized)

        # stored unchanged: the job API exports components by reading these attributes back
        self.learner_path = learner_path
        self.learner_args = learner_args
        self.data_root_template = data_root_template
        self.private_dir = private_dir
        self.train_task = train_task
        self.validate_task = validate_task
        self.submit_model_task = submit_model_task
        self.statistics_task = statistics_task
        self.validate_before_train = validate_before_train
        self.val_split = val_split
        self.test_split = test_split
        self.personalized = personalized

        self.learner: SharedStateLearner | None = None
        self._keys: list[str] = []
        self._site = "?"
        self._role = "train"
        self._test_split = test_split
        self._private_root: Path | None = None
        self._setup_error = ""
        self._dp_sgd_required = False

    # -- START_RUN ---------------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)

    def _start(self, fl_ctx: FLContext) -> None:
        self._site = fl_ctx.get_identity_name()
        try:
            workspace = fl_ctx.get_engine().get_workspace()
            job_id = fl_ctx.get_job_id()
            root = Path(workspace.get_root_dir())
            app_dir = Path(workspace.get_app_dir(job_id))
            app_dir.mkdir(parents=True, exist_ok=True)
            site_cfg = load_site_config(
                workspace.get_site_config_dir(), self._site, participants=_job_participants(fl_ctx, self._site)
            )
            # the learner sees the role too: an evaluation-only site skips its training setup
            self._role = site_cfg.role
            self._test_split = site_cfg.test_split or self.test_split
            data_root, source = resolve_data_root(
                self.data_root_template, self._site, site_config=site_cfg, environ=os.environ, base_dir=root
            )
            site_cfg = dataclasses.replace(site_cfg, data_root=data_root, data_root_source=source)
            self.log_info(fl_ctx, f"site {self._site}: data root {data_root or '(none)'} (from {source})")
            self._private_root = self._resolve_private_root(root, app_dir, job_id)

            self.learner = build_learner(self.learner_path, self.learner_args)
            if site_cfg.requires_dp_sgd and getattr(self.learner, "honours_dp_sgd", False) is not True:
                raise ConfigError(
                    f"{site_cfg.where('dp_sgd.enabled')} asks for DP-SGD, which {self.learner_path} cannot honour "
                    f"(it does not declare `honours_dp_sgd = True`): the site refuses this job; run a learner with "
                    f"DP-SGD or remove `dp_sgd` from the file"
                )
            self._dp_sgd_required = site_cfg.requires_dp_sgd
            if self.statistics_task and hasattr(self.learner, "runs_statistics_round"):
                self.learner.runs_statistics_round = True  # this job's server sends the statistics task
            self.learner.setup(self._site, str(app_dir), site_cfg)
            self._keys = sorted(self.learner.shared_keys())
            private = self._private_root / _PRIVATE_SUBDIR
            if private.is_dir():
                self.learner.load_private(str(private))
                progress = self._read_progress()
                self.log_info(
                    fl_ctx,
                    f"site {self._site}: loaded private state from {private} "
                    f"(saved after round {progress.get('last_round', '?')})",
                )
            self.log_info(
                fl_ctx,
                f"site {self._site}: {type(self.learner).__name__} ready, {len(self._keys)} shared keys, "
                f"private state in {self._private_root}",
            )
        except ConfigError as e:  # our own message (file, key, remedy; no data): kept even in FLARE's secure logging
            self._setup_error = f"site {self._site}: refused at START_RUN: ConfigError: {e}"
            self.log_error(fl_ctx, self._setup_error)
        except Exception as e:
            self._setup_error = f"site {self._site}: learner setup failed: {secure_format_exception(e)}"
            self.log_exception(fl_ctx, self._setup_error)

    def _resolve_private_root(self, root: Path, app_dir: Path, job_id: str) -> Path:
        if not self.private_dir:
            return app_dir / "fedmrg_private"
        try:
            text = self.private_dir.format(site=self._site, job_id=job_id)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"`private_dir` {self.private_dir!r}: only {{site}} and {{job_id}} are allowed") from e
        path = Path(os.path.expanduser(text))
        return path if path.is_absolute() else root / path

    # -- tasks -------------------------------------------------------------------------------------------------
    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        round_num = shareable.get_header(AppConstants.CURRENT_ROUND)
        where = f"site {self._site}, task {task_name!r}" + (f", round {round_num}" if round_num is not None else "")
        if self._setup_error or self.learner is None:
            message = f"{where}: cannot run: {self._setup_error or 'learner not set up (no START_RUN)'}"
            self.log_error(fl_ctx, message)
            return _error_reply(ReturnCode.EXECUTION_EXCEPTION, message)
        try:
            if task_name in (self.train_task, self.statistics_task) and self._role == "evaluate":
                message = f"{where}: evaluation-only site (role 'evaluate'): {task_name} declined"
                self.log_info(fl_ctx, message)
                reply = _error_reply(ReturnCode.TASK_UNSUPPORTED, message)
                reply.set_header(FedHeaderKey.ROLE, self._role)  # the server stops sending it train tasks
                return reply
            if task_name == self.train_task:
                return self._train(shareable, round_num, fl_ctx, abort_signal, where)
            if self.validate_task and task_name == self.validate_task:
                return self._validate(shareable, fl_ctx, where)
            if self.submit_model_task and task_name == self.submit_model_task:
                return self._submit_model(fl_ctx, where)
            if self.statistics_task and task_name == self.statistics_task:
                return self._statistics(shareable, fl_ctx, where)
            self.log_error(fl_ctx, f"{where}: unknown task")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        except _TaskError as e:
            self.log_error(fl_ctx, f"{where}: {e}")
            return _error_reply(e.rc, f"{where}: {e}")
        except PrivacyBudgetExhausted as e:  # the site refuses; ScatterAndGather goes on while min_clients remain
            self.log_error(fl_ctx, f"{where}: refused: {e}")
            return _error_reply(ReturnCode.EXECUTION_EXCEPTION, f"{where}: refused: {e}")
        except Exception as e:
            message = f"{where}: learner failed: {secure_format_exception(e)}"
            self.log_exception(fl_ctx, message)
            return _error_reply(ReturnCode.EXECUTION_EXCEPTION, message)

    def _received_state(self, shareable: Shareable, where: str) -> tuple[State, DXO]:
        try:
            dxo = from_shareable(shareable)
        except ValueError as e:
            raise _TaskError(f"task data is not a DXO: {e}", ReturnCode.BAD_TASK_DATA) from e
        if dxo.data_kind != DataKind.WEIGHTS:
            raise _TaskError(f"expected a WEIGHTS DXO, got {dxo.data_kind}", ReturnCode.BAD_TASK_DATA)
        try:
            return check_state(dxo.data, self._keys, what=f"model received ({where})"), dxo
        except ValueError as e:
            raise _TaskError(str(e), ReturnCode.BAD_TASK_DATA) from e

    def _train(
        self, shareable: Shareable, round_num: Any, fl_ctx: FLContext, abort_signal: Signal, where: str
    ) -> Shareable:
        if not isinstance(round_num, int):
            raise _TaskError(f"train task without an int {AppConstants.CURRENT_ROUND} header", ReturnCode.BAD_TASK_DATA)
        global_state, dxo = self._received_state(shareable, where)
        peer_extra = dxo.get_meta_prop(FedMetaKey.PEER_EXTRA) or {}
        if not _is_peer_extra(peer_extra):
            raise _TaskError(
                f"{FedMetaKey.PEER_EXTRA} must map key -> site -> float32 (K, D) array", ReturnCode.BAD_TASK_DATA
            )
        meta: dict[str, Any] = {FedMetaKey.ROUND: round_num}
        if self.validate_before_train:
            val = _check_metrics(
                self.learner.validate(global_state, personalized=self.personalized, split=self.val_split),
                f"validate() ({where})",
            )
            meta[MetaKey.INITIAL_METRICS] = val
            self.log_info(fl_ctx, f"{where}: global model on {self.val_split}: {_fmt(val)}")
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)

        outcome = self.learner.train(global_state, round_num=round_num, extra=peer_extra)
        new_state, metrics, extra = self._check_outcome(outcome, where)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)

        self._save(new_state, round_num)
        diff = {k: new_state[k] - global_state[k] for k in self._keys}
        meta |= {
            MetaKey.NUM_STEPS_CURRENT_ROUND: outcome.num_samples,
            FedMetaKey.TRAIN_METRICS: metrics,
        }
        if extra:
            meta[FedMetaKey.EXTRA] = extra
        peers = {k: sorted(v) for k, v in peer_extra.items()}
        self.log_info(
            fl_ctx,
            f"{where}: trained on {outcome.num_samples} samples: {_fmt(metrics)}; "
            f"extras sent {sorted(extra)}, received from {peers}",
        )
        result = DXO(data_kind=DataKind.WEIGHT_DIFF, data=diff, meta=meta).to_shareable()
        result.set_header(AppConstants.CURRENT_ROUND, round_num)  # for result filters (meters, privacy)
        return result

    def _check_outcome(self, outcome: Any, where: str) -> tuple[State, dict[str, float], dict[str, np.ndarray]]:
        bad = ReturnCode.EXECUTION_RESULT_ERROR
        if not isinstance(outcome, TrainOutcome):
            raise _TaskError(f"train() must return a TrainOutcome, got {type(outcome).__name__}", bad)
        n = outcome.num_samples
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
            raise _TaskError(f"TrainOutcome.num_samples must be an int > 0, got {n!r}", bad)
        if self._dp_sgd_required and DP_EPSILON_METRIC not in (outcome.metrics or {}):
            raise _TaskError(
                f"the site's {SITE_CONFIG_FILE} asks for DP-SGD (`dp_sgd.enabled`) but this round reports no "
                f"`{DP_EPSILON_METRIC}`: the update is withheld (privacy fails closed)",
                bad,
            )
        try:
            state = check_state(outcome.shared_state, self._keys, what=f"trained shared state ({where})")
            metrics = _check_metrics(outcome.metrics, f"TrainOutcome.metrics ({where})")
            extra = _check_extra(outcome.extra, where)
        except ValueError as e:
            raise _TaskError(str(e), bad) from e
        return state, metrics, extra

    def _save(self, shared_state: State, round_num: int) -> None:
        assert self._private_root is not None
        replace_dir(self._private_root / _PRIVATE_SUBDIR, self.learner.save_private)
        save_state(self._private_root / _LOCAL_MODEL_FILE, shared_state, metadata={"round": str(round_num)})
        progress = {"site": self._site, "last_round": round_num}
        (self._private_root / _PROGRESS_FILE).write_text(json.dumps(progress), encoding="utf-8")

    def _has_trained(self) -> bool:
        """Whether this site has a private part of its own (it trained in this run or a resumed one)."""
        return self._role == "train" and (self._private_root / _PRIVATE_SUBDIR).is_dir()

    def _read_progress(self) -> dict[str, Any]:
        path = self._private_root / _PROGRESS_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def _validate(self, shareable: Shareable, fl_ctx: FLContext, where: str) -> Shareable:
        owner = shareable.get_header(AppConstants.MODEL_OWNER, "?")
        state, _ = self._received_state(shareable, f"{where}, model of {owner}")
        metrics = _check_metrics(
            self.learner.validate(state, personalized=False, split=self._test_split), f"validate() ({where})"
        )
        if self.personalized and self._has_trained():
            personalized = _check_metrics(
                self.learner.validate(state, personalized=True, split=self._test_split), f"validate() ({where})"
            )
            metrics |= {f"{PERSONALIZED_PREFIX}{k}": v for k, v in personalized.items()}
        self.log_info(fl_ctx, f"{where}: model of {owner} on {self._test_split}: {_fmt(metrics)}")
        return DXO(data_kind=DataKind.METRICS, data=metrics).to_shareable()

    def _statistics(self, shareable: Shareable, fl_ctx: FLContext, where: str) -> Shareable:
        hook = getattr(self.learner, "round_statistics", None)
        if not callable(hook):
            raise _TaskError(f"{self.learner_path} has no `round_statistics` (no statistics round)",
                             ReturnCode.TASK_UNSUPPORTED)  # fmt: skip
        state, _ = self._received_state(shareable, f"{where}, final global model")
        statistics = check_statistics(hook(state), what=f"round_statistics() ({where})")
        nbytes = sum(v.nbytes for v in statistics.values())
        self.log_info(fl_ctx, f"{where}: sending statistics of the final global model ({nbytes} bytes)")
        return DXO(data_kind=DataKind.STATISTICS, data=statistics).to_shareable()

    def _submit_model(self, fl_ctx: FLContext, where: str) -> Shareable:
        path = self._private_root / _LOCAL_MODEL_FILE
        if not path.is_file():
            message = f"{where}: no local model ({path} missing: not trained, or an evaluation-only site)"
            self.log_warning(fl_ctx, message)
            return _error_reply(ReturnCode.EMPTY_RESULT, message)
        state, meta = load_state(path)
        state = check_state(state, self._keys, what=f"local model {path}")
        self.log_info(fl_ctx, f"{where}: submitting local model of round {meta.get('round', '?')}")
        return DXO(data_kind=DataKind.WEIGHTS, data=state).to_shareable()


def _job_participants(fl_ctx: FLContext, site: str) -> list[str]:
    """Names of the job's clients (FLARE gives each client the list at START_RUN: ``engine.get_clients()``).

    ``[site]`` when the engine gives none, so that a ``sites`` section for another name is refused, never ignored.
    """
    get_clients = getattr(fl_ctx.get_engine(), "get_clients", None)
    clients = get_clients() if callable(get_clients) else None
    names = sorted({c.name for c in clients or [] if getattr(c, "name", None)})
    return names or [site]


def _error_reply(rc: str, message: str) -> Shareable:
    """A reply with return code ``rc`` that tells the server why (header :attr:`FedHeaderKey.ERROR`, at most 1,000
    characters: the exception's message, never data)."""
    reply = make_reply(rc)
    reply.set_header(FedHeaderKey.ERROR, message[:1000])
    return reply


def _check_metrics(metrics: Any, what: str) -> dict[str, float]:
    if not isinstance(metrics, dict):
        raise ValueError(f"{what} must return a dict of floats, got {type(metrics).__name__}")
    out = {}
    for k, v in metrics.items():
        if not isinstance(k, str) or not isinstance(v, (int, float, np.floating, np.integer)) or isinstance(v, bool):
            raise ValueError(f"{what}: metric {k!r} must be a str -> float, got {v!r}")
        if not math.isfinite(float(v)):
            raise ValueError(f"{what}: metric {k!r} is not finite ({v})")
        out[k] = float(v)
    return out


def _check_extra(extra: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(extra, dict):
        raise ValueError(f"TrainOutcome.extra must be a dict of arrays, got {type(extra).__name__}")
    for k, v in extra.items():
        if not (isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim == 2):
            desc = f"{v.dtype} {v.shape}" if isinstance(v, np.ndarray) else type(v).__name__
            raise ValueError(f"TrainOutcome.extra[{k!r}] must be a float32 (K, D) array ({where}), got {desc}")
        if not np.isfinite(v).all():
            raise ValueError(f"TrainOutcome.extra[{k!r}] has non-finite values ({where})")
    return dict(extra)


def _is_peer_extra(x: Any) -> bool:
    return isinstance(x, dict) and all(
        isinstance(by_site, dict)
        and all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 2 for a in by_site.values())
        for by_site in x.values()
    )


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())) or "(no metrics)"

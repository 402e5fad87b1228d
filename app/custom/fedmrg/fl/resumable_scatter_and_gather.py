"""ScatterAndGather that continues a restarted run at the round after the last persisted global model, and sends
``train`` only to the sites that train.

Resume. FLARE 2.9 offers two partial mechanisms: ``start_round`` (a fixed first round written in the job) and server
snapshots (``snapshot_every_n_rounds`` + ``get_persist_state``/``restore``), which restore a controller inside the
*same* job after a server restart in a provisioned deployment. Neither lets a re-submitted job (or a re-run of the
simulator, which wipes its workspace) continue where the last one stopped. This subclass asks the persistor: when
it implements ``get_resume_round(fl_ctx) -> int | None`` (as
:class:`~fedmrg.fl.shared_state_persistor.SharedStatePersistor` does) and resumed a saved global model, training
continues at that round and ends at ``start_round + num_rounds`` as configured (so ``num_rounds`` stays the total).
A state restored from a FLARE snapshot takes precedence.

Evaluation-only sites. ScatterAndGather broadcasts ``train`` (the whole global model) to every connected client. A
site that only evaluates (``"role": "evaluate"``, e.g. the benchmark's unseen hospital) would download it every round
just to decline it. Such sites are left out of the ``train`` broadcast when they are named in ``evaluation_sites``,
and from the round after they first decline (their reply carries the header ``FedHeaderKey.ROLE``); they still get
the cross-site ``validate`` / ``submit_model`` tasks.

Honest aggregation. A round is aggregated only when at least ``min_clients`` *valid* updates arrived: a reply with
an error return code (missing data, a raised exception, a site refusing for its privacy budget), an update the
aggregator rejects (NaN/Inf, wrong keys) and a site that sent nothing do not count. A failed or rejected reply does
not close the round early either: the broadcast keeps waiting for the sites that have not answered. When a round
ends with fewer valid updates, the global model is left unchanged and the round is re-run up to ``round_retries``
times; after that the job stops with an error naming every site and why (no result / error / rejected / timeout).
``min_clients: 1`` is the only way to let one site's update become the global model. Every round's participation
(targets, valid sites, failed sites with reasons, missing sites) is published as the ``ROUND_PARTICIPATION`` event
for :class:`~fedmrg.fl.run_summary.RunSummary`.

Statistics round. When the persistor's learner asks for it (:mod:`fedmrg.fl.statistics_round`; FedMRG with
``training.head_calibration: lda``), the last round is followed by one ``statistics`` task with the final global
model to every training site; the server sums the sites' statistics, the learner's ``finish_state`` makes the final
global model (FedMRG: the diagnosis head refitted), and the persistor saves it before cross-site evaluation. Every
training site must answer: a failed, withheld (site-level DP) or missing reply stops the job with the reasons, and the
last round's model stays saved. A restarted job whose rounds are all done runs the statistics round again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from nvflare.apis.controller_spec import ClientTask, Task, TaskCompletionStatus
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import ModelLearnableKey, make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather
from nvflare.security.logging import secure_format_exception

from fedmrg.fl.checks import check_int
from fedmrg.fl.constants import FedHeaderKey
from fedmrg.fl.learner import check_state
from fedmrg.fl.statistics_round import STATISTICS_TASK, check_statistics, needs_statistics_round, sum_statistics

#: server-local event fired after every train broadcast (each attempt of a round); the record is the
#: ``PARTICIPATION_PROP`` prop: ``{"round", "attempt", "targets", "valid", "failed": {site: reason}, "missing":
#: {site: reason}, "min_clients", "aggregated"}`` (``aggregated`` False when the round had too few valid updates).
ROUND_PARTICIPATION = "fedmrg.round_participation"
PARTICIPATION_PROP = "fedmrg.round_participation_record"


class TooFewValidUpdates(RuntimeError):
    """A round ended with fewer than ``min_clients`` valid updates after its retries: the job stops."""


class ResumableScatterAndGather(ScatterAndGather):
    def __init__(
        self,
        min_clients: int = 1000,
        num_rounds: int = 5,
        start_round: int = 0,
        wait_time_after_min_received: int = 10,
        aggregator_id: str = AppConstants.DEFAULT_AGGREGATOR_ID,
        persistor_id: str = "",
        shareable_generator_id: str = AppConstants.DEFAULT_SHAREABLE_GENERATOR_ID,
        train_task_name: str = AppConstants.TASK_TRAIN,
        train_timeout: int = 0,
        ignore_result_error: bool | None = None,
        allow_empty_global_weights: bool = False,
        task_check_period: float = 0.5,
        persist_every_n_rounds: int = 1,
        snapshot_every_n_rounds: int = 1,
        memory_gc_rounds: int = 1,
        enable_tensor_disk_offload: bool = False,
        evaluation_sites: Sequence[str] | None = None,
        round_retries: int = 0,
    ):
        """The arguments of :class:`~nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather` (spelled out:
        FLARE's job exporter reads a component's arguments from its ``__init__`` signature), plus:

        Args:
            evaluation_sites: sites never sent ``train`` (evaluation-only hospitals known in advance; None: none). Sites that
                decline ``train`` with ``FedHeaderKey.ROLE`` are added at run time.
            round_retries: how many times a round that ended with fewer than ``min_clients`` valid updates is re-run
                (same global model, aggregator reset) before the job stops. Defaults to 0: the job stops at once.
        """
        super().__init__(
            min_clients=min_clients,
            num_rounds=num_rounds,
            start_round=start_round,
            wait_time_after_min_received=wait_time_after_min_received,
            aggregator_id=aggregator_id,
            persistor_id=persistor_id,
            shareable_generator_id=shareable_generator_id,
            train_task_name=train_task_name,
            train_timeout=train_timeout,
            ignore_result_error=ignore_result_error,
            allow_empty_global_weights=allow_empty_global_weights,
            task_check_period=task_check_period,
            persist_every_n_rounds=persist_every_n_rounds,
            snapshot_every_n_rounds=snapshot_every_n_rounds,
            memory_gc_rounds=memory_gc_rounds,
            enable_tensor_disk_offload=enable_tensor_disk_offload,
        )
        sites = evaluation_sites if evaluation_sites is not None else []
        if isinstance(sites, str) or not all(isinstance(s, str) for s in sites):
            raise TypeError(f"`evaluation_sites` must be a list of site names, got {evaluation_sites!r}")
        self.evaluation_sites = evaluation_sites  # as configured (FLARE's job exporter reads it back)
        self._evaluation_sites: set[str] = set(sites)  # plus the sites learned from their declines
        check_int("round_retries", round_retries, minimum=0)
        self.round_retries = round_retries
        self._valid: set[str] = set()  # sites whose update the aggregator accepted in the running attempt
        self._failed: dict[str, str] = {}  # site -> why its reply does not count

    def start_controller(self, fl_ctx: FLContext) -> None:
        super().start_controller(fl_ctx)
        get_resume_round = getattr(self.persistor, "get_resume_round", None)
        if not callable(get_resume_round):
            return
        resume_round = get_resume_round(fl_ctx)
        if resume_round is None:
            return
        end = self._start_round + self._num_rounds
        if self._current_round is not None:
            self.log_info(fl_ctx, f"round {self._current_round} restored from a FLARE snapshot; persistor ignored")
            return
        if resume_round >= end:
            self.log_info(fl_ctx, f"resumed model is from round {resume_round - 1}; all {end} rounds are done")
        elif resume_round < self._start_round:
            self.log_warning(
                fl_ctx, f"resumed model is from round {resume_round - 1}, before start_round {self._start_round}"
            )
            return
        else:
            self.log_info(fl_ctx, f"resuming training at round {resume_round} (rounds {resume_round}..{end - 1})")
        self._current_round = resume_round

    # -- statistics round ---------------------------------------------------------------------------------------
    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        super().control_flow(abort_signal, fl_ctx)
        if self._phase != AppConstants.PHASE_FINISHED or abort_signal.triggered:
            return  # stopped, aborted or failed (ScatterAndGather has called system_panic)
        learner = self.server_learner(fl_ctx)
        if learner is None or not needs_statistics_round(learner):
            return
        try:
            self.run_statistics_round(learner, abort_signal, fl_ctx)
        except Exception as e:
            self.system_panic(f"statistics round: {secure_format_exception(e)}", fl_ctx)

    def server_learner(self, fl_ctx: FLContext) -> Any:
        """The persistor's learner (:class:`~fedmrg.fl.shared_state_persistor.SharedStatePersistor`), or None."""
        get = getattr(self.persistor, "server_learner", None)
        return get(fl_ctx) if callable(get) else None

    def run_statistics_round(self, learner: Any, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """Send the final global model to every training site, sum their statistics, save the learner's final
        model. RuntimeError naming every site that did not send valid statistics."""
        state = dict(self._global_weights[ModelLearnableKey.WEIGHTS])
        targets = self.training_sites()
        if not targets:
            raise RuntimeError("no training site is connected")
        received: dict[str, dict[str, Any]] = {}
        failed: dict[str, str] = {}

        def on_result(client_task: ClientTask, fl_ctx: FLContext) -> None:
            site, result = client_task.client.name, client_task.result
            client_task.result = None
            rc = result.get_return_code(ReturnCode.OK) if result is not None else ReturnCode.EMPTY_RESULT
            if rc != ReturnCode.OK:
                message = result.get_header(FedHeaderKey.ERROR, "") if result is not None else ""
                failed[site] = f"error {rc}" + (f": {message}" if message else "")
                return
            try:
                dxo = from_shareable(result)
                if dxo.data_kind != DataKind.STATISTICS:
                    raise ValueError(f"expected a STATISTICS DXO, got {dxo.data_kind}")
                received[site] = check_statistics(dxo.data, what=site)
            except Exception as e:
                failed[site] = f"invalid statistics: {secure_format_exception(e)}"

        self.log_info(fl_ctx, f"statistics round: final global model to {targets}")
        task = Task(name=STATISTICS_TASK, data=DXO(DataKind.WEIGHTS, data=state).to_shareable(),
                    timeout=self._train_timeout, result_received_cb=on_result)  # fmt: skip
        task.data.set_header(AppConstants.CURRENT_ROUND, self._current_round)
        super().broadcast_and_wait(task, fl_ctx, targets, len(targets), 0, abort_signal)
        if abort_signal.triggered:
            return
        missing = [s for s in targets if s not in received and s not in failed]
        if failed or missing:
            why = "; ".join([f"{s}: {r}" for s, r in failed.items()] + [f"{s}: no reply" for s in missing])
            raise RuntimeError(f"not every training site sent statistics ({why}); the job stops and the last "
                               "round's global model stays saved, without the statistics round")  # fmt: skip
        summed = sum_statistics(received)
        final = check_state(learner.finish_state(state, summed), sorted(state), what="finish_state()")
        changed = sorted(k for k in final if not np.array_equal(final[k], state[k]))
        self._global_weights = make_model_learnable(final, dict(self._global_weights.get(ModelLearnableKey.META) or {}))
        fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, self._global_weights, private=True, sticky=True)
        fl_ctx.set_prop(AppConstants.CURRENT_ROUND, self._current_round - 1, private=True, sticky=True)
        if self.persistor:
            self.persistor.save(self._global_weights, fl_ctx)  # as the last round's model: a resume redoes only this
        nbytes = sum(v.nbytes for stats in received.values() for v in stats.values())
        self.log_info(fl_ctx, f"statistics round: {len(received)} sites, {nbytes} bytes of statistics; final global "
                              f"model saved ({len(changed)} keys changed: {changed[:4]})")  # fmt: skip

    # -- evaluation-only sites ----------------------------------------------------------------------------------
    def training_sites(self) -> list[str]:
        """Connected clients that are sent ``train``: all but the evaluation-only sites, sorted."""
        return sorted(c.name for c in self._engine.get_clients() if c.name not in self._evaluation_sites)

    def broadcast_and_wait(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets=None,
        min_responses: int = 1,
        wait_time_after_min_received: int = 0,
        abort_signal: Signal | None = None,
    ):
        if task.name != self.train_task_name or targets is not None:
            return super().broadcast_and_wait(
                task, fl_ctx, targets, min_responses, wait_time_after_min_received, abort_signal
            )
        # ScatterAndGather.control_flow's train broadcast: honest aggregation, with retries
        for attempt in range(self.round_retries + 1):
            if attempt:
                self.aggregator.reset(fl_ctx)
                task = self._fresh_task(task)
            targets = self.training_sites()
            if not targets:  # an empty target list would mean "any client" to FLARE
                raise RuntimeError(
                    f"round {self._current_round}: no site to train: every connected site is evaluation-only "
                    f"({sorted(self._evaluation_sites)})"
                )
            skipped = sorted(self._evaluation_sites & {c.name for c in self._engine.get_clients()})
            if skipped:
                self.log_info(
                    fl_ctx, f"round {self._current_round}: train sent to {targets}; evaluation-only: {skipped}"
                )
            self._current_num_targets = len(targets)
            self._valid, self._failed = set(), {}
            super().broadcast_and_wait(
                task, fl_ctx, targets, min(min_responses, len(targets)), wait_time_after_min_received, abort_signal
            )
            if abort_signal is not None and abort_signal.triggered:
                return None
            if self.check_valid_updates(sorted(self._valid), task, fl_ctx, attempt):
                return None
            if attempt < self.round_retries:
                self.log_warning(fl_ctx, f"round {self._current_round}: re-running the round (retry {attempt + 1} "
                                         f"of {self.round_retries}) with the same global model")  # fmt: skip
        first = self._current_round == self._start_round
        kept = "the initial global model" if first else f"the global model of round {self._current_round - 1}"
        raise TooFewValidUpdates(
            f"round {self._current_round}: fewer than min_clients={self._min_clients} valid updates after "
            f"{self.round_retries} retr{'y' if self.round_retries == 1 else 'ies'}; the job stops and {kept} stays "
            "(raise `round_retries` or fix the sites named above)"
        )

    def check_valid_updates(self, valid: list[str], task: Task, fl_ctx: FLContext, attempt: int = 0) -> bool:
        """Publish the round's participation; True when at least ``min_clients`` of ``task``'s targets sent a valid
        update (``valid``). Otherwise log an error naming every site and why, and return False."""
        targets = sorted(task.targets or [])
        failed = {s: self._failed[s] for s in targets if s in self._failed and s not in valid}
        answered = {ct.client.name for ct in task.client_tasks if ct.result_received_time is not None}
        why = (
            "timeout" if task.completion_status == TaskCompletionStatus.TIMEOUT else "no result before the round closed"
        )
        missing = {s: why for s in targets if s not in valid and s not in failed and s not in answered}
        ok = len(valid) >= self._min_clients
        record: dict[str, Any] = {
            "round": self._current_round, "attempt": attempt, "targets": targets, "valid": list(valid),
            "failed": failed, "missing": missing, "min_clients": self._min_clients, "aggregated": ok,
        }  # fmt: skip
        fl_ctx.set_prop(PARTICIPATION_PROP, record, private=True, sticky=False)
        self.fire_event(ROUND_PARTICIPATION, fl_ctx)
        absent = "; ".join(f"{s}: {r}" for s, r in {**failed, **missing}.items())
        if ok:
            if absent:
                self.log_warning(fl_ctx, f"round {self._current_round}: aggregating {len(valid)}/{len(targets)} "
                                         f"sites {valid}; without {absent}")  # fmt: skip
            return True
        self.log_error(
            fl_ctx,
            f"round {self._current_round}: NOT aggregated: {len(valid)} valid update(s) {valid}, fewer than "
            f"min_clients={self._min_clients}; {absent or 'no other site'}; the global model stays unchanged",
        )
        return False

    @staticmethod
    def _fresh_task(task: Task) -> Task:
        """A new train task with the same data and callbacks (a finished Task cannot be broadcast again)."""
        return Task(
            name=task.name,
            data=task.data,
            props={},
            timeout=task.timeout,
            before_task_sent_cb=task.before_task_sent_cb,
            result_received_cb=task.result_received_cb,
        )

    def _process_train_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        site = client_task.client.name
        result = client_task.result
        role = result.get_header(FedHeaderKey.ROLE) if result is not None else None
        if role == "evaluate" and site not in self._evaluation_sites:
            self._evaluation_sites.add(site)
            self._discount_response(client_task.task, fl_ctx)
            self.log_info(fl_ctx, f"site {site} is evaluation-only (declined train); it is sent "
                                  "no more train tasks in this run")  # fmt: skip
            client_task.result = None
            return
        accepted = self._accept_train_result(client_name=site, result=result, fl_ctx=fl_ctx)
        client_task.result = None
        if accepted:
            self._valid.add(site)
            return
        if site not in self._failed:
            reason = getattr(self.aggregator, "rejections", {}).get(site)
            self._failed[site] = reason or "update rejected by the aggregator (see its log line)"
        self._discount_response(client_task.task, fl_ctx)  # an invalid reply must not close the round early
        self._cancel_if_unreachable(client_task.task, fl_ctx)

    def _accept_train_result(self, client_name: str, result, fl_ctx: FLContext, is_unknown_task: bool = False) -> bool:
        rc = result.get_return_code(ReturnCode.OK) if result is not None else ReturnCode.EMPTY_RESULT
        if rc != ReturnCode.OK and not is_unknown_task and self.ignore_result_error is not False:
            # not a panic (FLARE's dynamic mode): whether the round has enough valid updates is decided after it
            message = result.get_header(FedHeaderKey.ERROR, "") if result is not None else ""
            self._failed[client_name] = f"error {rc}" + (f": {message}" if message else "")
            self.log_warning(fl_ctx, f"round {self._current_round}: site {client_name} replied {rc}; its result does "
                                     "not count towards min_clients")  # fmt: skip
            return False
        return super()._accept_train_result(client_name, result, fl_ctx, is_unknown_task)

    def _cancel_if_unreachable(self, task: Task, fl_ctx: FLContext) -> None:
        """End the broadcast as soon as ``min_clients`` valid updates can no longer arrive (no need to wait for the
        remaining sites, or forever for a site that is gone when ``train_timeout`` is 0)."""
        answered = {ct.client.name for ct in task.client_tasks if ct.result_received_time is not None}
        pending = [s for s in (task.targets or []) if s not in answered]
        if len(self._valid) + len(pending) < self._min_clients:
            self.log_error(fl_ctx, f"round {self._current_round}: min_clients={self._min_clients} valid updates can "
                                   f"no longer arrive (valid: {sorted(self._valid)}, pending: {pending})")  # fmt: skip
            self.cancel_task(task, fl_ctx=fl_ctx)

    def _discount_response(self, task: Task, fl_ctx: FLContext) -> None:
        """A decline must not count towards ``min_clients`` (the round would close before the training sites answer):
        raise the running broadcast's minimum by one, up to its number of targets. FLARE keeps that minimum in a
        private task prop of its broadcast manager; no public API changes it once the task runs."""
        from nvflare.apis.impl import bcast_manager

        key = getattr(bcast_manager, "_KEY_MIN_RESPS", None)
        if key is None or key not in task.props:
            self.log_warning(fl_ctx, "cannot raise the broadcast's min_responses (FLARE internals changed); this "
                                     "round's decline counts towards min_clients")  # fmt: skip
            return
        task.props[key] = min(task.props[key] + 1, len(task.targets)) if task.targets else task.props[key] + 1

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
"""

from __future__ import annotations

from collections.abc import Sequence

from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather

from fedmrg.fl.constants import FedHeaderKey


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
    ):
        """The arguments of :class:`~nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather` (spelled out:
        FLARE's job exporter reads a component's arguments from its ``__init__`` signature), plus:

        Args:
            evaluation_sites: sites never sent ``train`` (evaluation-only hospitals known in advance; None: none). Sites that
                decline ``train`` with ``FedHeaderKey.ROLE`` are added at run time.
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
        if task.name == self.train_task_name and targets is None:  # ScatterAndGather.control_flow's train broadcast
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
            min_responses = min(min_responses, len(targets))
        return super().broadcast_and_wait(
            task, fl_ctx, targets, min_responses, wait_time_after_min_received, abort_signal
        )

    def _process_train_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        role = client_task.result.get_header(FedHeaderKey.ROLE) if client_task.result is not None else None
        if role == "evaluate" and client_task.client.name not in self._evaluation_sites:
            self._evaluation_sites.add(client_task.client.name)
            self._discount_response(client_task.task, fl_ctx)
            self.log_info(fl_ctx, f"site {client_task.client.name} is evaluation-only (declined train); it is sent "
                                  "no more train tasks in this run")  # fmt: skip
        super()._process_train_result(client_task, fl_ctx)

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

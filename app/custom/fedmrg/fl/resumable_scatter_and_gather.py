"""ScatterAndGather that continues a restarted run at the round after the last persisted global model.

FLARE 2.9 offers two partial mechanisms: ``start_round`` (a fixed first round written in the job) and server
snapshots (``snapshot_every_n_rounds`` + ``get_persist_state``/``restore``), which restore a controller inside the
*same* job after a server restart in a provisioned deployment. Neither lets a re-submitted job (or a re-run of the
simulator, which wipes its workspace) continue where the last one stopped. This subclass asks the persistor: when
it implements ``get_resume_round(fl_ctx) -> int | None`` (as
:class:`~fedmrg.fl.shared_state_persistor.SharedStatePersistor` does) and resumed a saved global model, training
continues at that round and ends at ``start_round + num_rounds`` as configured (so ``num_rounds`` stays the total).
A state restored from a FLARE snapshot takes precedence.
"""

from __future__ import annotations

from nvflare.apis.fl_context import FLContext
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather


class ResumableScatterAndGather(ScatterAndGather):
    """Same arguments as :class:`~nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather`."""

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

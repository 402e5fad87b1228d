"""Client-side executor of the secure-aggregation stages: ``secagg_advertise``, ``secagg_share``, ``secagg_unmask``.

The masking of the ``train`` result itself is done by :class:`~.mask_filter.SecureAggregationMaskFilter`. Between
tasks the round's ephemeral secrets (X25519 private keys, self-mask seed, own Shamir shares) live in one file,
``<run app dir>/fedmrg_secagg/round_<r>.json``, mode 0600: the simulator recreates client processes between tasks
when ``-t`` < ``-n``, so in-process memory is not enough. The file is deleted after the unmask step (or when the
round fails at this site) and stale files of earlier rounds are deleted at the next advertisement; deletion unlinks
the file (it is not overwritten on disk).

A refused stage (a forged, substituted or replayed key, a bad request) is logged with the reason and answered with
``EXECUTION_EXCEPTION`` and the reason under ``SecAggKey.ERROR``, so the server's error names the site and the cause.
"""

from __future__ import annotations

from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.security.logging import secure_format_exception

from fedmrg.fl.checks import check_choice
from fedmrg.privacy.secure_aggregation.constants import SecAggKey, SecAggTask, SecureAggregationError
from fedmrg.privacy.secure_aggregation.identity import (
    MODES,
    SIM_PKI_DIR,
    load_ca,
    load_provisioned_identity,
    resolve_mode,
    simulated_ca,
    simulated_identity,
)
from fedmrg.privacy.secure_aggregation.protocol import Advertisement, ClientRound, Params

STATE_SUBDIR = "fedmrg_secagg"


def round_state_file(fl_ctx: FLContext, round_num: int) -> Path:
    """Where a site keeps round ``round_num``'s secrets: ``<run app dir>/fedmrg_secagg/round_<r>.json``."""
    workspace = fl_ctx.get_engine().get_workspace()
    folder = Path(workspace.get_app_dir(fl_ctx.get_job_id())) / STATE_SUBDIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder / f"round_{round_num}.json"


class SecureAggregationExecutor(Executor):
    def __init__(self, identity: str = "auto"):
        """Answers the key-advertisement, share and unmask tasks of secure aggregation.

        Args:
            identity: ``"provisioned"`` (sign with the startup kit's ``client.key``, verify against ``rootCA.pem``),
                ``"simulated"`` (a run-local CA in the simulator workspace) or ``"auto"`` (default: provisioned
                when the startup kit has ``client.key`` and ``rootCA.pem``).
        """
        super().__init__()
        check_choice("identity", identity, MODES)
        self.identity = identity
        self._site = "?"
        self._id = None
        self._ca = None
        self._setup_error = ""

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)

    def _start(self, fl_ctx: FLContext) -> None:
        self._site = fl_ctx.get_identity_name()
        try:
            workspace = fl_ctx.get_engine().get_workspace()
            startup = Path(workspace.get_startup_kit_dir())
            mode = resolve_mode(self.identity, startup)
            if mode == "provisioned":
                self._id, self._ca = load_provisioned_identity(startup, self._site), load_ca(startup / "rootCA.pem")
            else:
                pki = Path(workspace.get_root_dir()).resolve().parent / SIM_PKI_DIR
                self._id, (self._ca, _) = simulated_identity(pki, self._site), simulated_ca(pki)
                self.log_warning(fl_ctx, f"site {self._site}: SIMULATED identities ({pki}); not for deployments")
            self.log_info(fl_ctx, f"site {self._site}: secure aggregation identity {self._id.source}")
        except Exception as e:
            self._setup_error = (
                f"site {self._site}: secure-aggregation identity unavailable: {secure_format_exception(e)}"
            )
            self.log_exception(fl_ctx, self._setup_error)

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        round_num = shareable.get(SecAggKey.ROUND)
        where = f"site {self._site}, task {task_name!r}, round {round_num}"
        try:
            if self._setup_error:
                raise SecureAggregationError(self._setup_error)
            if not isinstance(round_num, int) or not isinstance(shareable.get(SecAggKey.SESSION), bytes):
                raise SecureAggregationError(f"{where}: the request lacks an int round or a session")
            if task_name == SecAggTask.ADVERTISE:
                return self._advertise(shareable, round_num, fl_ctx)
            if task_name == SecAggTask.SHARE:
                return self._share(shareable, round_num, fl_ctx)
            if task_name == SecAggTask.UNMASK:
                return self._unmask(shareable, round_num, fl_ctx)
            self.log_error(fl_ctx, f"{where}: unknown task")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        except (SecureAggregationError, ValueError, TypeError, KeyError) as e:
            reason = secure_format_exception(e)
            self.log_error(fl_ctx, f"{where}: REFUSED: {reason}")
            if isinstance(round_num, int) and task_name != SecAggTask.ADVERTISE:
                round_state_file(fl_ctx, round_num).unlink(missing_ok=True)  # the round is dead here
            reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
            reply[SecAggKey.ERROR] = reason
            return reply

    def _load(self, fl_ctx: FLContext, shareable: Shareable, round_num: int) -> tuple[ClientRound, Path]:
        path = round_state_file(fl_ctx, round_num)
        if not path.is_file():
            raise SecureAggregationError(f"site {self._site}: no keys of round {round_num} here (not advertised, "
                                         "already unmasked, or the state was lost)")  # fmt: skip
        state = ClientRound.load(path)
        if state.session != shareable[SecAggKey.SESSION] or state.job_id != fl_ctx.get_job_id():
            raise SecureAggregationError(f"site {self._site}: the request is for another session of round {round_num}")
        return state, path

    def _advertise(self, shareable: Shareable, round_num: int, fl_ctx: FLContext) -> Shareable:
        path = round_state_file(fl_ctx, round_num)
        for stale in path.parent.glob("round_*.json"):
            stale.unlink(missing_ok=True)
        params = Params.from_dict(shareable[SecAggKey.PARAMS])
        state = ClientRound.start(self._id, fl_ctx.get_job_id(), round_num, shareable[SecAggKey.SESSION], params)
        state.save(path)
        self.log_info(fl_ctx, f"site {self._site}: round {round_num}: advertised signed X25519 keys")
        reply = make_reply(ReturnCode.OK)
        reply[SecAggKey.ADVERT] = state.advertisement.to_dict()
        return reply

    def _share(self, shareable: Shareable, round_num: int, fl_ctx: FLContext) -> Shareable:
        state, path = self._load(fl_ctx, shareable, round_num)
        raw = shareable[SecAggKey.ADVERTS]
        if not isinstance(raw, dict):
            raise SecureAggregationError("the key bundle is not a dict")
        ads = {site: Advertisement.from_dict(dict(d)) for site, d in raw.items()}
        shares = state.share(ads, self._ca)
        state.save(path)
        self.log_info(fl_ctx, f"site {self._site}: round {round_num}: verified {len(ads)} signed key sets "
                              f"{sorted(ads)}; sent Shamir shares (t={state.params.threshold_for(len(ads))})")  # fmt: skip
        reply = make_reply(ReturnCode.OK)
        reply[SecAggKey.SHARES] = shares
        return reply

    def _unmask(self, shareable: Shareable, round_num: int, fl_ctx: FLContext) -> Shareable:
        state, path = self._load(fl_ctx, shareable, round_num)
        path.unlink()  # answer at most once per round: never reveal both shares of one site
        survivors, dropped = list(shareable[SecAggKey.SURVIVORS]), list(shareable[SecAggKey.DROPPED])
        mine = dict(shareable[SecAggKey.SHARES].get(self._site, {}))
        seeds, keys = state.unmask(survivors, dropped, mine)
        self.log_info(fl_ctx, f"site {self._site}: round {round_num}: revealed self-mask shares of {sorted(seeds)}"
                              f" and mask-key shares of dropped {sorted(keys)}")  # fmt: skip
        reply = make_reply(ReturnCode.OK)
        reply[SecAggKey.SELF_MASK_SHARES] = seeds
        reply[SecAggKey.KEY_SHARES] = keys
        return reply

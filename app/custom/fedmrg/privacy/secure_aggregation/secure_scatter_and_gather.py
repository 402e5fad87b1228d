"""ScatterAndGather with secure aggregation: per round, key advertisement and share exchange before ``train``, and
an unmask step after it, around an unchanged FedAvg loop (persist, resume, events, snapshots as in the parent).

Each round (see :mod:`~fedmrg.privacy.secure_aggregation.protocol` for the cryptography):

1. ``secagg_advertise`` to every connected training site (not the evaluation-only ones; waiting as ``train`` does: ``min_clients`` answers, then
   ``wait_time_after_min_received``); the sites that answer with a valid signed advertisement are the round's
   participants. Every advertisement is verified here too (sites verify again: they do not trust the server);
2. ``secagg_share`` to the participants with all advertisements; every participant must answer;
3. ``train`` to the participants only; the :class:`~.secure_aggregator.SecureAggregator` sums the masked uploads;
4. ``secagg_unmask`` to the survivors (participants whose upload was summed); the survivors' self-mask seeds and the
   dropped sites' mask keys are reconstructed from ``t`` shares and checked, and the aggregator decodes.

Honest aggregation as in the parent: a round whose train step leaves fewer than ``min_clients`` summed masked
updates is not unmasked (the global model stays); it is re-run, with a new key exchange, up to ``round_retries``
times, then the job stops.

Fail closed: a forged, substituted or replayed key, fewer than ``max(min_sites, min_clients)`` participants, a participant that does not
share, fewer than ``t`` survivors or unmask answers, or a secret that does not reconstruct, raises
:class:`~.constants.SecureAggregationError` naming the site(s); ScatterAndGather then logs it and panics, and no model
is produced for the round (the last persisted global model stays).
"""

from __future__ import annotations

import os
from pathlib import Path

from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.security.logging import secure_format_exception

from fedmrg.fl.checks import check_choice, check_int
from fedmrg.fl.resumable_scatter_and_gather import ResumableScatterAndGather
from fedmrg.fl.statistics_round import needs_statistics_round
from fedmrg.privacy.secure_aggregation import crypto
from fedmrg.privacy.secure_aggregation.constants import SecAggKey, SecAggTask, SecureAggregationError
from fedmrg.privacy.secure_aggregation.identity import MODES, SIM_PKI_DIR, load_ca, resolve_mode, simulated_ca
from fedmrg.privacy.secure_aggregation.protocol import Advertisement, Params, reconstruct, verify_advertisement
from fedmrg.privacy.secure_aggregation.secure_aggregator import SecureAggregator


class SecureScatterAndGather(ResumableScatterAndGather):
    def __init__(
        self,
        *,
        clip_norm: float = 1.0,
        max_weight: int = 1000,
        threshold: int = 0,
        min_sites: int = 3,
        secagg_timeout: int = 600,
        identity: str = "auto",
        **kwargs,
    ):
        """ScatterAndGather (all its arguments, by name) plus:

        Args:
            clip_norm: L2 norm every site clips its delta to before encoding. Defaults to 1.0.
            max_weight: cap on a site's weight (sample count); FedAvg weights are exact below it. Defaults to 1000.
            threshold: Shamir threshold t (a strict majority of the participants); 0 (default): ``n // 2 + 1``.
            min_sites: fewest participants per round, >= 3. Defaults to 3.
            secagg_timeout: seconds to wait for each key-exchange or unmask step. Defaults to 600.
            identity: how the server finds the CA to verify site keys: ``"provisioned"`` (startup kit's
                ``rootCA.pem``), ``"simulated"`` (the run-local CA) or ``"auto"`` (default).
        """
        super().__init__(**kwargs)
        check_int("secagg_timeout", secagg_timeout, minimum=1)
        check_choice("identity", identity, MODES)
        self.clip_norm = clip_norm
        self.max_weight = max_weight
        self.threshold = threshold
        self.min_sites = min_sites
        self.secagg_timeout = secagg_timeout
        self.identity = identity
        self._params = Params(clip_norm=clip_norm, max_weight=max_weight, threshold=threshold, min_sites=min_sites)
        self._ca = None

    def start_controller(self, fl_ctx: FLContext) -> None:
        super().start_controller(fl_ctx)
        if not isinstance(self.aggregator, SecureAggregator):
            self.system_panic(f"aggregator {self.aggregator_id} must be a SecureAggregator, got "
                              f"{type(self.aggregator).__name__}", fl_ctx)  # fmt: skip
            return
        try:
            learner = self.server_learner(fl_ctx)
        except Exception as e:
            self.system_panic(f"secure aggregation: cannot build the learner: {secure_format_exception(e)}", fl_ctx)
            return
        if learner is not None and needs_statistics_round(learner):  # fail closed: nothing would mask them
            self.system_panic("secure aggregation masks the train updates only; the statistics round after training "
                              "(`training.head_calibration`) would send each site's statistics in the clear: set "
                              "`training.head_calibration: none` with secure aggregation", fl_ctx)  # fmt: skip
            return
        workspace = self._engine.get_workspace()
        startup = Path(workspace.get_startup_kit_dir())
        if resolve_mode(self.identity, startup, key_name="server.key") == "provisioned":
            self._ca = load_ca(startup / "rootCA.pem")
            self.log_info(fl_ctx, f"secure aggregation: verifying site keys against {startup / 'rootCA.pem'}")
        else:
            pki = Path(workspace.get_root_dir()).resolve().parent / SIM_PKI_DIR
            self._ca, _ = simulated_ca(pki)
            self.log_warning(fl_ctx, f"secure aggregation: SIMULATED identities ({pki}); not for deployments")

    # -- the train broadcast of ScatterAndGather.control_flow, wrapped ----------------------------------------------
    def broadcast_and_wait(
        self,
        task: Task,
        fl_ctx: FLContext,
        targets=None,
        min_responses: int = 1,
        wait_time_after_min_received: int = 0,
        abort_signal: Signal | None = None,
    ):
        if task.name != self.train_task_name:
            return super().broadcast_and_wait(
                task, fl_ctx, targets, min_responses, wait_time_after_min_received, abort_signal
            )
        for attempt in range(self.round_retries + 1):
            if attempt:
                self.log_warning(fl_ctx, f"round {self._current_round}: re-running the round (retry {attempt} of "
                                         f"{self.round_retries}) with a new key exchange")  # fmt: skip
                task = self._fresh_task(task)
            if self._secure_round(task, fl_ctx, min_responses, wait_time_after_min_received, abort_signal, attempt):
                return None
            if abort_signal is not None and abort_signal.triggered:
                return None
        raise SecureAggregationError(
            f"round {self._current_round}: fewer than min_clients={self._min_clients} valid masked updates after "
            f"{self.round_retries} retries; the job stops and no model is produced for the round"
        )

    def _secure_round(self, task: Task, fl_ctx, min_responses: int, wait: int, abort_signal, attempt: int) -> bool:
        """One attempt of a round; True when it produced the unmasked aggregate, False when fewer than
        ``min_clients`` masked updates were summed (nothing is unmasked then) or the run was aborted."""
        r = self._current_round
        session = os.urandom(16)
        ads = self._advertise(r, session, fl_ctx, abort_signal)
        if abort_signal is not None and abort_signal.triggered:
            return False
        participants = sorted(ads)
        shares = self._share(r, session, ads, fl_ctx, abort_signal)
        if abort_signal is not None and abort_signal.triggered:
            return False

        self.aggregator.begin_round(r, session, ads, self._params, fl_ctx.get_job_id())
        self.aggregator.rejections = {}
        self._current_num_targets = len(participants)
        self._valid, self._failed = set(), {}
        self.log_info(fl_ctx, f"round {r}: secure aggregation with {participants}, "
                              f"{self.aggregator.fraction_bits} fraction bits")  # fmt: skip
        super().broadcast_and_wait(
            task, fl_ctx, participants, min(min_responses, len(participants)), wait, abort_signal
        )  # fmt: skip
        if abort_signal is not None and abort_signal.triggered:
            return False

        survivors = self.aggregator.close()
        if not self.check_valid_updates(survivors, task, fl_ctx, attempt):
            return False  # the masked sum is never unmasked: the global model stays
        dropped = [s for s in participants if s not in survivors]
        t = self._params.threshold_for(len(participants))
        if len(survivors) < t:
            raise SecureAggregationError(
                f"round {r}: only {len(survivors)} of {len(participants)} sites uploaded a masked update (dropped: "
                f"{dropped}), fewer than the Shamir threshold {t}; the round fails closed, no model is produced"
            )
        if dropped:
            self.log_warning(fl_ctx, f"round {r}: sites {dropped} dropped after the key exchange; recovering their "
                                     "masks from Shamir shares")  # fmt: skip
        seeds, keys = self._unmask(r, session, ads, survivors, dropped, shares, t, fl_ctx, abort_signal)
        self.aggregator.finish(seeds, keys)
        return True

    def _stage(
        self, name: str, data: Shareable, targets: list[str], min_responses: int, wait: int, fl_ctx, abort_signal
    ) -> dict[str, Shareable]:
        results: dict[str, Shareable] = {}

        def received(client_task: ClientTask, fl_ctx: FLContext) -> None:
            results[client_task.client.name] = client_task.result
            client_task.result = None

        task = Task(name=name, data=data, props={}, timeout=self.secagg_timeout, result_received_cb=received)
        super().broadcast_and_wait(task, fl_ctx, targets, min_responses, wait, abort_signal)
        return results

    @staticmethod
    def _refusals(results: dict[str, Shareable], expected: list[str]) -> str:
        out = []
        for site in expected:
            reply = results.get(site)
            if reply is None:
                out.append(f"{site}: no answer")
            elif reply.get_return_code(ReturnCode.OK) != ReturnCode.OK:
                out.append(f"{site}: {reply.get(SecAggKey.ERROR) or reply.get_return_code()}")
        return "; ".join(out)

    def _advertise(self, r: int, session: bytes, fl_ctx, abort_signal) -> dict[str, Advertisement]:
        data = Shareable()
        data[SecAggKey.ROUND], data[SecAggKey.SESSION] = r, session
        data[SecAggKey.PARAMS] = {"clip_norm": self.clip_norm, "max_weight": self.max_weight,
                                  "threshold": self.threshold, "min_sites": self.min_sites}  # fmt: skip
        clients = self.training_sites()  # evaluation-only sites never train, so they take no part in the masking
        results = self._stage(SecAggTask.ADVERTISE, data, clients, min(self._min_clients, len(clients)),
                              self._wait_time_after_min_received, fl_ctx, abort_signal)  # fmt: skip
        ads = {}
        for site, reply in sorted(results.items()):
            if reply.get_return_code(ReturnCode.OK) != ReturnCode.OK:
                self.log_warning(
                    fl_ctx, f"round {r}: site {site} did not advertise keys: {self._refusals(results, [site])}"
                )
                continue
            raw = reply.get(SecAggKey.ADVERT)
            ad = Advertisement.from_dict(dict(raw)) if isinstance(raw, dict) else None
            if ad is None:
                raise SecureAggregationError(f"round {r}: site {site}: malformed advertisement")
            verify_advertisement(ad, site, self._ca, fl_ctx.get_job_id(), r, session)
            ads[site] = ad
        need = max(self._params.min_sites, self._min_clients)
        if len(ads) < need:
            raise SecureAggregationError(f"round {r}: {len(ads)} sites advertised keys ({sorted(ads)}), need {need}")
        self.log_info(fl_ctx, f"round {r}: verified the signed keys of {sorted(ads)}")
        return ads

    def _share(self, r: int, session: bytes, ads, fl_ctx, abort_signal) -> dict[str, dict[str, bytes]]:
        participants = sorted(ads)
        data = Shareable()
        data[SecAggKey.ROUND], data[SecAggKey.SESSION] = r, session
        data[SecAggKey.ADVERTS] = {s: ad.to_dict() for s, ad in ads.items()}
        results = self._stage(SecAggTask.SHARE, data, participants, len(participants), 0, fl_ctx, abort_signal)
        refused = self._refusals(results, participants)
        if refused:
            raise SecureAggregationError(f"round {r}: key exchange failed: {refused}")
        by_recipient: dict[str, dict[str, bytes]] = {s: {} for s in participants}
        for sender in participants:
            sent = results[sender].get(SecAggKey.SHARES)
            if not isinstance(sent, dict) or set(sent) != set(participants) - {sender}:
                raise SecureAggregationError(f"round {r}: site {sender} sent shares for the wrong recipients")
            for recipient, blob in sent.items():
                by_recipient[recipient][sender] = blob
        return by_recipient

    def _unmask(self, r, session, ads, survivors, dropped, shares, t, fl_ctx, abort_signal):
        data = Shareable()
        data[SecAggKey.ROUND], data[SecAggKey.SESSION] = r, session
        data[SecAggKey.SURVIVORS], data[SecAggKey.DROPPED] = survivors, dropped
        data[SecAggKey.SHARES] = {s: shares[s] for s in survivors}  # each readable only by its recipient
        results = self._stage(SecAggTask.UNMASK, data, survivors, len(survivors), 0, fl_ctx, abort_signal)
        ok = {s: rep for s, rep in results.items() if rep.get_return_code(ReturnCode.OK) == ReturnCode.OK}
        if len(ok) < t:
            raise SecureAggregationError(
                f"round {r}: {len(ok)} unmask answers, fewer than the threshold {t} "
                f"({self._refusals(results, survivors)}); the round fails closed, no model is produced"
            )
        seed_shares = {s: dict(rep.get(SecAggKey.SELF_MASK_SHARES) or {}) for s, rep in ok.items()}
        key_shares = {s: dict(rep.get(SecAggKey.KEY_SHARES) or {}) for s, rep in ok.items()}
        salt = crypto.round_salt(fl_ctx.get_job_id(), r, session)
        try:
            return reconstruct(ads, survivors, dropped, seed_shares, key_shares, t, salt)
        except SecureAggregationError as e:
            raise SecureAggregationError(f"round {r}: {e}; the round fails closed, no model is produced") from e

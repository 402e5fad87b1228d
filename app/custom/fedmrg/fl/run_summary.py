"""Server widget that records a run round by round and writes ``summary.json``, ``summary.md`` and ``summary.png``.

It listens to the events of ScatterAndGather, CrossSiteModelEval, IntimeModelSelector and our
:class:`~fedmrg.fl.wire_bytes_meter.WireBytesMeter`, and records per round and site:

- ``train``: the metrics of :class:`~fedmrg.fl.learner.TrainOutcome` (e.g. ``loss``), from the result's DXO meta;
- ``val``: the site's validation of the global model it received at the start of the round (``INITIAL_METRICS``,
  i.e. the model produced by the previous round; whatever keys the learner reports, e.g. ``bleu4``, ``ce_f1``);
- ``num_samples``, ``accepted`` (False when the aggregator rejected the update);
- ``bytes_down`` / ``bytes_up``: serialised bytes of the train task and result, ``param_bytes_*`` the raw array bytes;

and per round the means over accepted sites weighted by ``num_samples`` (privacy metrics excepted: ``dp/*`` and
``site_dp/*`` are never averaged; ``privacy`` lists each site's epsilon, ``None`` for a site without that DP), the totals of bytes, and the round's wall
time in seconds (``ROUND_STARTED`` to ``ROUND_DONE``, aggregation and persistence included). At the end it adds the
best round (IntimeModelSelector), the cross-site evaluation table (``cross_site[data_site][model] = metrics``) and
the bytes of the cross-site tasks. Every result that comes back with an error return code (a site whose data is
missing, whose training raised, whose update was not finite, that refused for its privacy budget, ...) is logged as
an error naming the site, the task and the site's message, and kept in ``errors``.

Participation: from the workflow's ``ROUND_PARTICIPATION`` event
(:class:`~fedmrg.fl.resumable_scatter_and_gather.ResumableScatterAndGather`), each round records ``participation``:
the sites sent ``train``, the ``valid`` ones, ``failed`` and ``missing`` sites with the reason (error message,
rejection, no result, timeout), ``min_clients`` and whether the round was ``aggregated`` (one record per attempt
under ``attempts``). A site the round went on without is listed in ``absent`` (round, site, reason). The cross-site
table names the sites it lacks in ``cross_site_missing`` (data sites that sent no validation, models never
evaluated) instead of leaving them out silently.

Files: ``<server app folder>/<output_dir>/summary.{json,md,png}`` (in the simulator
``<workspace>/server/simulate_job/app_server/summary/``); ``summary.json`` is rewritten after every round, all three
at the end of the run. TensorBoard scalars go to ``<run folder>/<tb_folder>/<site>`` (``train/*``, ``val/*``,
``comm/bytes_up``, ``comm/bytes_down``) and ``<tb_folder>/server`` (means, totals, ``round/seconds``), the layout of
FLARE's ``TBAnalyticsReceiver``, so both can share the folder.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

from nvflare.apis.dxo import DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.security.logging import secure_format_exception
from nvflare.widgets.widget import Widget

from fedmrg.fl.checks import check_str
from fedmrg.fl.constants import FedContextKey, FedEventType, FedHeaderKey, FedMetaKey
from fedmrg.fl.learner import state_nbytes
from fedmrg.fl.resumable_scatter_and_gather import PARTICIPATION_PROP, ROUND_PARTICIPATION

SUMMARY_VERSION = 2
#: train-metric prefixes of the privacy mechanisms (patient-level DP-SGD, site-level DP): reported per site only
PRIVACY_PREFIXES = ("dp/", "site_dp/")
#: the epsilon key of each mechanism
EPSILON_KEYS = ("dp/epsilon", "site_dp/epsilon")


class RunSummary(Widget):
    def __init__(self, output_dir: str = "summary", tb_folder: str = "tb_events"):
        """Writes the run summary.

        Args:
            output_dir: folder of the summary files, relative to the server's app folder. Defaults to ``"summary"``.
            tb_folder: TensorBoard folder relative to the run folder; ``""`` disables TensorBoard output.
                Defaults to ``"tb_events"`` (FLARE's default, shared with ``TBAnalyticsReceiver``).
        """
        super().__init__()
        check_str("output_dir", output_dir, allow_empty=False)
        check_str("tb_folder", tb_folder)
        self.output_dir = output_dir
        self.tb_folder = tb_folder

        self._lock = threading.Lock()
        self._out: Path | None = None
        self._tb_root: Path | None = None
        self._writers: dict[str, Any] = {}
        self._t0: dict[int, float] = {}
        self.summary: dict[str, Any] = _empty_summary()

    # -- events ------------------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext):
        try:
            self._handle(event_type, fl_ctx)
        except Exception as e:  # a reporting problem must never stop training
            self.log_exception(fl_ctx, f"run summary: {event_type} not recorded: {secure_format_exception(e)}")

    def _handle(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)
        elif event_type == AppEventType.ROUND_STARTED:
            r = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
            with self._lock:
                self._t0[r] = time.monotonic()
                self._round(r)
                if self.summary["shared_param_bytes"] is None:
                    ml = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
                    if isinstance(ml, ModelLearnable):
                        weights = ml[ModelLearnableKey.WEIGHTS]
                        self.summary["shared_param_bytes"] = state_nbytes(weights)
                        self.summary["num_shared_keys"] = len(weights)
        elif event_type == AppEventType.AFTER_CONTRIBUTION_ACCEPT:
            result = fl_ctx.get_prop(AppConstants.TRAINING_RESULT)
            if isinstance(result, Shareable):
                accepted = bool(fl_ctx.get_prop(AppConstants.AGGREGATION_ACCEPTED))
                self.record_contribution(fl_ctx.get_prop(AppConstants.CURRENT_ROUND), result, accepted)
        elif event_type == FedEventType.WIRE_BYTES:
            record = fl_ctx.get_prop(FedContextKey.WIRE_BYTES)
            if isinstance(record, dict):
                self.record_bytes(record)
        elif event_type == AppEventType.ROUND_DONE:
            r = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
            self.finish_round(r, time.monotonic() - self._t0.get(r, time.monotonic()))
            self._write_tb(r)
            self._write_json()
        elif event_type == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE:
            r = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
            info = fl_ctx.get_prop(AppConstants.METRICS_SELECTION_INFO) or {}
            key = (info.get("key_metric") or {}).get("name")
            with self._lock:
                self.summary["best"] = {
                    "model_of_round": r - 1 if isinstance(r, int) else None,
                    "validated_in_round": r,
                    "key_metric": key,
                    "value": _finite_or_none((info.get("best_metrics") or {}).get(key)),
                }
        elif event_type == AppEventType.VALIDATION_RESULT_RECEIVED:
            result = fl_ctx.get_prop(AppConstants.VALIDATION_RESULT)
            if isinstance(result, Shareable):
                self.record_cross_site(
                    fl_ctx.get_prop(AppConstants.DATA_CLIENT), fl_ctx.get_prop(AppConstants.MODEL_OWNER), result
                )
        elif event_type == ROUND_PARTICIPATION:
            record = fl_ctx.get_prop(PARTICIPATION_PROP)
            if isinstance(record, dict):
                self.record_participation(record)
                self._write_json()
        elif event_type == EventType.AFTER_TASK_RESULT_FILTER:
            result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
            if isinstance(result, Shareable) and result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
                self._record_error(fl_ctx, result)
        elif event_type == EventType.END_RUN:
            self.write(fl_ctx)

    def _record_error(self, fl_ctx: FLContext, result: Shareable) -> None:
        """Log, naming the site, a result that came back with an error code, and keep it in ``summary["errors"]``."""
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer is not None else "?"
        task = result.get_header(ReservedHeaderKey.TASK_NAME, "?")
        rc = result.get_return_code()
        message = result.get_header(FedHeaderKey.ERROR, "") or "(no message from the site)"
        r = result.get_header(AppConstants.CURRENT_ROUND)
        with self._lock:
            if r is None and self._t0:  # the executor sets the round on train results; else the last started one
                r = max(self._t0)
            self.summary["errors"].append({"round": r, "site": site, "task": task, "rc": rc, "message": message})
        text = f"site {site}: task {task!r} failed with {rc}: {message}"
        # a declined task (evaluation-only site) or nothing to submit is expected, not an error
        (self.log_info if rc in (ReturnCode.TASK_UNSUPPORTED, ReturnCode.EMPTY_RESULT) else self.log_error)(
            fl_ctx, text
        )

    def _start(self, fl_ctx: FLContext) -> None:
        workspace = fl_ctx.get_engine().get_workspace()
        job_id = fl_ctx.get_job_id()
        self._out = Path(workspace.get_app_dir(job_id)) / self.output_dir
        self._out.mkdir(parents=True, exist_ok=True)
        if self.tb_folder:
            self._tb_root = Path(workspace.get_run_dir(job_id)) / self.tb_folder
        with self._lock:
            self.summary = _empty_summary()
            self.summary["job_id"] = job_id
        self.log_info(fl_ctx, f"run summary will be written to {self._out}")

    # -- recording (public for tests) --------------------------------------------------------------------------
    def _round(self, r: int) -> dict[str, Any]:
        rounds = self.summary["rounds"]
        for rec in rounds:
            if rec["round"] == r:
                return rec
        rec = {"round": r, "seconds": None, "sites": {}, "train": {}, "val": {}}
        rec |= {"bytes_up": 0, "bytes_down": 0, "param_bytes_up": 0, "param_bytes_down": 0}
        rounds.append(rec)
        rounds.sort(key=lambda x: x["round"])
        return rec

    def _site(self, r: int, site: str) -> dict[str, Any]:
        return self._round(r)["sites"].setdefault(
            site,
            {"accepted": None, "num_samples": None, "train": {}, "val": {}, "bytes_up": 0, "bytes_down": 0,
             "param_bytes_up": 0, "param_bytes_down": 0},
        )  # fmt: skip

    def record_contribution(self, r: int, result: Shareable, accepted: bool) -> None:
        site = result.get_peer_prop(ReservedKey.IDENTITY_NAME, "?")
        try:
            dxo = from_shareable(result)
        except ValueError:
            return
        with self._lock:
            rec = self._site(r, site)
            rec["accepted"] = accepted
            rec["num_samples"] = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
            rec["train"] = _float_dict(dxo.get_meta_prop(FedMetaKey.TRAIN_METRICS))
            rec["val"] = _float_dict(dxo.get_meta_prop(MetaKey.INITIAL_METRICS))

    def record_participation(self, record: dict[str, Any]) -> None:
        """Keep a train broadcast's participation (the workflow's record) in its round; the last attempt wins."""
        r = record.get("round")
        if not isinstance(r, int):
            return
        keep = {k: record.get(k) for k in ("targets", "valid", "failed", "missing", "min_clients", "aggregated")}
        keep["attempt"] = record.get("attempt", 0)
        with self._lock:
            rec = self._round(r)
            rec.setdefault("attempts", []).append(keep)
            rec["participation"] = keep
            rec["aggregated"] = bool(keep["aggregated"])
            absent = self.summary["absent"]
            absent[:] = [a for a in absent if a["round"] != r]
            for site, why in {**(keep["failed"] or {}), **(keep["missing"] or {})}.items():
                absent.append({"round": r, "site": site, "reason": why})
            absent.sort(key=lambda a: (a["round"], a["site"]))

    def record_bytes(self, record: dict[str, Any]) -> None:
        site, r, d = record.get("site", "?"), record.get("round"), record.get("direction")
        if d not in ("up", "down"):
            return
        with self._lock:
            if record.get("task") == AppConstants.TASK_TRAIN and isinstance(r, int):
                rec = self._site(r, site)
                rec[f"bytes_{d}"] += int(record.get("wire_bytes", 0))
                rec[f"param_bytes_{d}"] += int(record.get("param_bytes", 0))
            else:
                other = self.summary["other_task_bytes"].setdefault(site, {"up": 0, "down": 0})
                other[d] += int(record.get("wire_bytes", 0))

    def finish_round(self, r: int, seconds: float) -> None:
        with self._lock:
            rec = self._round(r)
            rec["seconds"] = round(float(seconds), 3)
            sites = rec["sites"].values()
            for key in ("bytes_up", "bytes_down", "param_bytes_up", "param_bytes_down"):
                rec[key] = sum(s[key] for s in sites)
            ok = [s for s in sites if s["accepted"] and isinstance(s["num_samples"], (int, float))]
            rec["train"] = _weighted_means([(_without_privacy(s["train"]), s["num_samples"]) for s in ok])
            rec["val"] = _weighted_means([(s["val"], s["num_samples"]) for s in ok])
            rec["privacy"] = {
                site: {k: s["train"].get(k) for k in EPSILON_KEYS} for site, s in sorted(rec["sites"].items())
            }
            rec.setdefault("aggregated", True)

    def record_cross_site(self, data_site: str, model_owner: str, result: Shareable) -> None:
        try:
            dxo = from_shareable(result)
        except ValueError:
            return
        if dxo.data_kind != DataKind.METRICS:
            return
        with self._lock:
            self.summary["cross_site"].setdefault(str(data_site), {})[str(model_owner)] = _float_dict(dxo.data)

    # -- output ------------------------------------------------------------------------------------------------
    def _write_json(self) -> None:
        if self._out is None:
            return
        with self._lock:
            text = json.dumps(self.summary, indent=2, sort_keys=True, allow_nan=False)
        tmp = self._out / ".summary.json.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self._out / "summary.json")

    def write(self, fl_ctx: FLContext) -> None:
        """Write ``summary.json``, ``summary.md`` and ``summary.png`` (called at END_RUN)."""
        if self._out is None:
            return
        from fedmrg.fl.summary_render import render_markdown, render_png  # matplotlib only when writing

        with self._lock:
            rounds = self.summary["rounds"]
            self.summary["totals"] = {
                "bytes_up": sum(r["bytes_up"] for r in rounds),
                "bytes_down": sum(r["bytes_down"] for r in rounds),
                "seconds": round(sum(r["seconds"] or 0.0 for r in rounds), 3),
            }
            self.summary["privacy"] = _privacy_by_site(rounds)
            self.summary["cross_site_missing"] = _cross_site_missing(self.summary)
        self._write_json()
        (self._out / "summary.md").write_text(render_markdown(self.summary), encoding="utf-8")
        render_png(self.summary, self._out / "summary.png")
        for w in self._writers.values():
            w.flush()
            w.close()
        self._writers = {}
        self.log_info(fl_ctx, f"run summary written to {self._out} (summary.json, summary.md, summary.png)")

    def _write_tb(self, r: int) -> None:
        if self._tb_root is None:
            return
        from nvflare.app_opt.tracking.tb.tb_event_writer import TensorBoardEventWriter

        def writer(name: str):
            if name not in self._writers:
                self._writers[name] = TensorBoardEventWriter(log_dir=str(self._tb_root / name))
            return self._writers[name]

        with self._lock:
            rec = json.loads(json.dumps(self._round(r)))
        for site, s in rec["sites"].items():
            w = writer(site)
            for group in ("train", "val"):
                for k, v in s[group].items():
                    if v is not None:
                        w.add_scalar(f"{group}/{k}", v, r)
            w.add_scalar("comm/bytes_up", s["bytes_up"], r)
            w.add_scalar("comm/bytes_down", s["bytes_down"], r)
            w.flush()
        w = writer("server")
        for group in ("train", "val"):
            for k, v in rec[group].items():
                w.add_scalar(f"{group}_mean/{k}", v, r)
        w.add_scalar("comm/bytes_up_total", rec["bytes_up"], r)
        w.add_scalar("comm/bytes_down_total", rec["bytes_down"], r)
        if rec["seconds"] is not None:
            w.add_scalar("round/seconds", rec["seconds"], r)
        w.flush()


def _empty_summary() -> dict[str, Any]:
    return {
        "version": SUMMARY_VERSION,
        "job_id": None,
        "shared_param_bytes": None,
        "num_shared_keys": None,
        "rounds": [],
        "best": None,
        "cross_site": {},
        "other_task_bytes": {},
        "errors": [],
        "absent": [],
        "privacy": {},
        "cross_site_missing": {"data_sites": [], "models": []},
        "totals": {},
    }


def _finite_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _float_dict(d: Any) -> dict[str, float | None]:
    if not isinstance(d, dict):
        return {}
    return {str(k): _finite_or_none(v) for k, v in d.items()}


def _without_privacy(metrics: dict[str, float | None]) -> dict[str, float | None]:
    return {k: v for k, v in metrics.items() if not k.startswith(PRIVACY_PREFIXES)}


def _privacy_by_site(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each training site's latest epsilon per mechanism (``None``: the site never reported that DP)."""
    out: dict[str, dict[str, float | None]] = {}
    for rec in rounds:
        for site, s in rec.get("sites", {}).items():
            by_key = out.setdefault(site, dict.fromkeys(EPSILON_KEYS))
            for k in EPSILON_KEYS:
                if s.get("train", {}).get(k) is not None:
                    by_key[k] = s["train"][k]
    return dict(sorted(out.items()))


def _cross_site_missing(summary: dict[str, Any]) -> dict[str, list[str]]:
    """Sites that trained but sent no cross-site validation, and site models no site evaluated; only when the run had
    a cross-site evaluation."""
    cross = summary.get("cross_site") or {}
    if not cross:
        return {"data_sites": [], "models": []}
    sites = {s for rec in summary.get("rounds", []) for s in rec.get("participation", {}).get("targets") or []}
    sites |= {s for rec in summary.get("rounds", []) for s in rec.get("sites", {})}
    models = {m for by_model in cross.values() for m in by_model}
    return {"data_sites": sorted(sites - set(cross)), "models": sorted(s for s in sites if s not in models)}


def _weighted_means(items: list[tuple[dict[str, float | None], float]]) -> dict[str, float]:
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for metrics, w in items:
        for k, v in metrics.items():
            if v is not None and w > 0:
                sums[k] = sums.get(k, 0.0) + v * w
                weights[k] = weights.get(k, 0.0) + w
    return {k: sums[k] / weights[k] for k in sorted(sums)}

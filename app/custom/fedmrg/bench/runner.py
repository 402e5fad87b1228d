"""``fedmrg bench run``: every method of the paper's comparison, same seeds, rounds and step budget, on both partitions.

One run is ``(partition, method, seed)`` and writes ``<out>/runs/<partition>/<method>/seed<k>/``::

    metrics.json      in-domain test and unseen-site scores (BLEU-1..4, ROUGE-L, CIDEr, CE P/R/F1), the
                      most-frequent-report baseline on the same studies, per-round validation and bytes, seconds
    rounds.jsonl      one line per round: validation metrics (mean over sites, weighted by studies), bytes up/down
    model/            the final model, a `fedmrg train`-style run folder that `fedmrg evaluate --model` and
                      `fedmrg generate --model` load (local-only: model/<site>/, one per site)
    state/            the round checkpoint of an unfinished run (removed when the run finishes)

Orchestration (``--orchestrator``):

- ``inprocess`` (default): the sites are :class:`~fedmrg.report.fl_learner.FedMRGLearner` objects (the class the FLARE
  job runs) in this process; every round each site validates the global model it received on its ``val`` split
  (personalized, as the job's executor does), trains, and returns a WEIGHT_DIFF DXO weighted by its samples; the
  server side is the job's :class:`~fedmrg.fl.finite_update_aggregator.FiniteUpdateAggregator` and NVFlare's
  ``FullModelShareableGenerator`` (no second FedAvg). The memory bank is relayed as
  :class:`~fedmrg.fl.extra_payload_relay.ExtraPayloadRelay` does (the newest ``max_items_per_site`` rows per site,
  never a site's own). Bytes are the FOBS serialisation of the task and result shareables
  (:func:`fedmrg.fl.wire_bytes_meter.serialized_size`, the job's meter). A round checkpoint makes an interrupted run
  resume at the next round.
- ``simulator``: ``nvflare simulator`` on a variant of ``jobs/fedmrg`` (``fedmrg job variant``) with the same
  learner arguments and float32 both ways on the wire (as in-process); bytes and validation come from the job's run
  summary; resumes only by rerunning the whole run.

``centralized`` trains the FedMRG model on every site's training data pooled, with as many steps per round as all
sites together; ``local-only`` trains one FedMRG model per site with no exchange. Both are FedMRG's model
(``method: fedmrg``). Evaluation (the same function for every method and orchestrator, on the exported model): the
in-domain test studies (a seeded random draw of ``eval_studies``, the same for every row) are each scored with the
model of the site they were drawn from (personalized: G mixed with the site's specialized adapter where the method
has one; local-only: the site's own model); unseen-site studies with the generic adapter alone (local-only: dealt
round-robin to the site models).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmrg.errors import ConfigError, FedMRGError

PARTITIONS: tuple[str, ...] = ("cluster", "stratified")
ABLATIONS: tuple[str, ...] = ("no_contrastive", "no_specialized", "no_prompts", "no_kd_s2g", "no_kd_g2s")
FEDERATED: tuple[str, ...] = (
    "fedlora", "fedvera", "fedprompt", "fedprefix", "fedadalora", "fedpara", "promptmrg", "fedmrg",
)  # fmt: skip
#: every row of the benchmark, in the table's order
BENCH_METHODS: tuple[str, ...] = (
    "centralized", "local-only", *FEDERATED, *(f"fedmrg-{a.replace('_', '-')}" for a in ABLATIONS),
)  # fmt: skip
ORCHESTRATORS: tuple[str, ...] = ("inprocess", "simulator")
#: the bank's capacity per site in jobs/fedmrg (ExtraPayloadRelay `max_items_per_site`)
BANK_ROWS_PER_SITE = 64
METRIC_KEYS: tuple[str, ...] = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L", "CIDEr", "CE_P", "CE_R", "CE_F1")


@dataclass(frozen=True)
class Profile:
    """A benchmark budget: the same for every method.

    Attributes:
        rounds: FL rounds (centralized and local-only: the same number of rounds).
        local_steps: optimizer steps per site and round (centralized: ``local_steps`` x number of sites per round).
        seeds: training seeds (>= 3 for the table's mean +- std).
        image_size: encoder input, pixels.
        eval_studies: studies scored per evaluation set (in-domain test, unseen site); 0 = all.
        val_studies: studies generated per site and round for the validation curve.
        overrides: run-configuration overrides on top of ``config`` (the method's are added per run).
        config: the run configuration (packaged name or YAML path).
    """

    rounds: int
    local_steps: int
    seeds: tuple[int, ...]
    image_size: int
    eval_studies: int
    val_studies: int
    overrides: dict[str, Any] = field(default_factory=dict)
    config: str = "default.yaml"

    def run_overrides(self, method: str, seed: int) -> dict[str, Any]:
        """The learner's ``overrides`` for one run: profile + method (+ ablation) + seed + image size."""
        from fedmrg.report.fl_learner import merge_overrides

        ov = merge_overrides(self.overrides, method_overrides(method))
        return merge_overrides(ov, {"encoder": {"image_size": self.image_size},
                                    "training": {"seed": seed, "rounds": self.rounds}})  # fmt: skip


_COMMON = {
    "generation": {"num_beams": 1, "max_new_tokens": 60},
    "training": {"batch_size": 8, "eval_batch_size": 16, "warmup_steps": 2, "min_lr_ratio": 0.1},
}
#: the full and quick profiles: every row with a diagnosis head gets it calibrated after the last round (the averaged
#: head does not learn under the clustered partition's label skew; docs/results/benchmark.md)
_CALIBRATED = _COMMON | {"training": _COMMON["training"] | {"head_calibration": "lda"}}
PROFILES: dict[str, Profile] = {
    # a smoke run of every row, sized for <= 20 min on the 2-core machine: 30 runs (one seed) of 2 rounds x 1 step
    # (building the 5 sites' learners, about 25 s, dominates a run); its numbers show the pipeline, not the methods
    "quick": Profile(rounds=2, local_steps=1, seeds=(0,), image_size=64, eval_studies=16, val_studies=2,
                     overrides=_CALIBRATED),  # fmt: skip
    # the paper-style comparison, 6 x 8 steps: one partition about 2 h on 2 cores (docs/results/benchmark.md)
    "full": Profile(rounds=6, local_steps=8, seeds=(0, 1, 2), image_size=96, eval_studies=120, val_studies=8,
                    overrides=_CALIBRATED),  # fmt: skip
    # the tests' profile: tiny built-in models, seconds per run
    "tiny": Profile(rounds=2, local_steps=1, seeds=(0, 1, 2), image_size=32, eval_studies=6, val_studies=2,
                    overrides={"encoder": {"path": "builtin-tiny"}, "decoder": {"path": "builtin-tiny"},
                               "generation": {"num_beams": 1, "max_new_tokens": 8},
                               "memory_bank": {"negatives_per_step": 4, "upload_per_round": 4},
                               "training": {"batch_size": 2, "eval_batch_size": 4, "warmup_steps": 0}}),
}  # fmt: skip


def with_sets(overrides: dict[str, Any], sets: Sequence[str], *, config: str = "default.yaml") -> dict[str, Any]:
    """``overrides`` with ``--set KEY=VALUE`` items (dotted key into the run configuration, JSON value, else a
    string) merged in; the result is loaded once on top of ``config`` so that an unknown key or a wrong value is
    refused here, naming the item, not in the first run. ConfigError on bad syntax, a key given twice or a bad
    value."""
    from fedmrg.job import _set, parse_sets
    from fedmrg.report.fl_learner import merge_overrides

    extra: dict[str, Any] = {}
    for item, key, value in parse_sets(sets):
        _set(extra, key, value, where=f"--set {item!r}")
    merged = merge_overrides(overrides, extra)
    from fedmrg.config import load_yaml
    from fedmrg.report.run_config import packaged_config, run_config_from_dict

    path = Path(config) if Path(config).is_file() else packaged_config(config)
    try:  # loading validates keys and values; the built-in models are not built (paths are only resolved)
        run_config_from_dict(merge_overrides(load_yaml(path), merged), source=f"{path} with --set {' '.join(sets)}",
                             base_dir=path.parent)  # fmt: skip
    except (ConfigError, ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e
    return merged


#: rows whose decoder reads a diagnosis prompt; the others train with ``losses.finding_weight: 1``
PROMPTED_ROWS = frozenset({"centralized", "local-only", "fedmrg", "promptmrg",
                           *(f"fedmrg-{a.replace('_', '-')}" for a in ABLATIONS if a != "no_prompts")})  # fmt: skip


def method_overrides(method: str) -> dict[str, Any]:
    """Run-configuration overrides of a benchmark row (``fedmrg-no-prompts`` -> FedMRG with that ablation).

    Rows without a diagnosis prompt get ``losses.finding_weight: 1``: the weight on finding sentences (4 in
    ``default.yaml``) teaches a decoder to write the findings its prompt names; with no prompt it teaches it to write
    findings whatever the image shows (Fed-LoRA at 10 x 20 steps, seed 0: "rib fracture" repeated in every report,
    in-domain CE-F1 0.03; docs/results/benchmark.md), which is not the same care for the baseline. They also get
    ``generation.rerank_samples: 0``: reranking reads the diagnosis prompt they do not have (the configuration refuses
    it), and ``training.head_calibration: none`` (no head to calibrate).
    """
    if method not in BENCH_METHODS:
        raise ConfigError(f"unknown benchmark method {method!r}; choose from {', '.join(BENCH_METHODS)}")
    if method in ("centralized", "local-only"):
        out: dict[str, Any] = {"method": "fedmrg"}
    elif method.startswith("fedmrg-"):
        out = {"method": "fedmrg", "ablations": {method.removeprefix("fedmrg-").replace("-", "_"): True}}
    else:
        out = {"method": method}
    if method not in PROMPTED_ROWS:
        out["losses"] = {"finding_weight": 1.0}
        out["generation"] = {"rerank_samples": 0}
        out["training"] = {"head_calibration": "none"}  # no head to calibrate (`--set` may ask it of every row)
    return out


@dataclass
class RunSpec:
    """One benchmark run."""

    partition: str
    method: str
    seed: int
    data: Path
    out: Path

    @property
    def name(self) -> str:
        return f"{self.partition}/{self.method}/seed{self.seed}"


def run_dir(out: Path, partition: str, method: str, seed: int) -> Path:
    return out / "runs" / partition / method / f"seed{seed}"


# ------------------------------------------------------------------------------------------------ evaluation


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


#: seed of the studies scored when an evaluation set is cut to ``eval_studies`` (the same studies for every row)
EVAL_SAMPLE_SEED = 0


def sample_indices(n_total: int, n: int) -> list[int]:
    """``n`` of ``range(n_total)`` drawn with ``random.Random(EVAL_SAMPLE_SEED)``, sorted (all when ``n`` is 0 or
    larger). A random draw, not the first ``n``: an evaluation set is ordered by site, and the sites differ."""
    if not n or n >= n_total:
        return list(range(n_total))
    return sorted(random.Random(EVAL_SAMPLE_SEED).sample(range(n_total), n))


def _study_sites(dataset: Any) -> list[str | None]:
    """Per item of ``dataset`` (a ReportDataset or a ConcatDataset of them), the site named in its record's
    ``meta["site"]`` (None where absent)."""
    from fedmrg.report.data_loading import site_datasets

    return [r.meta.get("site") for part in site_datasets(dataset) for r in part.records]


def evaluate_models(
    models: dict[str, Path], data: Path, *, eval_studies: int, unseen: Sequence[str], image_size: int
) -> dict[str, Any]:
    """Score exported models on the in-domain test set and the unseen sites (see the module docstring).

    Args:
        models: training site -> a model folder ``fedmrg evaluate --model`` loads (the same path for every site
            when one folder holds every site's specialized adapter).
        data: the partition's dataset directory.
        eval_studies: N studies of each evaluation set, a seeded random draw (:func:`sample_indices`; 0: all).
        unseen: unseen site names (their ``test`` split).

    Returns:
        ``{"in_domain": {metric: value, "n": studies}, "unseen": {...}, "baseline": {"in_domain": {...},
        "unseen": {...}}}``; metrics are those of :func:`fedmrg.report.evaluation.headline`.
    """
    from torch.utils.data import ConcatDataset, Subset

    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.report.data_loading import open_split
    from fedmrg.report.evaluation import generate_for_dataset, headline, most_frequent_baseline, score_rows
    from fedmrg.report.export import load_model

    fd = FederatedDataset.open(data)
    sites = list(models)
    cache: dict[tuple[Path, str | None, bool], Any] = {}

    def model_for(site: str, generic_only: bool) -> Any:
        key = (models[site], site, generic_only)
        if key not in cache:
            cache.clear()  # one model in memory at a time
            cache[key] = load_model(models[site], site=site, generic_only=generic_only, require_site=False)
        return cache[key]

    def score(dataset: Any, generic_only: bool) -> tuple[dict[str, float], dict[str, float]]:
        chosen = sample_indices(len(dataset), eval_studies)
        # an in-domain study goes to the model of the site it was drawn from (its hospital's model); a study of no
        # training site (the unseen sites) is dealt round-robin to the training sites' models
        named = _study_sites(dataset)
        if len(named) != len(dataset):  # not ReportDatasets: no site is known
            named = [None] * len(dataset)
        by_site: dict[str, list[int]] = {site: [] for site in sites}
        for k, i in enumerate(chosen):
            by_site[named[i] if named[i] in by_site else sites[k % len(sites)]].append(i)
        rows: list[dict[str, Any]] = []
        for site, idx in by_site.items():
            if not idx:
                continue
            loaded = model_for(site, generic_only)
            rows += generate_for_dataset(loaded.model, Subset(dataset, idx), progress=False,
                                         batch_size=loaded.config.training.eval_batch_size,
                                         generic_only=loaded.adapter == "generic")  # fmt: skip
        train_reports = [r.report for s in fd.sites for r in fd.split(s, "train")]
        base = headline(most_frequent_baseline(train_reports, rows))
        return headline(score_rows(rows)) | {"n": float(len(rows))}, base

    test = open_split(fd, site=None, split="test", image_size=image_size)
    in_domain, base_in = score(test, generic_only=False)
    out: dict[str, Any] = {"in_domain": in_domain, "baseline": {"in_domain": base_in}}
    if unseen:
        parts = ConcatDataset([open_split(fd, site=u, split="test", image_size=image_size) for u in unseen])
        out["unseen"], out["baseline"]["unseen"] = score(parts, generic_only=True)
    return out


# ------------------------------------------------------------------------------------------------ in-process FL


class RoundCheckpoint:
    """``state/`` of an unfinished run: the last finished round, the global (or per-site) shared states, the sites'
    private states, the memory bank and the history. Written atomically at each round's end."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def load(self) -> dict[str, Any] | None:
        meta = self.dir / "progress.json"
        if not meta.is_file():
            return None
        from safetensors.numpy import load_file

        progress = json.loads(meta.read_text())
        states = {name: load_file(str(self.dir / f"{name}.safetensors")) for name in progress["states"]}
        bank = load_file(str(self.dir / "bank.safetensors")) if (self.dir / "bank.safetensors").is_file() else {}
        return progress | {"state_arrays": states, "bank": bank}

    def save(self, *, round_done: int, history: list[dict[str, Any]], states: dict[str, dict[str, np.ndarray]],
             learners: dict[str, Any], bank: dict[str, np.ndarray]) -> None:  # fmt: skip
        from safetensors.numpy import save_file

        tmp = self.dir.with_name(self.dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, state in states.items():
            save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp / f"{name}.safetensors"))
        for site, learner in learners.items():
            (tmp / "private" / site).mkdir(parents=True)
            learner.save_private(str(tmp / "private" / site))
        if bank:
            save_file(bank, str(tmp / "bank.safetensors"))
        progress = {"round_done": round_done, "history": history, "states": sorted(states)}
        (tmp / "progress.json").write_text(json.dumps(progress, indent=1) + "\n")
        shutil.rmtree(self.dir, ignore_errors=True)
        tmp.rename(self.dir)


def _weighted_mean(rows: list[dict[str, float]]) -> dict[str, float]:
    rows = [r for r in rows if r and r.get("n")]
    total = sum(r["n"] for r in rows)
    if not total:
        return {}
    keys = sorted({k for r in rows for k in r if k != "n"})
    return {k: sum(r.get(k, 0.0) * r["n"] for r in rows) / total for k in keys} | {"n": total}


def _task_bytes(state: dict[str, np.ndarray], peer_extra: dict[str, Any], round_num: int) -> int:
    """Serialised bytes of a train task as the server sends it (DXO WEIGHTS + the relayed bank in its meta)."""
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.app_common.app_constant import AppConstants

    from fedmrg.fl.constants import FedMetaKey
    from fedmrg.fl.wire_bytes_meter import serialized_size

    meta = {FedMetaKey.PEER_EXTRA: peer_extra} if peer_extra else {}
    s = DXO(DataKind.WEIGHTS, data=state, meta=meta).to_shareable()
    s.set_header(AppConstants.CURRENT_ROUND, round_num)
    return serialized_size(s)


def _make_learner(spec: RunSpec, profile: Profile, threads: int) -> Any:
    from fedmrg.report.fl_learner import FedMRGLearner

    learner = FedMRGLearner(config=profile.config, overrides=profile.run_overrides(spec.method, spec.seed),
                            local_steps=profile.local_steps, validate_max_studies=profile.val_studies,
                            torch_threads=threads)  # fmt: skip
    learner.runs_statistics_round = True  # run_federated / run_local_only / run_centralized run it after the rounds
    return learner


def _calibrated(learners: dict[str, Any], state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``state`` after the statistics round of the FLARE job (:mod:`fedmrg.fl.statistics_round`) over ``learners``
    when their configuration asks for it (``training.head_calibration: lda``); else ``state`` itself."""
    from fedmrg.fl.statistics_round import needs_statistics_round, sum_statistics

    first = next(iter(learners.values()))
    if not needs_statistics_round(first):
        return state
    return first.finish_state(state, sum_statistics({s: lrn.round_statistics(state) for s, lrn in learners.items()}))


def _setup_sites(spec: RunSpec, profile: Profile, sites: list[str], work: Path, threads: int) -> dict[str, Any]:
    from fedmrg.fl.site_config import SiteConfig

    learners = {}
    for site in sites:
        learner = _make_learner(spec, profile, threads)
        learner.setup(site, str(work / site), SiteConfig(site=site, data_root=str(spec.data)))
        learners[site] = learner
    return learners


def _export(learner: Any, state: dict[str, np.ndarray], privates: dict[str, Any], out: Path) -> Path:
    """A `fedmrg train`-style run folder holding the shared state and every site's private state."""
    import torch

    from fedmrg.report.checkpoint import save_checkpoint
    from fedmrg.report.shared_state import get_shared_state, load_shared_state

    model = learner._model
    load_shared_state(model, {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    privates = {s: p for s, p in privates.items() if p}
    return save_checkpoint(out, model, learner._load_config(), shared_state=get_shared_state(model),
                           private_states=privates or None)  # fmt: skip


def run_federated(spec: RunSpec, profile: Profile, *, threads: int, on_round: Callable[[int], None]) -> dict[str, Any]:
    """FedAvg in-process with the job's learner and aggregator; returns history and model folders."""
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.abstract.model import ModelLearnableKey, make_model_learnable
    from nvflare.app_common.app_constant import AppConstants
    from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator

    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.fl.constants import FedMetaKey
    from fedmrg.fl.finite_update_aggregator import FiniteUpdateAggregator
    from fedmrg.fl.wire_bytes_meter import serialized_size
    from fedmrg.report.fl_learner import BANK_KEY

    sites = list(FederatedDataset.open(spec.data).sites)
    learners = _setup_sites(spec, profile, sites, spec.out / "work", threads)
    ckpt = RoundCheckpoint(spec.out / "state")
    saved = ckpt.load()
    if saved:
        state = saved["state_arrays"]["global"]
        history, start = saved["history"], saved["round_done"] + 1
        bank = {k: v for k, v in saved["bank"].items()}
        for site, learner in learners.items():
            learner.load_private(str(ckpt.dir / "private" / site))
        _say(f"{spec.name}: resuming at round {start}")
    else:
        state = learners[sites[0]].initial_shared_state()
        history, start, bank = [], 0, {}
    # every site weighted 1.0 (NVFlare's default) named explicitly: for a site it was not given, the aggregator logs
    # a warning whose event needs an engine, which this in-process loop has not ("Logic Error: no engine")
    aggregator = FiniteUpdateAggregator(expected_data_kind=DataKind.WEIGHT_DIFF,
                                        aggregation_weights=dict.fromkeys(sites, 1.0))  # fmt: skip
    generator = FullModelShareableGenerator()
    aggregator.handle_event(EventType.START_RUN, FLContext())
    for r in range(start, profile.rounds):
        t0 = time.monotonic()
        ctx = FLContext()
        ctx.set_prop(AppConstants.CURRENT_ROUND, r, private=True, sticky=False)
        ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(state, {}), private=True, sticky=False)
        vals, down, up, new_bank = [], 0, 0, {}
        for site, learner in learners.items():
            peers = {s: rows for s, rows in bank.items() if s != site}
            down += _task_bytes(state, {BANK_KEY: peers} if peers else {}, r)
            vals.append(learner.validate(state, personalized=True, split="val"))
            outcome = learner.train(state, round_num=r, extra={BANK_KEY: peers} if peers else {})
            diff = {k: (outcome.shared_state[k] - state[k]).astype(np.float32) for k in state}
            meta: dict[str, Any] = {MetaKey.NUM_STEPS_CURRENT_ROUND: outcome.num_samples,
                                    FedMetaKey.TRAIN_METRICS: outcome.metrics}  # fmt: skip
            if outcome.extra:
                meta[FedMetaKey.EXTRA] = outcome.extra
            result = DXO(DataKind.WEIGHT_DIFF, data=diff, meta=meta).to_shareable()
            result.set_peer_props({ReservedKey.IDENTITY_NAME: site})
            result.add_cookie(AppConstants.CONTRIBUTION_ROUND, r)
            up += serialized_size(result)
            if not aggregator.accept(result, ctx):
                raise RuntimeError(f"{spec.name}: round {r}: the aggregator rejected {site}'s update: "
                                   f"{aggregator.rejections.get(site)}")  # fmt: skip
            if BANK_KEY in outcome.extra:
                new_bank[site] = outcome.extra[BANK_KEY]
        learnable = generator.shareable_to_learnable(aggregator.aggregate(ctx), ctx)
        state = {k: np.asarray(v, dtype=np.float32) for k, v in learnable[ModelLearnableKey.WEIGHTS].items()}
        for site, rows in new_bank.items():  # ExtraPayloadRelay: newest rows per site, kept across rounds
            old = bank.get(site)
            joined = rows if old is None else np.concatenate([old, rows])
            bank[site] = np.ascontiguousarray(joined[-BANK_ROWS_PER_SITE:], dtype=np.float32)
        for site in [s for s in bank if s not in new_bank]:
            del bank[site]  # a site without an update this round is forgotten, as in the relay
        history.append({"round": r, "val": _weighted_mean(vals), "bytes_down": down, "bytes_up": up,
                        "param_bytes": int(sum(v.nbytes for v in state.values())),
                        "seconds": time.monotonic() - t0})  # fmt: skip
        ckpt.save(round_done=r, history=history, states={"global": state}, learners=learners, bank=bank)
        on_round(r)
    state = _calibrated(learners, state)
    privates = {site: learner._private for site, learner in learners.items()}
    model = _export(learners[sites[0]], state, privates, spec.out / "model")
    return {"history": history, "models": dict.fromkeys(sites, model)}


def run_local_only(spec: RunSpec, profile: Profile, *, threads: int, on_round: Callable[[int], None]) -> dict[str, Any]:
    """Each site trains FedMRG's model alone for the same rounds and steps; one model folder per site."""
    from fedmrg.data.dataset_dir import FederatedDataset

    sites = list(FederatedDataset.open(spec.data).sites)
    learners = _setup_sites(spec, profile, sites, spec.out / "work", threads)
    ckpt = RoundCheckpoint(spec.out / "state")
    saved = ckpt.load()
    if saved:
        states, history, start = saved["state_arrays"], saved["history"], saved["round_done"] + 1
        for site, learner in learners.items():
            learner.load_private(str(ckpt.dir / "private" / site))
        _say(f"{spec.name}: resuming at round {start}")
    else:
        init = learners[sites[0]].initial_shared_state()
        states, history, start = {s: dict(init) for s in sites}, [], 0
    for r in range(start, profile.rounds):
        t0 = time.monotonic()
        vals = []
        for site, learner in learners.items():
            vals.append(learner.validate(states[site], personalized=True, split="val"))
            states[site] = learner.train(states[site], round_num=r, extra={}).shared_state
        history.append({"round": r, "val": _weighted_mean(vals), "bytes_down": 0, "bytes_up": 0, "param_bytes": 0,
                        "seconds": time.monotonic() - t0})  # fmt: skip
        ckpt.save(round_done=r, history=history, states=states, learners=learners, bank={})
        on_round(r)
    states = {site: _calibrated({site: learners[site]}, states[site]) for site in sites}  # each on its own data
    models = {site: _export(learners[site], states[site], {site: learners[site]._private},
                            spec.out / "model" / site) for site in sites}  # fmt: skip
    return {"history": history, "models": models}


def run_centralized(
    spec: RunSpec, profile: Profile, *, threads: int, on_round: Callable[[int], None]
) -> dict[str, Any]:
    """FedMRG's model on every site's training data pooled (``fedmrg train --centralized``), ``local_steps`` x sites
    steps per round; validation on ``val_studies`` x sites pooled validation studies (a seeded random draw)."""
    import torch
    from torch.utils.data import Subset

    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.report.data_loading import open_split
    from fedmrg.report.evaluation import diagnosis_f1, generate_for_dataset, headline, score_rows
    from fedmrg.report.shared_state import (
        get_private_state,
        get_shared_state,
        load_private_state,
        load_shared_state,
        start_round,
    )
    from fedmrg.report.trainer import LocalTrainer

    if threads:
        torch.set_num_threads(threads)
    fd = FederatedDataset.open(spec.data)
    learner = _make_learner(spec, profile, threads)
    cfg = learner._load_config()
    m, t = cfg.model, cfg.training
    model = learner._build_model()
    train = open_split(fd, site=None, split="train", image_size=m.encoder.image_size,
                       views=m.uses_contrastive and t.augment, seed=t.seed, cache_images=t.cache_images)  # fmt: skip
    pooled_val = open_split(fd, site=None, split="val", image_size=m.encoder.image_size)
    val = Subset(pooled_val, sample_indices(len(pooled_val), profile.val_studies * len(fd.sites)))
    work = spec.out / "work" / "centralized"
    trainer = LocalTrainer(model, t, site="centralized", train_dataset=train, workspace=work, tb_dir=work / "tb",
                           progress=False)  # fmt: skip
    ckpt = RoundCheckpoint(spec.out / "state")
    saved = ckpt.load()
    shared = private = None
    history, start = [], 0
    if saved:
        from safetensors.torch import load_file

        shared = {k: torch.from_numpy(v) for k, v in saved["state_arrays"]["global"].items()}
        pfile = ckpt.dir / "private" / "centralized" / "private_state.safetensors"
        private = load_file(str(pfile)) if pfile.is_file() else None
        history, start = saved["history"], saved["round_done"] + 1
        _say(f"{spec.name}: resuming at round {start}")
    steps = profile.local_steps * len(fd.sites)

    class _Private:  # RoundCheckpoint saves private states through learners' save_private
        def save_private(self, directory: str) -> None:
            from safetensors.torch import save_file

            if private:
                save_file({k: v.contiguous() for k, v in private.items()},
                          str(Path(directory) / "private_state.safetensors"))  # fmt: skip

    try:
        for r in range(start, profile.rounds):
            t0 = time.monotonic()
            vrow: dict[str, float] = {}
            if len(val):  # the model before this round's training (round 0: the initial model), as at a site
                if shared is not None:
                    load_shared_state(model, shared)
                if private is not None:
                    load_private_state(model, private)
                start_round(model)
                rows = generate_for_dataset(model, val, batch_size=t.eval_batch_size, progress=False)
                h = headline(score_rows(rows))
                vrow = {"bleu4": h["BLEU_4"], "rouge_l": h["ROUGE_L"], "ce_f1": h.get("CE_F1", 0.0),
                        "n": float(len(rows))}  # fmt: skip
                diag = diagnosis_f1(rows)
                if diag is not None:
                    vrow["diag_f1"] = diag
            result = trainer.train_round(shared, private, round_num=r, steps=steps)
            shared, private = result.shared_state, result.private_state
            history.append({"round": r, "val": vrow, "bytes_down": 0, "bytes_up": 0, "param_bytes": 0,
                            "seconds": time.monotonic() - t0})  # fmt: skip
            state = {k: v.detach().cpu().float().numpy() for k, v in shared.items()}
            ckpt.save(round_done=r, history=history, states={"global": state}, learners={"centralized": _Private()},
                      bank={})  # fmt: skip
            on_round(r)
    finally:
        trainer.close()
    load_shared_state(model, shared)
    if private is not None:
        load_private_state(model, private)
    if t.head_calibration == "lda":
        from fedmrg.report.head_calibration import calibrate

        calibrate(model, [open_split(fd, site=None, split="train", image_size=m.encoder.image_size)],
                  shrinkage=t.head_calibration_shrinkage, batch_size=t.eval_batch_size)  # fmt: skip
    from fedmrg.report.checkpoint import save_checkpoint

    out = save_checkpoint(spec.out / "model", model, cfg, shared_state=get_shared_state(model),
                          private_states={"centralized": get_private_state(model)} if private else None)  # fmt: skip
    return {"history": history, "models": dict.fromkeys(fd.sites, out)}


# ------------------------------------------------------------------------------------------------ simulator


def run_simulator(spec: RunSpec, profile: Profile, *, threads: int, on_round: Callable[[int], None]) -> dict[str, Any]:
    """The same run through ``nvflare simulator`` on a variant of jobs/fedmrg (federated methods only)."""
    import subprocess

    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.demo import _default_job, write_site_roles
    from fedmrg.errors import FedMRGError
    from fedmrg.job import is_byoc, prepare_workspace, simulator_command, write_variant

    if spec.method not in FEDERATED and not spec.method.startswith("fedmrg-"):
        raise ConfigError(f"--orchestrator simulator runs federated methods only, not {spec.method!r}")
    fd = FederatedDataset.open(spec.data)
    sites, unseen = list(fd.sites), list(fd.unseen_sites)
    learner_overrides = profile.run_overrides(spec.method, spec.seed)
    sets = [  # overrides first: `rounds=` then sets the schedule's rounds inside them too
        f"learner.overrides={json.dumps(learner_overrides)}",
        f"rounds={profile.rounds}",
        f"learner.local_steps={profile.local_steps}",
        f"learner.validate_max_studies={profile.val_studies}",
        f"learner.torch_threads={threads or 1}",
        f"learner.config={profile.config}",
        f"min_clients={len(sites)}",
        f"server.scatter_and_gather.evaluation_sites={json.dumps(unseen)}",
        # float32 both ways, as the in-process loop: the two orchestrators then compute the same model
        "wire.up=float32",
        "wire.down=float32",
    ]
    sim = spec.out / "simulator"
    shutil.rmtree(sim, ignore_errors=True)
    job = write_variant(_default_job(), sim / "job", sets, overwrite=True)
    ws = sim / "workspace"
    if not is_byoc(job):
        prepare_workspace(job, ws)
    write_site_roles(ws, unseen)
    cmd = simulator_command(job, ws, sites=[*sites, *unseen], threads=len(sites) + len(unseen))
    env = dict(os.environ, OMP_NUM_THREADS="1", FEDMRG_DATA_ROOT=str(spec.data))
    log = sim / "simulator.log"
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
    app = ws / "server" / "simulate_job" / "app_server"
    summary_json = app / "summary" / "summary.json"
    if rc != 0 or not summary_json.is_file():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise FedMRGError(f"{spec.name}: the simulator failed (exit code {rc}); last lines of {log}:\n{tail}")
    summary = json.loads(summary_json.read_text())
    history = []
    for row in summary.get("rounds", []):
        history.append({"round": row["round"], "val": row.get("val") or {}, "bytes_down": row.get("bytes_down", 0),
                        "bytes_up": row.get("bytes_up", 0), "param_bytes": 0, "seconds": row.get("seconds")})  # fmt: skip
        on_round(row["round"])
    from fedmrg.inference.sources import open_source
    from fedmrg.report.export import export_model

    # a method with a specialized adapter (FedMRG and its ablations) exports each site's, and a site without one is
    # an error (export_model names it); methods without one (Fed-LoRA, FedAvg, ...) export the global model alone
    personal = bool(open_source(ws).sites)
    models = {site: export_model(ws, site=site if personal else None, out=spec.out / "model" / site, overwrite=True)
              for site in sites}  # fmt: skip
    return {"history": history, "models": models}


# ------------------------------------------------------------------------------------------------ driver


def run_one(spec: RunSpec, profile: Profile, *, orchestrator: str, threads: int,
            on_round: Callable[[int], None]) -> dict[str, Any]:  # fmt: skip
    """Train, export and score one run; writes ``metrics.json`` last (its presence marks the run finished)."""
    from fedmrg.data.dataset_dir import FederatedDataset

    spec.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if orchestrator == "simulator":
        result = run_simulator(spec, profile, threads=threads, on_round=on_round)
    elif spec.method == "centralized":
        result = run_centralized(spec, profile, threads=threads, on_round=on_round)
    elif spec.method == "local-only":
        result = run_local_only(spec, profile, threads=threads, on_round=on_round)
    else:
        result = run_federated(spec, profile, threads=threads, on_round=on_round)
    train_s = time.monotonic() - t0
    fd = FederatedDataset.open(spec.data)
    scores = evaluate_models(result["models"], spec.data, eval_studies=profile.eval_studies,
                             unseen=list(fd.unseen_sites), image_size=profile.image_size)  # fmt: skip
    history = result["history"]
    rounds_up = [h["bytes_up"] for h in history]
    rounds_down = [h["bytes_down"] for h in history]
    metrics = {
        "partition": spec.partition, "method": spec.method, "seed": spec.seed, "orchestrator": orchestrator,
        "data": str(spec.data), "profile": dataclasses.asdict(profile),
        **scores,
        "bytes_per_round": {"up": float(np.mean(rounds_up)) if rounds_up else 0.0,
                            "down": float(np.mean(rounds_down)) if rounds_down else 0.0,
                            "shared_param_bytes": history[-1]["param_bytes"] if history else 0},
        "rounds": history,
        # relative to the run folder, so that a benchmark folder moved or copied elsewhere still scores its own models
        "models": {site: str(Path(p).resolve().relative_to(spec.out.resolve())) for site, p in result["models"].items()},
        "seconds": {"train": train_s, "total": time.monotonic() - t0},
    }  # fmt: skip
    (spec.out / "rounds.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    tmp = spec.out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1, default=float) + "\n")
    tmp.rename(spec.out / "metrics.json")
    shutil.rmtree(spec.out / "state", ignore_errors=True)
    shutil.rmtree(spec.out / "work", ignore_errors=True)
    return metrics


def is_finished(directory: Path) -> bool:
    return (directory / "metrics.json").is_file()


def read_metrics(path: Path) -> dict[str, Any]:
    """A run's ``metrics.json``; FedMRGError naming the file and the remedy when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FedMRGError(
            f"{path}: unreadable run metrics ({e}); delete that file to train the run again, or the whole run folder"
        ) from None


def rescore(directory: Path, *, eval_studies: int | None = None) -> dict[str, Any]:
    """Score a finished run's saved models again with today's :func:`evaluate_models` and rewrite its
    ``metrics.json`` (training, history and bytes kept). ``eval_studies``: None keeps the run's own. Model paths
    are read relative to ``directory`` (absolute ones, as runs before relative paths wrote them, as they are)."""
    from fedmrg.data.dataset_dir import FederatedDataset

    path = directory / "metrics.json"
    metrics = read_metrics(path)
    profile = metrics["profile"]
    if eval_studies is not None:
        profile["eval_studies"] = eval_studies
    t0 = time.monotonic()
    fd = FederatedDataset.open(metrics["data"])
    models = {site: directory / p for site, p in metrics["models"].items()}  # an absolute path stays absolute
    scores = evaluate_models(models, Path(metrics["data"]),
                             eval_studies=profile["eval_studies"], unseen=list(fd.unseen_sites),
                             image_size=profile["image_size"])  # fmt: skip
    metrics |= scores
    metrics["seconds"]["rescore"] = time.monotonic() - t0
    tmp = directory / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1, default=float) + "\n")
    tmp.rename(path)
    return metrics


def plan(data: Path, out: Path, partitions: Sequence[str], methods: Sequence[str],
         seeds: Sequence[int]) -> list[RunSpec]:  # fmt: skip
    """Every run, seeds innermost-last so that a partial benchmark has every method at the first seeds first."""
    for p in partitions:
        if not (data / p / "manifest.json").is_file():
            raise ConfigError(f"{data / p}: no benchmark partition here (manifest.json missing); run `fedmrg bench "
                              f"prepare --out {data}` first or pass --data to its output folder")  # fmt: skip
    return [RunSpec(p, m, s, data / p, run_dir(out, p, m, s)) for s in seeds for p in partitions for m in methods]


def run_all(specs: list[RunSpec], profile: Profile, *, orchestrator: str, threads: int,
            rescore_finished: bool = False, eval_studies: int | None = None) -> list[Path]:  # fmt: skip
    """Run every unfinished spec with progress lines and an ETA (from the mean time of the runs done here).

    ``rescore_finished``: score each finished run's saved models again (:func:`rescore`, ``eval_studies`` None: the
    run's own) instead of skipping it."""
    todo = [s for s in specs if not is_finished(s.out)]
    finished = [s for s in specs if is_finished(s.out)]
    if finished and rescore_finished:
        if threads:
            import torch

            torch.set_num_threads(threads)
        for k, spec in enumerate(finished, 1):
            m = rescore(spec.out, eval_studies=eval_studies)
            _say(f"rescored [{k}/{len(finished)}] {spec.name} in {m['seconds']['rescore']:.0f} s: in-domain BLEU-4 "
                 f"{m['in_domain']['BLEU_4']:.3f} CE-F1 {m['in_domain']['CE_F1']:.3f}")  # fmt: skip
    elif finished:
        _say(f"{len(finished)} of {len(specs)} run(s) already finished: skipped (--rescore scores them again)")
    t_start, done_rounds = time.monotonic(), 0
    total_rounds = len(todo) * (profile.rounds + 1)  # + 1: the evaluation counts as about one round

    def eta() -> str:
        if not done_rounds:
            return "ETA -"
        left = (time.monotonic() - t_start) / done_rounds * (total_rounds - done_rounds)
        return f"ETA {_hms(left)}"

    for i, spec in enumerate(todo, 1):
        _say(f"[{i}/{len(todo)}] {spec.name} ({orchestrator}) start; {eta()}")

        def on_round(r: int, spec: RunSpec = spec, i: int = i) -> None:
            nonlocal done_rounds
            done_rounds += 1
            _say(f"[{i}/{len(todo)}] {spec.name} round {r + 1}/{profile.rounds} done; elapsed "
                 f"{_hms(time.monotonic() - t_start)}, {eta()}")  # fmt: skip

        before = done_rounds
        m = run_one(spec, profile, orchestrator=orchestrator, threads=threads, on_round=on_round)
        done_rounds = before + profile.rounds + 1
        ind, uns = m["in_domain"], m.get("unseen", {})
        _say(f"[{i}/{len(todo)}] {spec.name} done in {m['seconds']['total']:.0f} s: in-domain BLEU-4 "
             f"{ind.get('BLEU_4', math.nan):.3f} CE-F1 {ind.get('CE_F1', math.nan):.3f}; unseen CE-F1 "
             f"{uns.get('CE_F1', math.nan):.3f}; {eta()}")  # fmt: skip
    return [s.out for s in specs]


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"

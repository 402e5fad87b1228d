"""The benchmark federation: one deterministic command writes both of the paper's partitions (sec. 4.1).

``fedmrg bench prepare --source iu-kaggle=../shared/data/iu_xray --sites 5 --unseen-sites 1 --seed 0 --out DIR``
reads the source(s) exactly as ``fedmrg data prepare`` does (same readers, image checks, de-identification clean-up,
labels, ``--render-missing`` images marked synthetic) and writes two dataset directories:

- ``DIR/cluster``: sites by report clustering (TF-IDF -> LSA -> k-means; ``fedmrg.data.partition``, method
  ``cluster``), the smallest cluster(s) as unseen site(s);
- ``DIR/stratified``: a *stratified* random split: every patient's primary label (its rarest positive observation,
  :func:`fedmrg.data.partition.primary_labels`) is a stratum, each stratum's patients are shuffled and dealt to the
  groups in turn (the group holding the fewest records of that stratum first), so every site and the unseen site
  get the same label mix up to rounding.

Both have per-site device profiles (``fedmrg.data.site_transforms``; default cycle), an in-domain test set (the
union of each training site's test share) and ``--unseen-sites`` sites that never train. Given ``--source`` twice,
each source is split on its own into ``--sites`` sites named ``<source>-site-k`` (sites keep their source: the
paper's "real-world" setting) and the parts are merged; the in-domain test set mixes both sources.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fedmrg.data.partition import (
    Partition,
    PartitionConfig,
    SiteSplit,
    _group_by_patient,
    _patient_primary_labels,
    partition_from_groups,
    partition_records,
)
from fedmrg.data.records import StudyRecord
from fedmrg.errors import ConfigError, DataError

#: The two partitions of the paper's benchmark, one dataset directory each.
BENCH_PARTITIONS: tuple[str, ...] = ("cluster", "stratified")


def stratified_groups(classes: Sequence[str], sizes: np.ndarray, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """Group index (0..n_groups-1) per patient: each class's patients shuffled, each given to the group that holds
    the fewest records of that class so far (ties: fewest records overall, then lowest index)."""
    group = np.full(len(classes), -1, dtype=np.int64)
    total = np.zeros(n_groups, dtype=np.int64)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(classes):
        by_class[c].append(i)
    for c in sorted(by_class):
        members = [by_class[c][j] for j in rng.permutation(len(by_class[c]))]
        held = np.zeros(n_groups, dtype=np.int64)
        for i in members:
            g = min(range(n_groups), key=lambda k: (held[k], total[k], k))
            group[i] = g
            held[g] += sizes[i]
            total[g] += sizes[i]
    return group


def stratified_partition(records: Sequence[StudyRecord], config: PartitionConfig) -> Partition:
    """Like :func:`fedmrg.data.partition.partition_records` with a stratified random group assignment (module doc);
    the test / validation split inside each site is the same procedure. ``config.method`` is not read."""
    patients, by_patient = _group_by_patient(records)
    n_groups = config.num_sites + config.unseen_sites
    if len(patients) < n_groups:
        raise DataError(f"{len(patients)} patient(s) cannot fill {n_groups} site(s); use fewer sites")
    rng_group, rng_split = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(2))
    sizes = np.array([len(by_patient[p]) for p in patients])
    group = stratified_groups(_patient_primary_labels(patients, by_patient), sizes, n_groups, rng_group)
    return partition_from_groups(patients, by_patient, group, config, rng_split)


def merge_partitions(parts: Sequence[Partition], config: PartitionConfig) -> Partition:
    """One federation from per-source partitions (site names must differ; patients and studies must not repeat)."""
    sites: dict[str, SiteSplit] = {}
    unseen: dict[str, list[StudyRecord]] = {}
    test: list[StudyRecord] = []
    for p in parts:
        for name in [*p.sites, *p.unseen]:
            if name in sites or name in unseen:
                raise DataError(f"two sources both define site {name!r}")
        sites |= p.sites
        unseen |= p.unseen
        test += p.test
    merged = Partition(config=config, sites=sites, test=test, unseen=unseen)
    merged.check_patient_disjoint()  # a study or patient id present in two sources is refused, named
    return merged


def parse_source(value: str) -> tuple[str, Path | None]:
    """``"iu-kaggle=../shared/data/iu_xray"`` -> ``("iu-kaggle", Path(...))``; ``"synthetic"`` -> ``("synthetic", None)``."""
    from fedmrg.data.readers import SOURCES

    name, _, path = value.partition("=")
    if name not in (*SOURCES, "synthetic"):
        raise ConfigError(f"--source {value!r}: the reader must be one of {['synthetic', *SOURCES]}")
    if name != "synthetic" and not path:
        raise ConfigError(f"--source {value!r}: give the input as READER=PATH, e.g. iu-kaggle=../shared/data/iu_xray")
    return name, Path(path) if path else None


def _data_prepare_args(source: str, path: Path | None, args: argparse.Namespace, out: Path) -> argparse.Namespace:
    """The namespace ``fedmrg data prepare`` would parse for one source (its parser validates the options)."""
    from fedmrg.data import cli as data_cli

    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers())
    argv = ["data", "prepare", "--source", source, "--sites", str(args.sites), "--seed", str(args.seed)]
    argv += ["--out", str(out), "--image-size", str(args.image_size)]
    if path is not None:
        argv += ["--input", str(path)]
    if source != "synthetic":
        argv += ["--render-missing"]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    if source == "synthetic":
        argv += ["--num-studies", str(args.num_studies)]
    return parser.parse_args(argv)


def prepare_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Write ``args.out/cluster`` and ``args.out/stratified`` (module docstring); returns ``{partition: manifest}``."""
    from fedmrg.data import cli as data_cli
    from fedmrg.data.dataset_dir import MANIFEST, write_federated_dataset

    sources = [parse_source(s) for s in args.source]
    if len({name for name, _ in sources}) != len(sources) and len(sources) > 1:
        raise ConfigError("--source: give two different readers for a two-source federation")
    if len(sources) > 2:
        raise ConfigError(f"--source: one or two sources, got {len(sources)}")
    out: Path = args.out
    targets = [out / p for p in BENCH_PARTITIONS]
    if not args.overwrite and any((t / MANIFEST).exists() for t in targets):
        raise ConfigError(f"{out} already holds a benchmark federation; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    loaded = []
    try:
        for i, (name, path) in enumerate(sources):
            ns = _data_prepare_args(name, path, args, work / f"src{i}")
            (work / f"src{i}").mkdir()
            records, skipped, label_source, source_info, extra = data_cli._load(ns, work / f"src{i}")
            records = [_rebase_images(r, work / f"src{i}", f"src{i}") for r in records]
            loaded.append((name, ns, records, skipped, label_source, source_info, extra))
        manifests = {}
        for kind in BENCH_PARTITIONS:
            parts, site_profiles, table = [], {}, {}
            for name, ns, records, *_ in loaded:
                prefix = f"{name}-" if len(sources) > 1 else ""
                config = PartitionConfig(
                    method="cluster" if kind == "cluster" else "random",
                    num_sites=args.sites,
                    seed=args.seed,
                    unseen_sites=args.unseen_sites,
                    site_names=[f"{prefix}site-{k + 1}" for k in range(args.sites)],
                    unseen_names=[f"{prefix}unseen-{k + 1}" for k in range(args.unseen_sites)],
                )
                part = (
                    partition_records(records, config) if kind == "cluster" else stratified_partition(records, config)
                )
                parts.append(part)
                profiles, table = data_cli._site_profiles(
                    replace_ns(ns, site_profiles=None), config.training_site_names + config.unseen_site_names
                )
                site_profiles |= profiles
            merged = parts[0] if len(parts) == 1 else merge_partitions(parts, replace(parts[0].config, site_names=None))
            target = out / kind
            shutil.rmtree(target, ignore_errors=True)
            for i in range(len(loaded)):  # generated images, hard-linked (one copy on disk for both partitions)
                if (work / f"src{i}" / "images").is_dir():
                    shutil.copytree(work / f"src{i}" / "images", target / "images" / f"src{i}", copy_function=os.link)
            manifests[kind] = write_federated_dataset(
                target,
                merged,
                source={"name": "+".join(n for n, _ in sources), "sources": [lo[5] for lo in loaded]},
                site_profiles=site_profiles,
                profiles={n: table[n].to_dict() for n in set(site_profiles.values())},
                skipped=[s for lo in loaded for s in lo[3]],
                label_source="+".join(sorted({str(lo[4]) for lo in loaded})),
                extra={"benchmark_partition": kind, "bench_prepare": vars_json(args)},
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifests


def _rebase_images(record: StudyRecord, loaded_in: Path, tag: str) -> StudyRecord:
    """Generated images (relative to the folder the source was loaded into) move under ``images/<tag>/`` of each
    partition's directory; real images keep their absolute paths."""
    images = []
    for im in record.images:
        path = Path(im.path)
        if not path.is_absolute() and path.parts[:1] == ("images",):
            path = Path("images", tag, *path.parts[1:])
        elif not path.is_absolute():
            path = (loaded_in / path).resolve()
        images.append(replace(im, path=str(path)))
    return replace(record, images=images)


def replace_ns(ns: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(ns), **changes})


def vars_json(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}


def register(sub: argparse._SubParsersAction) -> None:
    """``fedmrg bench prepare``."""
    p = sub.add_parser(
        "prepare",
        help="write the benchmark federation (clustered and stratified partitions)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", action="append", required=True,
                   help="READER=PATH (e.g. iu-kaggle=../shared/data/iu_xray) or synthetic; give twice for a "
                   "two-source federation")  # fmt: skip
    p.add_argument("--sites", type=int, default=5, help="training sites per source (default 5)")
    p.add_argument("--unseen-sites", type=int, default=1, help="sites per source that never train (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--limit", type=int, help="only the first N studies of each source (a quick trial)")
    p.add_argument("--num-studies", type=int, default=300, help="studies of the `synthetic` source (default 300)")
    p.add_argument("--image-size", type=int, default=128, help="side of rendered images in pixels (default 128)")
    p.add_argument("--out", type=Path, required=True, help="folder for cluster/ and stratified/")
    p.add_argument("--overwrite", action="store_true", help="replace an existing benchmark federation")
    p.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    manifests = prepare_benchmark(args)
    for kind, m in manifests.items():
        sites = ", ".join(f"{e['name']} ({e.get('profile', '?')})" for e in m["sites"])
        print(f"{args.out / kind}: sites {sites}; unseen {[e['name'] for e in m['unseen']]}")
    print(f"benchmark federation written in {time.perf_counter() - t0:.1f} s")
    return 0

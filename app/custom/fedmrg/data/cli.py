"""``fedmrg data``: build a federated dataset directory (``prepare``) and describe one (``inspect``).

Examples::

    fedmrg data prepare --source synthetic --num-studies 300 --sites 3 --unseen-sites 1 --out data/fl_synth
    fedmrg data prepare --source iu-kaggle --input ../shared/data/iu_xray --render-missing \\
        --sites 5 --partition cluster --seed 0 --out data/fl_iu_cluster
    fedmrg data inspect data/fl_iu_cluster --png data/fl_iu_cluster/overview.png

`prepare` opens every image the source lists (decodable, 2-D, DICOM Modality CR / DX / RG) unless
--no-check-images, writes every left-out item with its reason to skipped.csv beside manifest.json, and removes the
IU de-identification marks (XXXX) from the reports unless --keep-deid-marks. Details: docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from fedmrg.data.image_checks import RADIOGRAPH_MODALITIES
from fedmrg.data.partition import PARTITION_METHODS
from fedmrg.errors import ConfigError, DataError

SOURCES: tuple[str, ...] = ("synthetic", "iu-kaggle", "annotation-json", "mimic-cxr", "chexpert-plus", "dicom-dir")


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare and inspect federated datasets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("prepare", help="read a source, partition it into sites and write a dataset directory")
    p.add_argument("--source", required=True, choices=SOURCES, help="reader to use, or `synthetic`")
    p.add_argument("--input", type=Path, help="source path (file or folder; not used by `synthetic`)")
    p.add_argument("--image-root", type=Path, help="folder of the source's images when not beside the reports")
    p.add_argument("--sites", type=int, required=True, help="number of training sites")
    p.add_argument("--partition", choices=PARTITION_METHODS,
                   help="how to split: random, cluster (report text), dirichlet (label skew) or style "
                        "(meta['style']); default: style for synthetic, random otherwise")  # fmt: skip
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default 0.5)")
    p.add_argument("--unseen-sites", type=int, default=0, help="extra sites that never train (default 0)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="in-domain test share per site (default 0.1)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share per site (default 0.1)")
    p.add_argument("--site-names", help="comma-separated training site names = FLARE client names (default site-1..N)")
    p.add_argument("--unseen-names", help="comma-separated unseen site names (default unseen-1..K)")
    p.add_argument("--site-profiles",
                   help="comma-separated device profiles, one per training site (then optionally one per unseen "
                        "site); default cycles clean,soft-blur,low-contrast,bright-noisy,dark-sharp")  # fmt: skip
    p.add_argument("--profiles-file", type=Path, help="YAML with extra device profiles (name: {blur_sigma: ...})")
    p.add_argument("--missing-images", choices=("skip", "keep"),
                   help="studies whose image files are absent: skip them (reader default) or keep them; "
                        "--render-missing implies keep")  # fmt: skip
    p.add_argument(
        "--render-missing",
        action="store_true",
        help="draw an image from the report's labels for every absent image (marked synthetic)",
    )
    p.add_argument("--no-check-images", action="store_true",
                   help="do not open the source's images (by default each is decoded and must be a 2-D radiograph; "
                        "failures are skipped and listed in skipped.csv)")  # fmt: skip
    p.add_argument("--image-modalities", default=",".join(RADIOGRAPH_MODALITIES),
                   help="DICOM Modality codes accepted by the image check, comma-separated, or `any` "
                        "(default CR,DX,RG: projection radiographs)")  # fmt: skip
    p.add_argument("--check-workers", type=int, default=1,
                   help="processes that open images for the check (default 1)")  # fmt: skip
    p.add_argument("--keep-deid-marks", action="store_true",
                   help="keep IU X-ray's de-identification marks (XXXX) in the reports (default: removed, "
                        "fedmrg.data.cleaning.remove_deid_marks; labels are computed before removal either way)")  # fmt: skip
    p.add_argument(
        "--limit",
        type=int,
        help="use only the first N studies the reader returns (a quick trial; recorded in the manifest)",
    )
    p.add_argument("--num-studies", type=int, default=300, help="studies to generate for `synthetic` (default 300)")
    p.add_argument(
        "--label-skew",
        type=float,
        default=0.0,
        help="`synthetic` only: 0 = same finding prevalence at every style/site, up to 1 = strong skew",
    )
    p.add_argument("--image-size", type=int, default=224, help="side of generated images in pixels (default 224)")
    p.add_argument("--seed", type=int, default=0, help="seed of partitioning and generation (default 0)")
    p.add_argument("--out", type=Path, required=True, help="dataset directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset directory at --out")
    p.set_defaults(func=prepare)

    q = sub.add_parser("inspect", help="per-site statistics, heterogeneity and an overview PNG")
    q.add_argument("dir", type=Path, help="dataset directory made by `fedmrg data prepare`")
    q.add_argument("--png", type=Path, help="write label distributions and sample images per site to this PNG")
    q.add_argument("--samples", type=int, default=3, help="sample images per site in the PNG (default 3)")
    q.add_argument("--json", type=Path, help="also write the statistics as JSON")
    q.set_defaults(func=inspect_cmd)


# ----------------------------------------------------------------------------------------------------------------------
# prepare


def prepare(args: argparse.Namespace) -> int:
    from fedmrg.data.dataset_dir import write_federated_dataset
    from fedmrg.data.partition import PartitionConfig, partition_records

    t0 = time.perf_counter()
    method = args.partition or ("style" if args.source == "synthetic" else "random")
    config = PartitionConfig(
        method=method,
        num_sites=args.sites,
        seed=args.seed,
        alpha=args.alpha,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        unseen_sites=args.unseen_sites,
        site_names=_names(args.site_names),
        unseen_names=_names(args.unseen_names),
    )
    site_profiles, profile_table = _site_profiles(args, config.training_site_names + config.unseen_site_names)
    if args.source != "synthetic" and args.input is None:
        raise ConfigError(f"--input is required for --source {args.source}")
    if args.source == "synthetic" and args.num_studies < 1:
        raise ConfigError(f"--num-studies must be >= 1, got {args.num_studies}")
    if args.image_size < 16:
        raise ConfigError(f"--image-size must be >= 16 pixels, got {args.image_size}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.check_workers < 1:
        raise ConfigError(f"--check-workers must be >= 1, got {args.check_workers}")
    _modalities(args.image_modalities)  # refuse a malformed list before any work
    out = args.out
    _check_out_dir(out, args.overwrite)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        records, skipped, label_source, source_info, extra = _load(args, tmp)
        part = partition_records(records, config)
        manifest = write_federated_dataset(
            tmp,
            part,
            source=source_info,
            site_profiles=site_profiles,
            profiles={n: profile_table[n].to_dict() for n in set(site_profiles.values())},
            skipped=skipped,
            label_source=label_source,
            extra=extra,
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _print_prepared(manifest, out, time.perf_counter() - t0)
    return 0


def _modalities(value: str) -> tuple[str, ...] | None:
    """``--image-modalities``: None for ``any``, else upper-case DICOM codes."""
    if value.strip().lower() == "any":
        return None
    codes = tuple(c.strip().upper() for c in value.split(","))
    if not all(c.isalnum() and 1 <= len(c) <= 16 for c in codes):
        raise ConfigError(
            f"--image-modalities {value!r}: give comma-separated DICOM Modality codes (e.g. CR,DX,RG) or `any`"
        )
    return codes


def _names(value: str | None) -> list[str] | None:
    return None if value is None else [n.strip() for n in value.split(",")]


def _site_profiles(args: argparse.Namespace, all_sites: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """Site -> profile name, and the profile table (built-ins + --profiles-file); validated before any work."""
    from fedmrg.data.site_transforms import default_profile_names, get_profile, load_site_profiles, parse_site_profiles

    table = load_site_profiles(args.profiles_file) if args.profiles_file else parse_site_profiles(None)
    names = default_profile_names(len(all_sites))
    if args.site_profiles:
        given = [n.strip() for n in args.site_profiles.split(",")]
        if len(given) not in (args.sites, len(all_sites)):
            raise ConfigError(
                f"--site-profiles lists {len(given)} profile(s); give one per training site ({args.sites}) "
                f"or one per training and unseen site ({len(all_sites)})"
            )
        names[: len(given)] = given
    for n in names:
        get_profile(n, table)  # raises listing the valid names
    return dict(zip(all_sites, names, strict=True)), table


def _check_out_dir(out: Path, overwrite: bool) -> None:
    from fedmrg.data.dataset_dir import MANIFEST

    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: --out exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: --out is not empty; pass --overwrite to replace a dataset directory there")
        if not (out / MANIFEST).is_file():
            raise DataError(
                f"{out}: --overwrite only replaces a FedMRG dataset directory (one with {MANIFEST}); "
                "this one holds other files, so remove it yourself or choose another --out"
            )


def _load(args: argparse.Namespace, work: Path) -> tuple[list, list, str | None, dict[str, Any], dict[str, Any]]:
    """Records, skipped items, label source, the manifest's ``source`` entry and its further entries
    (``image_check``, ``report_text``); images generated under ``work``.

    Order: read, ``--limit``, image check, label (on the text as written), remove de-identification marks, render.
    """
    from fedmrg.data.readers.common import absolute

    input_path = absolute(args.input) if args.input else None
    image_root = absolute(args.image_root) if args.image_root else None
    source_info: dict[str, Any] = {
        "name": args.source,
        "input": str(input_path) if input_path else None,
        "image_root": str(image_root) if image_root else None,
    }
    extra: dict[str, Any] = {}
    if args.source == "synthetic":
        from fedmrg.data.synthetic import make_synthetic_studies

        n_styles = args.sites + args.unseen_sites
        print(f"generating {args.num_studies} synthetic studies in {n_styles} reporting styles ...", file=sys.stderr)
        records = make_synthetic_studies(
            args.num_studies,
            n_styles=n_styles,
            seed=args.seed,
            image_dir=work / "images",
            image_size=args.image_size,
            label_skew=args.label_skew,
        )
        source_info.update(
            num_studies=args.num_studies, n_styles=n_styles, image_size=args.image_size, label_skew=args.label_skew
        )
        extra["image_check"] = {"enabled": False, "reason": "images generated by fedmrg"}
        extra["report_text"] = _remove_deid_marks(records, keep=args.keep_deid_marks)
        return records, [], "synthetic", source_info, extra

    from fedmrg.data.readers import ReadResult, read_source

    options: dict[str, Any] = {}
    if image_root is not None:
        options["image_root"] = image_root
    missing_images = "keep" if args.render_missing else args.missing_images
    if missing_images:
        options["missing_images"] = missing_images
    print(f"reading {args.source} from {input_path} ...", file=sys.stderr)
    result = read_source(args.source, input_path, **options)
    skipped = list(result.skipped)
    records = result.records
    if args.limit is not None and len(records) > args.limit:
        source_info["limit"] = args.limit
        source_info["studies_read"] = len(records)
        records = records[: args.limit]
    if args.no_check_images:
        extra["image_check"] = {"enabled": False, "reason": "--no-check-images"}
    else:
        from fedmrg.data.image_checks import check_record_images

        modalities = _modalities(args.image_modalities)
        checked = check_record_images(
            records, modalities=modalities, missing_images=missing_images or "skip", workers=args.check_workers
        )
        records, skipped = checked.records, skipped + checked.skipped
        extra["image_check"] = checked.summary(modalities)
    if not records:
        summary = ReadResult(skipped=skipped).skip_summary()
        raise DataError(
            f"{input_path}: the {args.source} reader found no usable studies (skipped: {summary or 'none'})"
        )
    label_source = _label(records)
    extra["report_text"] = _remove_deid_marks(records, keep=args.keep_deid_marks)
    if args.render_missing:
        n = _render_missing(records, work, seed=args.seed, size=args.image_size)
        source_info["rendered_images"] = n
    return records, skipped, label_source, source_info, extra


def _remove_deid_marks(records: list, *, keep: bool) -> dict[str, Any]:
    """Remove de-identification marks from every record's findings and impression, in place (unless ``keep``);
    returns the manifest's ``report_text`` entry."""
    if keep:
        return {"deid_marks": "kept"}
    from fedmrg.data.cleaning import remove_deid_marks

    changed = 0
    for r in records:
        findings, impression = remove_deid_marks(r.findings), remove_deid_marks(r.impression)
        if (findings, impression) != (r.findings, r.impression):
            r.findings, r.impression = findings, impression
            changed += 1
    return {"deid_marks": "removed", "function": "fedmrg.data.cleaning.remove_deid_marks", "studies_changed": changed}


def _label(records: list) -> str:
    """Label records that have no labels with the rule-based labeler; returns the manifest's ``label_source``."""
    todo = [r for r in records if r.labels is None]
    if not todo:
        return "reader"
    from tqdm import tqdm

    from fedmrg.labels import label_reports

    batch = 256
    with tqdm(total=len(todo), desc="labelling reports", unit="report", file=sys.stderr) as bar:
        for i in range(0, len(todo), batch):
            chunk = todo[i : i + batch]
            for r, labels in zip(chunk, label_reports([r.report for r in chunk]), strict=True):
                r.labels = labels
            bar.update(len(chunk))
    return "fedmrg.labels" if len(todo) == len(records) else "reader+fedmrg.labels"


def _render_missing(records: list, work: Path, *, seed: int, size: int) -> int:
    """Give every study without a frontal image one drawn from its labels (``render_for_records``), in place.

    The renderer draws frontal views only; absent lateral images stay listed in ``meta["missing_images"]``. Drawn
    studies are marked synthetic and their PNGs go to ``work/images`` (paths relative to ``work``). Returns how many
    images were drawn.
    """
    from fedmrg.data.records import FRONTAL_VIEWS
    from fedmrg.data.synthetic import render_for_records

    todo = [i for i, r in enumerate(records) if not any(im.view in FRONTAL_VIEWS for im in r.images)]
    rendered = render_for_records([records[i] for i in todo], work / "images", seed=seed, size=size)
    for i, r in zip(todo, rendered, strict=True):
        still_missing = [m for m in r.meta.get("missing_images", []) if m.get("view") not in FRONTAL_VIEWS]
        if still_missing:
            r.meta["missing_images"] = still_missing
        else:
            r.meta.pop("missing_images", None)
        records[i] = r
    return len(todo)


def _print_prepared(manifest: dict[str, Any], out: Path, seconds: float) -> None:
    p = manifest["partition"]
    print(f"wrote {out} ({p['method']} partition, seed {p['seed']}, {seconds:.1f} s)")
    for s in manifest["sites"]:
        tr, va = s["splits"]["train"], s["splits"]["val"]
        print(f"  {s['name']:<14} {s['profile']:<13} train {tr['studies']:>6}  val {va['studies']:>5}")
    print(f"  {'test':<14} {'':<13} {manifest['test']['studies']:>12}")
    for s in manifest["unseen"]:
        print(f"  {s['name']:<14} {s['profile']:<13} test {s['splits']['test']['studies']:>7}  (unseen)")
    check = manifest.get("image_check", {})
    if check.get("enabled"):
        print(f"image check: {check['checked']} image(s) opened, {check['failed']} failed")
    else:
        print(f"image check: off ({check.get('reason', 'not recorded')})")
    skipped = manifest["skipped"]
    if skipped:
        print(f"skipped {manifest['skipped_total']} input item(s), each listed in {out / manifest['skipped_file']}:")
        for k, v in sorted(skipped.items(), key=lambda kv: -kv[1]):
            print(f"  {v:>7}  {k}")
        if "image not found" in skipped or "no usable images" in skipped:
            print("  (studies without image files: pass --render-missing, or --missing-images keep for report-only)")
    else:
        print("skipped 0 input items")


# ----------------------------------------------------------------------------------------------------------------------
# inspect


def inspect_cmd(args: argparse.Namespace) -> int:
    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.data.dataset_stats import format_summary, plot_dataset, summarize

    ds = FederatedDataset.open(args.dir)
    summary = summarize(ds)
    print(format_summary(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if args.png:
        if args.samples < 0:
            raise ConfigError(f"--samples must be >= 0, got {args.samples}")
        print(f"wrote {plot_dataset(ds, args.png, samples_per_site=args.samples)}")
    return 0

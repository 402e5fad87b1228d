"""The federated dataset directory: what ``fedmrg data prepare`` writes and every site's trainer reads.

Layout::

    DIR/
      manifest.json                    what is in here and how it was made (see below)
      skipped.csv                      every input item left out, with its reason (columns ``item``, ``reason``)
      sites/<site>/train.jsonl         one StudyRecord per line (fedmrg.data.records)
      sites/<site>/val.jsonl
      test.jsonl                       in-domain test set, drawn from every training site, patient-disjoint
      unseen/<site>/test.jsonl         studies of sites that never train (unseen-domain evaluation)
      images/...                       images FedMRG generated (synthetic or rendered), when any

Image paths inside the JSONL files are relative to the JSONL file's directory when the image lies inside DIR (so the
directory can be moved or copied to a site as a whole) and absolute otherwise (real images stay where they are).

``manifest.json`` holds: ``format`` / ``format_version``, ``fedmrg_version``, ``source`` (reader name, input path,
image root), ``partition`` (method and its parameters, seed), ``observations`` (label order), ``profiles`` (device
profile parameters used), ``sites`` (name, device profile and per-split statistics: studies, patients, images,
synthetic studies, labelled studies, positive count per observation), ``test``, ``unseen``, ``skipped`` (count per
reason), ``skipped_total``, ``skipped_file``, ``synthetic`` (True when any study or image was generated),
``label_source``, and what ``fedmrg data prepare`` checked or cleaned (``image_check``, ``report_text``).

Every image path is checked when the directory is written and again when a split is read: a missing image is an
error naming the split file, the study and the path, never a failure in the middle of training.

A site in a real federation only needs its own ``sites/<site>/`` folder and the manifest; the site names are the
FLARE client names.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmrg import __version__
from fedmrg.data.partition import Partition
from fedmrg.data.readers.base import ReadResult, Skip
from fedmrg.data.records import StudyRecord, read_records, write_records
from fedmrg.errors import DataError
from fedmrg.observations import OBSERVATIONS

MANIFEST = "manifest.json"
SKIPPED_CSV = "skipped.csv"
FORMAT = "fedmrg-federated-dataset"
FORMAT_VERSION = 1
SITE_SPLITS: tuple[str, ...] = ("train", "val")


def split_stats(records: Sequence[StudyRecord]) -> dict[str, Any]:
    """Counts for the manifest: studies, patients, images, synthetic studies, labelled studies, positives per label."""
    positives = dict.fromkeys(OBSERVATIONS, 0)
    labelled = 0
    for r in records:
        if r.labels is not None:
            labelled += 1
            for o in OBSERVATIONS:
                if r.labels.get(o) == 1:
                    positives[o] += 1
    return {
        "studies": len(records),
        "patients": len({r.patient_id for r in records}),
        "images": sum(len(r.images) for r in records),
        "synthetic": sum(r.synthetic for r in records),
        "labelled": labelled,
        "positives": positives,
    }


def write_federated_dataset(
    out_dir: str | Path,
    partition: Partition,
    *,
    source: Mapping[str, Any],
    site_profiles: Mapping[str, str],
    profiles: Mapping[str, Mapping[str, float]],
    skipped: Sequence[Skip] = (),
    label_source: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``partition`` into ``out_dir`` in the layout above and return the manifest.

    Args:
        out_dir: target directory (created; files of the layout are replaced).
        partition: sites, test set and unseen sites (must be patient-disjoint; checked again here).
        source: ``{"name": reader, "input": path or None, "image_root": path or None, ...}``.
        site_profiles: device profile name of every training and unseen site.
        profiles: parameters of each profile named in ``site_profiles`` (``name -> SiteProfile fields``).
        skipped: every input item left out, with its reason: written to ``skipped.csv``, counted per reason
            (the text before the first ``:``) in the manifest.
        label_source: where the labels come from (``"reader"``, ``"fedmrg.labels"``, ``"synthetic"``), or None.
        extra: further manifest entries (e.g. ``image_check``, ``report_text``); may not replace the ones above.

    Image paths of the records must be absolute, or relative to ``out_dir``.

    Raises:
        DataError: an image path of a record does not exist (names the study and the path), or the partition is
            not patient-disjoint.
    """
    out = Path(out_dir)
    partition.check_patient_disjoint()
    all_sites = list(partition.sites) + list(partition.unseen)
    missing = [s for s in all_sites if s not in site_profiles]
    if missing:
        raise DataError(f"no device profile given for site(s) {missing}")
    undefined = sorted({site_profiles[s] for s in all_sites} - set(profiles))
    if undefined:
        raise DataError(f"profile(s) {undefined} are used by a site but not defined")
    _check_images_exist(
        (r for _, recs in partition.groups() for r in recs),
        base=out,
        where=f"{out}: records to write",
        remedy="image paths must be absolute or relative to the dataset directory",
    )

    def _write(records: list[StudyRecord], rel: str) -> dict[str, Any]:
        path = out / rel
        write_records((_relative_images(r, out, path.parent) for r in records), path)
        return {"file": rel, **split_stats(records)}

    sites = []
    for name, s in partition.sites.items():
        splits = {
            "train": _write(s.train, f"sites/{name}/train.jsonl"),
            "val": _write(s.val, f"sites/{name}/val.jsonl"),
        }
        sites.append({"name": name, "profile": site_profiles[name], "splits": splits})
    unseen = [
        {"name": n, "profile": site_profiles[n], "splits": {"test": _write(recs, f"unseen/{n}/test.jsonl")}}
        for n, recs in partition.unseen.items()
    ]
    test = _write(partition.test, "test.jsonl")
    skip_counts = ReadResult(skipped=list(skipped)).skip_summary()
    with (out / SKIPPED_CSV).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item", "reason"])
        w.writerows([sk.item, sk.reason] for sk in skipped)
    any_synthetic = any(r.synthetic for _, recs in partition.groups() for r in recs)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fedmrg_version": __version__,
        "source": dict(source),
        "partition": partition.config.params(),
        "seed": partition.config.seed,
        "synthetic": any_synthetic,
        "label_source": label_source,
        "observations": list(OBSERVATIONS),
        "profiles": {n: dict(profiles[n]) for n in sorted({site_profiles[s] for s in all_sites})},
        "sites": sites,
        "test": test,
        "unseen": unseen,
        "skipped": skip_counts,
        "skipped_total": len(skipped),
        "skipped_file": SKIPPED_CSV,
    }
    clash = sorted(set(extra or {}) & set(manifest))
    if clash:
        raise ValueError(f"`extra` may not replace manifest entries {clash}")
    manifest.update(extra or {})
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def _relative_images(r: StudyRecord, root: Path, jsonl_dir: Path) -> StudyRecord:
    """Images under ``root`` become relative to ``jsonl_dir``; others stay absolute."""
    if not r.images:
        return r
    root_abs = root.resolve()
    d = r.to_dict()
    for im in d["images"]:
        p = Path(im["path"])
        p = p if p.is_absolute() else root / p
        try:
            p.resolve().relative_to(root_abs)
        except ValueError:
            im["path"] = str(p)
        else:
            im["path"] = os.path.relpath(p.resolve(), jsonl_dir.resolve())
    return StudyRecord.from_dict(d)


class FederatedDataset:
    """A federated dataset directory opened for reading (layout in the module docstring).

    >>> ds = FederatedDataset.open("data/fl_iu")          # doctest: +SKIP
    >>> ds.sites, len(ds.split("site-1", "train"))        # doctest: +SKIP
    """

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self._entries: dict[str, dict[str, Any]] = {}
        for kind in ("sites", "unseen"):
            for e in manifest[kind]:
                self._entries[e["name"]] = e

    @classmethod
    def open(cls, root: str | Path) -> FederatedDataset:
        """Open ``root`` (made absolute, so records read from it name absolute image paths); raises DataError when
        it, its manifest or a split file is missing or malformed."""
        root = Path(os.path.abspath(Path(root).expanduser()))
        if not root.is_dir():
            raise DataError(f"{root}: federated dataset directory not found")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise DataError(f"{mpath}: manifest not found; is {root} a directory made by `fedmrg data prepare`?")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{mpath}: manifest is not valid JSON: {e}") from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DataError(f"{mpath}: not a FedMRG dataset manifest (`format` must be {FORMAT!r})")
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise DataError(
                f"{mpath}: `format_version` {version!r} is not supported by fedmrg {__version__} "
                f"(reads up to {FORMAT_VERSION}); upgrade fedmrg"
            )
        for key in ("sites", "unseen", "test", "profiles"):
            if key not in manifest:
                raise DataError(f"{mpath}: manifest lacks `{key}`")
        try:
            for kind in ("sites", "unseen"):
                for e in manifest[kind]:
                    if not isinstance(e["name"], str) or not isinstance(e["splits"], dict):
                        raise TypeError("`name` must be a string and `splits` a mapping")
                    for s in e["splits"].values():
                        _check_file(root, s["file"], mpath)
            _check_file(root, manifest["test"]["file"], mpath)
        except (KeyError, TypeError) as e:
            raise DataError(f"{mpath}: malformed site entry: {e}") from e
        return cls(root, manifest)

    @property
    def sites(self) -> tuple[str, ...]:
        """Training site names, in manifest order (= FLARE client names)."""
        return tuple(e["name"] for e in self.manifest["sites"])

    @property
    def unseen_sites(self) -> tuple[str, ...]:
        """Sites that never train (evaluation only)."""
        return tuple(e["name"] for e in self.manifest["unseen"])

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("synthetic"))

    def profile(self, site: str) -> str:
        """Device profile name of ``site``."""
        return self._entry(site)["profile"]

    def profile_params(self, site: str) -> dict[str, float]:
        """Device profile parameters of ``site`` (``SiteProfile`` fields)."""
        return dict(self.manifest["profiles"][self.profile(site)])

    def site_transform(self, site: str, keys: Sequence[str] | None = None) -> Any:
        """The site's device transform: ``SiteDevice`` (array) or, given ``keys``, ``SiteDeviced`` (dictionary)."""
        from fedmrg.data.site_transforms import SiteDevice, SiteDeviced

        name = self.profile(site)
        custom = {name: self.profile_params(site)}
        if keys is None:
            return SiteDevice(profile=name, site=site, profiles=custom)
        return SiteDeviced(keys, profile=name, site=site, profiles=custom)

    def split(self, site: str, split: str = "train") -> list[StudyRecord]:
        """Records of ``site``'s ``split`` (``train`` / ``val``; ``test`` for unseen sites), image paths absolute.

        Raises:
            DataError: an image listed in the split file does not exist (names the file, a study, the path and the
                count).
        """
        splits = self._entry(site)["splits"]
        if split not in splits:
            raise DataError(f"site {site!r} has no split {split!r}; it has {', '.join(splits)}")
        return self._read(splits[split]["file"])

    def test(self) -> list[StudyRecord]:
        """The in-domain test set (all training sites mixed); same checks as :meth:`split`."""
        return self._read(self.manifest["test"]["file"])

    def _read(self, rel: str) -> list[StudyRecord]:
        path = self.root / rel
        records = read_records(path)
        _check_images_exist(
            records,
            base=path.parent,
            where=str(path),
            remedy="restore the images at these paths, or prepare the dataset again with `fedmrg data prepare`",
        )
        return records

    def stats(self, site: str, split: str) -> dict[str, Any]:
        """Manifest statistics of one split (``studies``, ``patients``, ``positives``, ...)."""
        if site == "test":
            return self.manifest["test"]
        return self._entry(site)["splits"][split]

    def parts(self) -> Iterator[tuple[str, str, list[StudyRecord]]]:
        """Every part as ``(site, split, records)``; the shared test set is ``("test", "test", ...)``."""
        for site in self.sites:
            for sp in SITE_SPLITS:
                yield site, sp, self.split(site, sp)
        yield "test", "test", self.test()
        for site in self.unseen_sites:
            yield site, "test", self.split(site, "test")

    def _entry(self, site: str) -> dict[str, Any]:
        if site not in self._entries:
            raise DataError(
                f"{self.root}: no site {site!r}; training sites: {', '.join(self.sites) or 'none'}; "
                f"unseen sites: {', '.join(self.unseen_sites) or 'none'}"
            )
        return self._entries[site]


def _check_images_exist(records: Iterable[StudyRecord], *, base: Path, where: str, remedy: str) -> None:
    """DataError naming ``where``, the first missing image (with its study) and the count, when any is missing.

    Relative paths are taken relative to ``base``. One ``stat`` per image: about 1 s per 100 k images on a local disk.
    """
    missing: list[tuple[str, str]] = []
    total = 0
    for r in records:
        for im in r.images:
            total += 1
            p = Path(im.path)
            if not (p if p.is_absolute() else base / p).is_file():
                missing.append((r.study_id, im.path))
    if missing:
        study, path = missing[0]
        raise DataError(
            f"{where}: {len(missing)} of {total} image file(s) listed do not exist, e.g. {path} (study {study}); "
            f"{remedy}"
        )


def _check_file(root: Path, rel: str, mpath: Path) -> None:
    if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise DataError(f"{mpath}: split file {rel!r} must be a relative path inside {root}")
    if not (root / rel).is_file():
        raise DataError(f"{mpath}: split file {rel} listed in the manifest is missing from {root}")

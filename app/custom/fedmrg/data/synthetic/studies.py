"""Build synthetic study sets: labels, a styled report and a rendered PNG per study, as :class:`StudyRecord`.

Image paths in the returned records are *relative to* ``image_dir.parent`` (e.g. ``images/syn-s0-000001.png``):
write the records with :func:`fedmrg.data.records.write_records` to a JSONL file in ``image_dir.parent`` and
:func:`fedmrg.data.records.read_records` resolves them. Every output depends only on ``seed`` (and on the
study's position), never on the number of workers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from fedmrg.data.records import ImageRef, StudyRecord
from fedmrg.data.synthetic.layout import sample_layout
from fedmrg.data.synthetic.renderer import render_info, render_study_image
from fedmrg.data.synthetic.reports import report_style, write_report
from fedmrg.data.synthetic.sampling import sample_findings, style_prevalence
from fedmrg.errors import DataError
from fedmrg.observations import OBSERVATIONS

#: zlib level for PNGs: level 1 is ~4x faster than PIL's default 6 and ~15 % larger on these images.
PNG_COMPRESS_LEVEL = 1


def _study_seed(seed: int, i: int) -> int:
    """Render seed of study ``i``: a 31-bit integer from the set seed and the position."""
    return int(np.random.SeedSequence([int(seed), 101, int(i)]).generate_state(1)[0] >> 1)


_Job = tuple[int, int, int, int, float, str, str]  # i, seed, n_styles, image_size, label_skew, image_dir, view


def _build_one(job: _Job) -> StudyRecord:
    i, seed, n_styles, image_size, label_skew, image_dir, view = job
    style = i % n_styles
    study_seed = _study_seed(seed, i)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 202, int(i)]))
    present = sample_findings(rng, style_prevalence(style, label_skew=label_skew, seed=seed))
    layout = sample_layout(present, study_seed)
    report = write_report(present, layout, report_style(style), rng)
    image = render_study_image(present, seed=study_seed, size=image_size, view=view)  # type: ignore[arg-type]
    study_id = f"syn-s{seed}-{i:06d}"
    out_dir = Path(image_dir)
    Image.fromarray(image).save(out_dir / f"{study_id}.png", compress_level=PNG_COMPRESS_LEVEL)
    return StudyRecord(
        study_id=study_id,
        patient_id=f"synp-s{seed}-{i:06d}",
        images=[ImageRef(f"{out_dir.name}/{study_id}.png", view)],
        findings=report.findings,
        impression=report.impression,
        source="synthetic",
        labels=report.labels,
        synthetic=True,
        meta={
            "style": style,
            "renderer": render_info(study_seed, image_size, view),
        },
    )


def _build_chunk(chunk: list[_Job]) -> list[StudyRecord]:
    with threadpool_limits(1):  # tiny matrix products: BLAS threads only add overhead
        return [_build_one(a) for a in chunk]


def make_synthetic_studies(
    n_studies: int,
    *,
    n_styles: int,
    seed: int,
    image_dir: str | Path,
    image_size: int = 224,
    label_skew: float = 0.0,
    view: str = "PA",
    workers: int = 1,
    progress: bool = True,
) -> list[StudyRecord]:
    """Generate ``n_studies`` fully synthetic studies: sampled labels, a report in style ``i % n_styles`` and a PNG.

    Args:
        n_studies: number of studies (>= 1).
        n_styles: number of reporting styles (sites); study ``i`` gets style ``i % n_styles`` (``meta["style"]``).
        seed: everything (labels, reports, pixels, ids) is a function of ``seed`` and the study position.
        image_dir: folder for the PNGs (created); record image paths are relative to its parent.
        image_size: PNG side in pixels.
        label_skew: 0 = every style has the same finding prevalence; up to 1 = each style its own Dirichlet mix
            of clinical scenarios and normal fraction (label skew between sites).
        view: ``"PA"`` or ``"AP"``.
        workers: processes (1 = in this process); results are identical for any value.
        progress: show a tqdm bar over studies.

    Returns:
        the records, in study order, with ``synthetic=True``, ``source="synthetic"``, ``labels`` as the report
        states them and ``meta={"style": k, "renderer": {"seed", "size", "view", "version"}}``.
    """
    if n_studies < 1 or n_styles < 1:
        raise ValueError(f"`n_studies` and `n_styles` must be >= 1, got {n_studies} and {n_styles}")
    if workers < 1:
        raise ValueError(f"`workers` must be >= 1, got {workers}")
    if view not in ("PA", "AP"):
        raise ValueError(f"`view` must be 'PA' or 'AP', got {view!r}")
    style_prevalence(0, label_skew=label_skew, seed=seed)  # validates label_skew early
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        (i, int(seed), n_styles, int(image_size), float(label_skew), str(image_dir), view) for i in range(n_studies)
    ]
    bar = tqdm(total=n_studies, desc="synthetic studies", unit="study", disable=not progress)
    out: list[StudyRecord] = []
    chunk = 50
    chunks = [jobs[k : k + chunk] for k in range(0, len(jobs), chunk)]
    if workers == 1:
        for c in chunks:
            out += _build_chunk(c)
            bar.update(len(c))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for recs in pool.map(_build_chunk, chunks):  # map keeps chunk order: output independent of workers
                out += recs
                bar.update(len(recs))
    bar.close()
    return out


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _render_name(study_id: str) -> str:
    """A file name for ``study_id`` that is safe on every OS and unique (short hash of the exact id)."""
    digest = hashlib.sha1(study_id.encode("utf-8")).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', study_id)[:80]}-{digest}.png"


def _stable_seed(seed: int, study_id: str) -> int:
    h = hashlib.sha256(f"{int(seed)}:{study_id}".encode()).digest()
    return int.from_bytes(h[:4], "little") >> 1


def render_for_records(
    records: Iterable[StudyRecord],
    image_dir: str | Path,
    *,
    seed: int,
    size: int = 224,
    labels_fn: Callable[[str], dict[str, int | None]] | None = None,
    view: str = "PA",
    progress: bool = True,
) -> list[StudyRecord]:
    """Attach a rendered frontal image to each (report-only) record, drawn from the record's labels.

    Args:
        records: studies with reports (e.g. IU X-ray, whose images are absent here).
        image_dir: folder for the PNGs (created); image paths are relative to its parent.
        seed: with the study id, fixes each image (same study -> same image, whatever the order).
        size: PNG side in pixels.
        labels_fn: labeler applied to ``record.report`` (e.g. :func:`fedmrg.labels.label_report`); without it
            ``record.labels`` is used. A record whose labels were absent gets the labeler's labels.
        view: ``"PA"`` or ``"AP"``.
        progress: show a tqdm bar.

    Returns:
        copies of the records with ``images`` = [the rendered PNG], ``synthetic=True`` and
        ``meta["image"] = "rendered from report labels"`` plus ``meta["renderer"]`` (seed, size, view, version,
        ``labels_from``); images the record listed before are kept in ``meta["replaced_images"]``.

    Raises:
        DataError: records without labels while ``labels_fn`` is None (names how many and the first ids), or
            two records with the same study id.
    """
    records = list(records)
    if labels_fn is None:
        missing = [r.study_id for r in records if r.labels is None]
        if missing:
            raise DataError(
                f"{len(missing)} record(s) have no labels and no `labels_fn` was given (first: {missing[:5]}); "
                "pass labels_fn=fedmrg.labels.label_report to label their reports"
            )
    seen: set[str] = set()
    dup = [r.study_id for r in records if r.study_id in seen or seen.add(r.study_id)]  # type: ignore[func-returns-value]
    if dup:
        raise DataError(f"duplicate study ids in records: {dup[:5]}")
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    out: list[StudyRecord] = []
    with threadpool_limits(1):
        for r in tqdm(records, desc="rendering images", unit="study", disable=not progress):
            if labels_fn is not None:
                labels, source = labels_fn(r.report), "labels_fn"
            else:
                labels, source = r.labels, "record.labels"
            labels = {k: v for k, v in (labels or {}).items() if k in OBSERVATIONS}
            s = _stable_seed(seed, r.study_id)
            name = _render_name(r.study_id)
            Image.fromarray(render_study_image(labels, seed=s, size=size, view=view)).save(  # type: ignore[arg-type]
                image_dir / name, compress_level=PNG_COMPRESS_LEVEL
            )
            meta = dict(r.meta)
            meta["image"] = "rendered from report labels"
            meta["renderer"] = {**render_info(s, size, view), "labels_from": source}
            if r.images:
                meta["replaced_images"] = [im.path for im in r.images]
            out.append(
                replace(
                    r,
                    images=[ImageRef(f"{image_dir.name}/{name}", view)],
                    synthetic=True,
                    labels=r.labels if r.labels is not None else labels,
                    meta=meta,
                )
            )
    return out


def label_agreement(records: Sequence[StudyRecord], labels_fn: Callable[[str], dict[str, int | None]]) -> float:
    """Fraction of (study, observation) pairs where ``labels_fn(report)`` equals the record's labels."""
    agree = total = 0
    for r in records:
        got = labels_fn(r.report)
        for name in OBSERVATIONS:
            total += 1
            agree += got.get(name) == (r.labels or {}).get(name)
    return agree / max(total, 1)

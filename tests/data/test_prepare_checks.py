"""What ``fedmrg data prepare`` checks before it writes: absolute image paths (relative ``--input``), every image
opened (truncated DICOM, CT / MR in a chest X-ray source, text named ``.png``), every skip listed in ``skipped.csv``,
and a dataset whose images went missing refused when it is read, naming the file."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fedmrg.cli import main
from fedmrg.data.dataset_dir import SKIPPED_CSV, FederatedDataset
from fedmrg.data.image_checks import check_record_images, image_problem
from fedmrg.data.images import load_image
from fedmrg.data.records import ImageRef, StudyRecord
from fedmrg.errors import DataError

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
# Made-up report templates (not taken from any dataset).
REPORTS = ["The heart is enlarged. Lungs are clear.", "Small left pleural effusion.", "Normal chest. No effusion."]


def _iu_folder(root: Path, n: int = 12, *, bad: dict[int, bytes] | None = None) -> Path:
    """IU-Kaggle layout with real 48x48 PNGs (one frontal per study); ``bad`` replaces some files' bytes."""
    folder = root / "iu"
    (folder / "images").mkdir(parents=True)
    with (folder / "indiana_reports.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"])
        for i in range(1, n + 1):
            w.writerow([i, "normal", "normal", "", "", "", f"{REPORTS[i % 3]} Study {i}.", ""])
    with (folder / "indiana_projections.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "filename", "projection"])
        for i in range(1, n + 1):
            w.writerow([i, f"{i}_IM-1.dcm.png", "Frontal"])
            png = folder / "images" / f"{i}_IM-1.dcm.png"
            Image.fromarray(np.full((48, 48), 20 * (i % 10), dtype=np.uint8)).save(png)
            if bad and i in bad:
                png.write_bytes(bad[i])
    return folder


def _dicom(path: Path, *, modality: str, study: str, patient: str, truncate: int = 0, frames: int = 1) -> Path:
    """A 32x32 single-frame DICOM with a sidecar report ``<study>.txt``; ``truncate`` cuts bytes off its end."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = DX_STORAGE, sop
    ds.SOPClassUID, ds.SOPInstanceUID = DX_STORAGE, sop
    ds.StudyInstanceUID, ds.PatientID, ds.Modality, ds.ViewPosition = study, patient, modality, "PA"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 32, 32, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = (np.arange(32 * 32 * frames, dtype=np.uint16) % 4096).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    if truncate:
        path.write_bytes(path.read_bytes()[:-truncate])
    (path.parent / f"{study}.txt").write_text(f"FINDINGS: {REPORTS[int(study[-1]) % 3]}")
    return path


def _prepare(*argv: str) -> int:
    return main(["data", "prepare", *argv])


def _skipped_rows(out: Path) -> list[dict[str, str]]:
    with (out / SKIPPED_CSV).open(newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ relative paths


def test_relative_input_gives_paths_that_work_from_another_directory(tmp_path, monkeypatch, capsys):
    _iu_folder(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    argv = ["--source", "iu-kaggle", "--input", "iu", "--sites", "2", "--seed", "1", "--out", "ds"]
    assert _prepare(*argv) == 0
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ds = FederatedDataset.open(tmp_path / "work" / "ds")
    records = [r for _, _, recs in ds.parts() for r in recs]
    assert len(records) == 12
    for r in records:
        (im,) = r.images
        assert Path(im.path).is_absolute() and Path(im.path).is_file(), im.path
        assert load_image(im.path).shape == (48, 48)
    assert ds.manifest["source"]["input"] == str(tmp_path / "work" / "iu")


def test_reading_refuses_a_dataset_whose_images_are_missing(tmp_path, capsys):
    src, out = _iu_folder(tmp_path), tmp_path / "ds"
    assert _prepare("--source", "iu-kaggle", "--input", str(src), "--sites", "2", "--out", str(out)) == 0
    capsys.readouterr()
    ds = FederatedDataset.open(out)
    victim = ds.split("site-1", "train")[0]
    Path(victim.images[0].path).unlink()
    with pytest.raises(DataError) as e:
        ds.split("site-1", "train")
    msg = str(e.value)
    assert str(out / "sites" / "site-1" / "train.jsonl") in msg and "1 of " in msg
    assert victim.images[0].path in msg and f"study {victim.study_id}" in msg
    assert main(["data", "inspect", str(out)]) == 1
    assert "image file(s) listed do not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ image checks


def test_problem_images_are_skipped_and_listed(tmp_path, capsys):
    src_png = tmp_path / "probe.png"
    Image.fromarray(np.zeros((48, 48), dtype=np.uint8)).save(src_png)
    truncated_png = src_png.read_bytes()[:40]
    src = _iu_folder(tmp_path, bad={2: b"this is a text file, not a PNG\n", 5: truncated_png})
    out = tmp_path / "ds"
    assert _prepare("--source", "iu-kaggle", "--input", str(src), "--sites", "2", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["image_check"] == {"enabled": True, "checked": 12, "failed": 2, "modalities": ["CR", "DX", "RG"]}
    rows = _skipped_rows(out)
    by_item = {r["item"]: r["reason"] for r in rows}
    assert by_item[str(src / "images" / "2_IM-1.dcm.png")].startswith("unreadable image: cannot identify image file")
    assert by_item[str(src / "images" / "5_IM-1.dcm.png")].startswith("unreadable image: ")
    assert by_item["study 2"].startswith("no usable images") and by_item["study 5"].startswith("no usable images")
    assert len(rows) == 4 == m["skipped_total"]
    assert m["skipped"] == {"unreadable image": 2, "no usable images": 2} and m["skipped_file"] == "skipped.csv"
    assert f"skipped 4 input item(s), each listed in {out / 'skipped.csv'}" in printed
    assert "image check: 12 image(s) opened, 2 failed" in printed
    kept = {r.study_id for _, _, recs in FederatedDataset.open(out).parts() for r in recs}
    assert kept == {str(i) for i in range(1, 13)} - {"2", "5"}


def test_no_check_images_lets_them_through_and_says_so(tmp_path, capsys):
    src = _iu_folder(tmp_path, bad={2: b"this is a text file, not a PNG\n"})
    out = tmp_path / "ds"
    argv = ["--source", "iu-kaggle", "--input", str(src), "--sites", "2", "--no-check-images", "--out", str(out)]
    assert _prepare(*argv) == 0
    assert "image check: off (--no-check-images)" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["image_check"] == {"enabled": False, "reason": "--no-check-images"} and m["skipped_total"] == 0
    assert _skipped_rows(out) == []
    assert len([r for _, _, recs in FederatedDataset.open(out).parts() for r in recs]) == 12


def test_dicom_folder_truncated_ct_and_mr_are_refused(tmp_path, capsys):
    root = tmp_path / "pacs"
    for i in range(1, 7):  # six good chest radiographs, alternating CR and DX
        _dicom(root / f"good{i}.dcm", modality="CR" if i % 2 else "DX", study=f"1.2.826.1.{i}", patient=f"p{i}")
    _dicom(root / "cut.dcm", modality="DX", study="1.2.826.2.7", patient="p7", truncate=700)
    _dicom(root / "ct.dcm", modality="CT", study="1.2.826.2.8", patient="p8")
    mr = root / "mr.dcm"  # pydicom's own MR test file (ships with the wheel), given a report
    mr.write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    (root / f"{pydicom.dcmread(mr).StudyInstanceUID}.txt").write_text("FINDINGS: Normal.")
    out = tmp_path / "ds"
    assert _prepare("--source", "dicom-dir", "--input", str(root), "--sites", "2", "--out", str(out)) == 0
    capsys.readouterr()
    by_item = {r["item"]: r["reason"] for r in _skipped_rows(out)}
    assert by_item[str(root / "cut.dcm")].startswith("unreadable image: cannot decode pixel data")
    assert by_item[str(root / "ct.dcm")] == "not a radiograph: DICOM Modality CT (expected one of CR, DX, RG)"
    assert by_item[str(root / "mr.dcm")] == "not a radiograph: DICOM Modality MR (expected one of CR, DX, RG)"
    assert sum(k.startswith("study ") for k in by_item) == 3
    paths = {Path(im.path).name for _, _, recs in FederatedDataset.open(out).parts() for r in recs for im in r.images}
    assert paths == {f"good{i}.dcm" for i in range(1, 7)}

    # --image-modalities any accepts CT and MR, but a truncated file stays refused
    out2 = tmp_path / "ds2"
    argv = ["--source", "dicom-dir", "--input", str(root), "--sites", "2", "--image-modalities", "any"]
    assert _prepare(*argv, "--out", str(out2)) == 0
    assert set(r["item"] for r in _skipped_rows(out2)) == {str(root / "cut.dcm"), "study 1.2.826.2.7"}


def test_bad_modality_list_is_refused_before_any_work(tmp_path, capsys):
    argv = ["--source", "dicom-dir", "--input", str(tmp_path), "--sites", "2", "--image-modalities", "CR;DX"]
    assert _prepare(*argv, "--out", str(tmp_path / "o")) == 1
    assert "--image-modalities 'CR;DX'" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_check_keeps_studies_when_missing_images_keep(tmp_path):
    good, bad = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(good)
    bad.write_text("not an image")
    recs = [
        StudyRecord("s1", "p1", images=[ImageRef(str(good), "PA"), ImageRef(str(bad), "LATERAL")], findings="x"),
        StudyRecord("s2", "p2", images=[ImageRef(str(bad), "PA")], findings="y"),
    ]
    keep = check_record_images(recs, missing_images="keep", progress=False)
    assert (keep.checked, keep.failed) == (2, 1) and [s.item for s in keep.skipped] == [str(bad)]
    assert [len(r.images) for r in keep.records] == [1, 0]
    assert keep.records[1].meta["missing_images"][0]["reason"].startswith("unreadable image")
    assert len(recs[1].images) == 1, "input records are not modified"
    skip = check_record_images(recs, missing_images="skip", workers=2, progress=False)
    assert [r.study_id for r in skip.records] == ["s1"]
    assert [s.item for s in skip.skipped] == [str(bad), "study s2"]


def test_image_problem_kinds(tmp_path):
    flat = tmp_path / "line.png"
    Image.fromarray(np.zeros((1, 40), dtype=np.uint8)).save(flat)
    assert image_problem(flat) == "not a 2-D image: 1 x 40 pixels"
    assert image_problem(tmp_path / "absent.png") == "image not found"
    (tmp_path / "x.dcm").write_text("plain text")
    assert image_problem(tmp_path / "x.dcm").startswith("unreadable image: DICOM header")
    assert image_problem(get_testdata_file("CT_small.dcm"), modalities=None) is None
    volume = _dicom(tmp_path / "vol.dcm", modality="DX", study="1.2.9.1", patient="p1", frames=3)
    assert image_problem(volume) == "not a 2-D image: multi-frame DICOM (3 frames)"
    assert image_problem(volume, modalities=None) == "not a 2-D image: multi-frame DICOM (3 frames)"


# ------------------------------------------------------------------------------------------------ real IU data


def test_real_iu_relative_input_render_missing(iu_dir, tmp_path, monkeypatch, capsys):
    """The documented IU command with a relative --input and --limit, read back from another directory."""
    monkeypatch.chdir(iu_dir.parent)
    out = tmp_path / "iu_ds"
    argv = ["--source", "iu-kaggle", "--input", iu_dir.name, "--render-missing", "--limit", "60", "--image-size",
            "64", "--sites", "2", "--out", str(out)]  # fmt: skip
    assert _prepare(*argv) == 0
    printed = capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    ds = FederatedDataset.open(out)
    m = ds.manifest
    assert m["source"]["limit"] == 60 and m["image_check"]["enabled"] and m["image_check"]["failed"] == 0
    assert m["report_text"]["deid_marks"] == "removed" and m["report_text"]["studies_changed"] > 0
    records = [r for _, _, recs in ds.parts() for r in recs]
    assert len(records) == 60 and all(Path(im.path).is_file() for r in records for im in r.images)
    real = [im.path for r in records for im in r.images if not r.synthetic]
    assert real and all(p.startswith(str(iu_dir.resolve())) or p.startswith(str(iu_dir)) for p in real)
    assert not any("xxxx" in (r.findings + r.impression).lower() for r in records)
    assert "image check: " in printed and os.path.isfile(out / SKIPPED_CSV)


@pytest.mark.slow
def test_docs_data_md_commands_run_as_written(shared_data, tmp_path, monkeypatch, capsys):
    """docs/data.md's first block, run as written from a folder whose ``../shared/data`` is the shared data."""
    import re
    import shlex

    block = re.search(r"```bash\n(.*?)```", (Path(__file__).parents[2] / "docs" / "data.md").read_text(), re.S)
    assert block is not None
    commands = re.sub(r"\\\n\s*", " ", block.group(1)).strip().splitlines()
    assert [c.split()[:3] for c in commands] == [["fedmrg", "data", "prepare"]] * 2 + [["fedmrg", "data", "inspect"]]
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(shared_data.resolve())
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
    printed = capsys.readouterr().out
    assert "wrote data/fl_iu_small/overview.png" in printed
    small = FederatedDataset.open("data/fl_iu_small")
    assert small.manifest["source"]["limit"] == 200
    assert FederatedDataset.open("data/fl_synth").manifest["image_check"]["enabled"] is False

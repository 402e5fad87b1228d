"""Federated dataset directory: write, reopen, move, and clear errors for broken directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedmrg.data.dataset_dir import FORMAT_VERSION, MANIFEST, FederatedDataset, write_federated_dataset
from fedmrg.data.partition import PartitionConfig, partition_records
from fedmrg.data.readers.base import Skip
from fedmrg.data.records import ImageRef, StudyRecord
from fedmrg.data.site_transforms import DEFAULT_PROFILES
from fedmrg.errors import DataError
from fedmrg.observations import OBSERVATIONS


def _records(tmp_path, n: int = 40) -> list[StudyRecord]:
    """Half the studies have an image inside the dataset dir (relative), half an external absolute image."""
    external = tmp_path / "external"
    external.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        labels: dict[str, int | None] = dict.fromkeys(OBSERVATIONS)
        labels["Cardiomegaly" if i % 3 == 0 else "No Finding"] = 1
        if i % 2:
            img = ImageRef(path=f"images/{i}.png", view="PA")
        else:
            (external / f"{i}.png").write_bytes(b"")
            img = ImageRef(path=str(external / f"{i}.png"), view="LATERAL")
        out.append(
            StudyRecord(
                f"s{i}", f"p{i // 2}", images=[img], findings=f"report {i}", labels=labels, synthetic=bool(i % 2)
            )
        )
    return out


def _write(tmp_path, *, unseen: int = 1):
    out = tmp_path / "ds"
    (out / "images").mkdir(parents=True)
    records = _records(tmp_path)
    for r in records:
        if not r.images[0].path.startswith("/"):
            (out / r.images[0].path).write_bytes(b"")
    config = PartitionConfig(method="random", num_sites=2, unseen_sites=unseen, seed=1, site_names=["a", "b"])
    part = partition_records(records, config)
    sites = ["a", "b"] + list(part.unseen)
    manifest = write_federated_dataset(
        out,
        part,
        source={"name": "test", "input": None},
        site_profiles=dict(zip(sites, ["clean", "soft-blur", "dark-sharp"], strict=False)),
        profiles={n: p.to_dict() for n, p in DEFAULT_PROFILES.items()},
        skipped=[Skip("reports.csv:3", "empty report"), Skip("reports.csv:9", "empty report: only whitespace")],
        label_source="reader",
    )
    return out, part, manifest, records


def test_roundtrip(tmp_path):
    out, part, manifest, records = _write(tmp_path)
    ds = FederatedDataset.open(out)
    assert ds.sites == ("a", "b") and ds.unseen_sites == ("unseen-1",)
    assert ds.profile("b") == "soft-blur" and ds.profile_params("b")["blur_sigma"] == 1.5
    for name, s in part.sites.items():
        assert [r.study_id for r in ds.split(name, "train")] == [r.study_id for r in s.train]
        assert [r.study_id for r in ds.split(name, "val")] == [r.study_id for r in s.val]
    assert [r.study_id for r in ds.test()] == [r.study_id for r in part.test]
    assert [r.study_id for r in ds.split("unseen-1", "test")] == [r.study_id for r in part.unseen["unseen-1"]]
    all_read = [r for _, _, recs in ds.parts() for r in recs]
    assert sorted(r.study_id for r in all_read) == sorted(r.study_id for r in records)
    assert all(r.labels == next(x for x in records if x.study_id == r.study_id).labels for r in all_read)

    m = json.loads((out / MANIFEST).read_text())
    assert m["format_version"] == FORMAT_VERSION and m["synthetic"] is True and m["skipped_total"] == 2
    assert m["skipped"] == {"empty report": 2} and m["skipped_file"] == "skipped.csv"
    assert (out / "skipped.csv").read_text().splitlines() == [
        "item,reason",
        "reports.csv:3,empty report",
        "reports.csv:9,empty report: only whitespace",
    ]
    assert m["partition"] == {"method": "random", "num_sites": 2, "unseen_sites": 1, "seed": 1,
                              "val_fraction": 0.1, "test_fraction": 0.1}  # fmt: skip
    assert set(m["profiles"]) == {"clean", "soft-blur", "dark-sharp"}
    train_a = part.sites["a"].train
    st = m["sites"][0]["splits"]["train"]
    assert st["studies"] == len(train_a) and st["patients"] == len({r.patient_id for r in train_a})
    assert st["positives"]["Cardiomegaly"] == sum(r.labels["Cardiomegaly"] == 1 for r in train_a)
    assert st["synthetic"] == sum(r.synthetic for r in train_a)
    assert ds.stats("a", "train") == st


def test_image_paths_relative_inside_dir_absolute_outside_and_directory_moves(tmp_path):
    out, _, _, _ = _write(tmp_path)
    raw = [json.loads(line) for line in (out / "sites/a/train.jsonl").read_text().splitlines()]
    inside = [r["images"][0]["path"] for r in raw if r["synthetic"]]
    outside = [r["images"][0]["path"] for r in raw if not r["synthetic"]]
    assert inside and all(p.startswith("../../images/") for p in inside)
    assert outside and all(p.startswith(str(tmp_path / "external")) for p in outside)
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    for _, _, recs in FederatedDataset.open(moved).parts():
        for r in recs:
            path = Path(r.images[0].path)
            assert path.is_file()
            expected = (moved / "images").resolve() if r.synthetic else (tmp_path / "external").resolve()
            assert path.resolve().parent == expected


def test_site_transform_from_manifest(tmp_path):
    out, _, _, _ = _write(tmp_path)
    ds = FederatedDataset.open(out)
    t = ds.site_transform("b")
    assert t.params.blur_sigma == 1.5 and t.site == "b"
    assert ds.site_transform("a", keys=["image"]).keys == ("image",)


def test_missing_profile_for_site_is_an_error(tmp_path):
    part = partition_records(_records(tmp_path), PartitionConfig(num_sites=2))
    with pytest.raises(DataError, match=r"no device profile given for site\(s\) \['site-2'\]"):
        write_federated_dataset(tmp_path / "o", part, source={}, site_profiles={"site-1": "clean"}, profiles={})
    with pytest.raises(DataError, match=r"profile\(s\) \['clean'\] are used by a site but not defined"):
        write_federated_dataset(
            tmp_path / "o", part, source={}, site_profiles={"site-1": "clean", "site-2": "clean"}, profiles={}
        )


def test_open_errors(tmp_path):
    with pytest.raises(DataError, match="federated dataset directory not found"):
        FederatedDataset.open(tmp_path / "nope")
    with pytest.raises(DataError, match="manifest not found"):
        FederatedDataset.open(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="manifest is not valid JSON"):
        FederatedDataset.open(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a FedMRG dataset manifest"):
        FederatedDataset.open(tmp_path)


def test_open_errors_on_damaged_dataset(tmp_path):
    out, _, manifest, _ = _write(tmp_path)
    ds = FederatedDataset.open(out)
    with pytest.raises(DataError, match="no site 'c'; training sites: a, b; unseen sites: unseen-1"):
        ds.split("c")
    with pytest.raises(DataError, match="site 'a' has no split 'test'; it has train, val"):
        ds.split("a", "test")
    newer = dict(manifest, format_version=FORMAT_VERSION + 1)
    (out / MANIFEST).write_text(json.dumps(newer))
    with pytest.raises(DataError, match="is not supported by fedmrg"):
        FederatedDataset.open(out)
    escaping = json.loads(json.dumps(manifest))
    escaping["test"]["file"] = "../elsewhere.jsonl"
    (out / MANIFEST).write_text(json.dumps(escaping))
    with pytest.raises(DataError, match="must be a relative path inside"):
        FederatedDataset.open(out)
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / "sites/b/val.jsonl").unlink()
    with pytest.raises(DataError, match="split file sites/b/val.jsonl listed in the manifest is missing"):
        FederatedDataset.open(out)
    broken = dict(manifest, sites=[{"name": "a"}])
    (out / MANIFEST).write_text(json.dumps(broken))
    with pytest.raises(DataError, match="malformed site entry"):
        FederatedDataset.open(out)


def test_write_refuses_records_whose_images_do_not_exist(tmp_path):
    records = _records(tmp_path)  # its relative images/… files were never created under the output directory
    part = partition_records(records, PartitionConfig(num_sites=2, seed=0))
    profiles = {n: p.to_dict() for n, p in DEFAULT_PROFILES.items()}
    with pytest.raises(DataError) as e:
        write_federated_dataset(tmp_path / "o", part, source={}, site_profiles=dict.fromkeys(["site-1", "site-2"],
                                "clean"), profiles=profiles)  # fmt: skip
    msg = str(e.value)
    assert "20 of 40 image file(s) listed do not exist" in msg and "images/" in msg and "(study s" in msg
    assert not (tmp_path / "o" / MANIFEST).exists()


def test_open_with_a_relative_root_gives_absolute_paths(tmp_path, monkeypatch):
    out, _, _, records = _write(tmp_path)
    monkeypatch.chdir(out.parent)
    ds = FederatedDataset.open(out.name)
    assert ds.root == out
    read = [r for _, _, recs in ds.parts() for r in recs]
    assert len(read) == len(records) and all(Path(im.path).is_absolute() for r in read for im in r.images)

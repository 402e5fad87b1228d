"""``fedmrg data prepare`` / ``inspect`` end to end, their errors, and heterogeneity on the real IU reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fedmrg.cli import main
from fedmrg.data.dataset_dir import FederatedDataset
from fedmrg.data.heterogeneity import heterogeneity
from fedmrg.data.partition import PartitionConfig, partition_records

# Made-up report templates (not taken from any dataset), three clearly different topics.
REPORTS = [
    ("The heart is enlarged. Cardiomegaly is present. Lungs are clear.", "Cardiomegaly."),
    ("Large right pleural effusion. No pneumothorax.", "Right pleural effusion."),
    ("Normal heart size. Lungs are clear. No effusion or pneumothorax.", "No acute disease."),
]


def _iu_folder(tmp_path: Path, n: int = 30) -> Path:
    """A small IU-Kaggle-layout folder with made-up reports; its PNGs are listed but absent."""
    folder = tmp_path / "iu"
    folder.mkdir()
    with (folder / "indiana_reports.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"])
        for i in range(1, n + 1):
            findings, impression = REPORTS[i % 3]
            w.writerow(
                [i, "normal", "normal", "Xray Chest PA and Lateral", "", "", f"{findings} Study {i}.", impression]
            )
        w.writerow([n + 1, "normal", "normal", "", "", "", "", ""])  # empty report: a counted skip
    with (folder / "indiana_projections.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "filename", "projection"])
        for i in range(1, n + 2):
            w.writerow([i, f"{i}_IM-0001-4001.dcm.png", "Frontal"])
            w.writerow([i, f"{i}_IM-0001-3001.dcm.png", "Lateral"])
    return folder


def _run(*argv: str) -> int:
    return main(["data", *argv])


def test_prepare_iu_kaggle_with_rendered_images_then_inspect(tmp_path, capsys):
    src, out = _iu_folder(tmp_path), tmp_path / "ds"
    argv = ["prepare", "--source", "iu-kaggle", "--input", str(src), "--render-missing", "--image-size", "64",
            "--sites", "2", "--unseen-sites", "1", "--partition", "cluster", "--site-names", "hosp-a,hosp-b",
            "--site-profiles", "clean,bright-noisy,soft-blur", "--seed", "3", "--out", str(out)]  # fmt: skip
    assert _run(*argv) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 input item(s)" in printed and "      1  empty findings and impression" in printed

    ds = FederatedDataset.open(out)
    assert ds.sites == ("hosp-a", "hosp-b") and ds.unseen_sites == ("unseen-1",)
    assert [ds.profile(s) for s in ds.sites + ds.unseen_sites] == ["clean", "bright-noisy", "soft-blur"]
    m = ds.manifest
    assert m["synthetic"] is True and m["label_source"] == "fedmrg.labels"
    assert m["source"]["rendered_images"] == 30, "one frontal image drawn per study; laterals are not drawn"
    records = [r for _, _, recs in ds.parts() for r in recs]
    assert len(records) == 30
    for r in records:
        assert r.synthetic and len(r.images) == 1 and r.images[0].view == "PA"
        assert Path(r.images[0].path).is_file() and str(out) in r.images[0].path
        assert [m["view"] for m in r.meta["missing_images"]] == ["LATERAL"]
        assert r.labels is not None
    card = [r for r in records if "enlarged" in r.findings]
    assert card and all(r.labels["Cardiomegaly"] == 1 for r in card)
    # cluster: each training site holds one report topic
    for s in ds.sites:
        assert len({r.findings.split(" Study")[0] for r in ds.split(s, "train") + ds.split(s, "val")}) == 1

    png, js = tmp_path / "overview.png", tmp_path / "stats.json"
    assert _run("inspect", str(out), "--png", str(png), "--json", str(js), "--samples", "2") == 0
    printed = capsys.readouterr().out
    assert "heterogeneity between training sites" in printed and "hosp-a" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads(js.read_text())
    assert stats["heterogeneity"]["text_jsd"] > 0.3, "one topic per site is very heterogeneous text"
    assert [p["part"] for p in stats["parts"]] == ["hosp-a", "hosp-b", "test", "unseen-1"]


def test_prepare_is_deterministic_and_overwrite_replaces(tmp_path, capsys):
    src = _iu_folder(tmp_path)
    base = ["prepare", "--source", "iu-kaggle", "--input", str(src), "--missing-images", "keep", "--sites", "3",
            "--partition", "random", "--seed", "5"]  # fmt: skip
    assert _run(*base, "--out", str(tmp_path / "a")) == 0
    assert _run(*base, "--out", str(tmp_path / "b")) == 0
    for rel in ("sites/site-1/train.jsonl", "sites/site-3/val.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / rel).read_text() == (tmp_path / "b" / rel).read_text()

    assert _run(*base, "--out", str(tmp_path / "a")) == 1
    assert "--out is not empty; pass --overwrite" in capsys.readouterr().err
    assert _run(*base[:-1], "9", "--out", str(tmp_path / "a"), "--overwrite") == 0
    assert FederatedDataset.open(tmp_path / "a").manifest["seed"] == 9
    assert not list(tmp_path.glob(".a.tmp-*")), "no temporary directory left behind"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--source", "iu-kaggle", "--input", "{tmp}/nowhere"], "nowhere: IU X-ray folder not found"),
        (["--source", "iu-kaggle"], "--input is required for --source iu-kaggle"),
        (["--source", "iu-kaggle", "--input", "{src}", "--site-profiles", "clean,foggy"],
         "unknown site profile 'foggy'; valid profiles: clean, soft-blur, low-contrast, bright-noisy, dark-sharp"),
        (["--source", "iu-kaggle", "--input", "{src}", "--site-profiles", "clean"], "lists 1 profile(s)"),
        (["--source", "iu-kaggle", "--input", "{src}", "--alpha", "0", "--partition", "dirichlet"], "`alpha`"),
        (["--source", "iu-kaggle", "--input", "{src}", "--missing-images", "keep", "--partition", "style"], "meta['style']"),
        (["--source", "iu-kaggle", "--input", "{src}", "--missing-images", "skip"], "found no usable studies"),
    ],
)  # fmt: skip
def test_prepare_errors(tmp_path, capsys, extra, message):
    src = _iu_folder(tmp_path)
    argv = [a.format(tmp=tmp_path, src=src) for a in extra]
    assert _run("prepare", *argv, "--sites", "2", "--out", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "fedmrg data: error: " in err and message in err
    assert not (tmp_path / "out").exists(), "nothing written on error"


def test_prepare_unknown_source_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _run("prepare", "--source", "pacs", "--sites", "2", "--out", str(tmp_path / "o"))
    assert e.value.code == 2
    assert "invalid choice: 'pacs'" in capsys.readouterr().err


def test_overwrite_refuses_a_directory_that_is_not_a_dataset(tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    src = _iu_folder(tmp_path)
    rc = _run("prepare", "--source", "iu-kaggle", "--input", str(src), "--missing-images", "keep", "--sites", "2",
              "--out", str(out), "--overwrite")  # fmt: skip
    assert rc == 1 and "only replaces a FedMRG dataset directory" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_inspect_missing_manifest(tmp_path, capsys):
    assert _run("inspect", str(tmp_path)) == 1
    assert "manifest not found" in capsys.readouterr().err


def test_prepare_synthetic_one_style_per_site(tmp_path, capsys):
    out = tmp_path / "syn"
    rc = _run("prepare", "--source", "synthetic", "--num-studies", "60", "--image-size", "64", "--sites", "2",
              "--unseen-sites", "1", "--seed", "1", "--out", str(out))  # fmt: skip
    assert rc == 0
    ds = FederatedDataset.open(out)
    assert ds.manifest["partition"]["method"] == "style" and ds.synthetic
    for k, site in enumerate(ds.sites):
        recs = ds.split(site, "train") + ds.split(site, "val")
        assert recs and {r.meta["style"] for r in recs} == {k}
        assert all(Path(r.images[0].path).is_file() for r in recs)
    assert {r.meta["style"] for r in ds.split("unseen-1", "test")} == {2}
    assert {r.meta["style"] for r in ds.test()} <= {0, 1}


@pytest.mark.shared_data
@pytest.mark.slow
def test_iu_cluster_partition_is_more_heterogeneous_than_random(iu_dir):
    """On the real IU reports (labelled by our labeler), report clustering gives sites whose labels and words differ
    more than a patient-level random split does, and Dirichlet(0.1) skews labels more than Dirichlet(0.5)."""
    from fedmrg.data.readers import read_source
    from fedmrg.labels import label_reports

    records = read_source("iu-kaggle", iu_dir, missing_images="keep").records
    for r, labels in zip(records, label_reports([r.report for r in records]), strict=True):
        r.labels = labels

    def h(method: str, seed: int = 0, **kw) -> dict[str, float]:
        part = partition_records(records, PartitionConfig(method=method, num_sites=5, seed=seed, **kw))
        return heterogeneity({n: s.train + s.val for n, s in part.sites.items()})

    random, cluster = h("random"), h("cluster")
    assert cluster["label_jsd"] > 5 * random["label_jsd"]
    assert cluster["text_jsd"] > 3 * random["text_jsd"]
    skew = {a: np.mean([h("dirichlet", alpha=a, seed=s)["label_jsd"] for s in range(3)]) for a in (0.1, 0.5)}
    assert skew[0.1] > skew[0.5] > random["label_jsd"]

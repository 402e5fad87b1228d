"""`fedmrg bench prepare`: both partitions, stratification, determinism, two sources keeping their sites."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedmrg.bench.federation import parse_source, stratified_groups, stratified_partition
from fedmrg.cli import main
from fedmrg.data.dataset_dir import FederatedDataset
from fedmrg.data.partition import PartitionConfig
from fedmrg.errors import ConfigError

_FINDINGS = [
    "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
    "Cardiomegaly. Small bilateral pleural effusions. No pneumothorax.",
    "Right lower lobe consolidation consistent with pneumonia. Heart size normal.",
    "Left basilar atelectasis. No focal consolidation. Normal cardiac silhouette.",
    "Healed rib fracture on the right. Lungs are clear.",
    "",  # empty findings: the impression is the report
]


def _iu_fixture(root: Path, n: int = 30) -> Path:
    root.mkdir()
    with (root / "indiana_reports.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"])
        for i in range(n):
            w.writerow([i + 1, "normal", "normal", "Xray Chest PA and Lateral", "cough", "none",
                        _FINDINGS[i % len(_FINDINGS)], "No acute cardiopulmonary abnormality."])  # fmt: skip
    with (root / "indiana_projections.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "filename", "projection"])
        w.writerows([i + 1, f"{i + 1}_IM-0001-1001.dcm.png", "Frontal"] for i in range(n))
    return root


def test_stratified_groups_spread_every_class_evenly():
    rng = np.random.default_rng(0)
    classes = ["No Finding"] * 50 + ["Edema"] * 13 + ["Fracture"] * 7
    group = stratified_groups(classes, np.ones(len(classes), dtype=int), 5, rng)
    for c in set(classes):
        per_group = Counter(int(g) for g, k in zip(group, classes, strict=True) if k == c)
        counts = [per_group.get(g, 0) for g in range(5)]
        assert max(counts) - min(counts) <= 1, (c, counts)


@pytest.mark.slow
def test_bench_prepare_writes_both_partitions_deterministically(tmp_path, capsys):
    out = tmp_path / "fed"
    argv = ["bench", "prepare", "--source", "synthetic", "--num-studies", "40", "--sites", "3", "--unseen-sites", "1",
            "--image-size", "32", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    for kind in ("cluster", "stratified"):
        ds = FederatedDataset.open(out / kind)
        assert ds.manifest["benchmark_partition"] == kind
        assert [e["name"] for e in ds.manifest["sites"]] == ["site-1", "site-2", "site-3"]
        assert [e["name"] for e in ds.manifest["unseen"]] == ["unseen-1"]
        assert len({e["profile"] for e in ds.manifest["sites"]}) == 3  # device profiles differ per site
        assert ds.manifest["test"]["studies"] > 0
    assert main(argv) != 0 and "--overwrite" in capsys.readouterr().err
    records = [
        r for s in ("site-1", "site-2", "site-3") for r in FederatedDataset.open(out / "stratified").split(s, "train")
    ]
    config = PartitionConfig(num_sites=2, unseen_sites=1, seed=3)
    a, b = stratified_partition(records, config), stratified_partition(list(reversed(records)), config)
    assert {n: [r.study_id for r in s.train] for n, s in a.sites.items()} == {
        n: [r.study_id for r in s.train] for n, s in b.sites.items()
    }


@pytest.mark.slow
def test_two_sources_keep_their_sites(tmp_path):
    iu = _iu_fixture(tmp_path / "iu")
    out = tmp_path / "fed2"
    argv = ["bench", "prepare", "--source", "synthetic", "--source", f"iu-kaggle={iu}", "--num-studies", "30",
            "--sites", "2", "--unseen-sites", "1", "--image-size", "32", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    for kind in ("cluster", "stratified"):
        ds = FederatedDataset.open(out / kind)
        names = [e["name"] for e in ds.manifest["sites"]]
        assert names == ["synthetic-site-1", "synthetic-site-2", "iu-kaggle-site-1", "iu-kaggle-site-2"]
        for site in names:
            sources = {r.source for r in ds.split(site, "train")}
            assert sources and all(site.startswith(s) for s in sources), (site, sources)
        assert {r.source for r in ds.split("iu-kaggle-unseen-1", "test")} == {"iu-kaggle"}
        iu_train = ds.split("iu-kaggle-site-1", "train")
        assert all(r.synthetic and Path(r.images[0].path).is_file() for r in iu_train)  # rendered, marked synthetic
        manifest = json.loads((out / kind / "manifest.json").read_text())
        assert [s["name"] for s in manifest["source"]["sources"]] == ["synthetic", "iu-kaggle"]


def test_source_argument_is_checked():
    assert parse_source("synthetic") == ("synthetic", None)
    with pytest.raises(ConfigError, match="READER=PATH"):
        parse_source("iu-kaggle")
    with pytest.raises(ConfigError, match="must be one of"):
        parse_source("nope=/x")

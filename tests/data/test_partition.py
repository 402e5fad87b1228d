"""Partitioning records into sites: methods, fractions, determinism and the no-shared-patient invariant."""

from __future__ import annotations

import numpy as np
import pytest

from fedmrg.data.heterogeneity import heterogeneity, label_distribution, mean_pairwise_jsd
from fedmrg.data.partition import (
    Partition,
    PartitionConfig,
    SiteSplit,
    partition_records,
    primary_labels,
)
from fedmrg.data.records import StudyRecord
from fedmrg.errors import ConfigError, DataError
from fedmrg.observations import OBSERVATIONS

TOPICS = {
    "heart": "the heart is enlarged with cardiomegaly and cardiac silhouette widening",
    "lung": "patchy airspace consolidation in the right lower lobe with opacity pneumonia",
    "pleura": "large pleural effusion blunting costophrenic angle with fluid layering",
}


def _labels(positive: str | None) -> dict[str, int | None]:
    labels: dict[str, int | None] = dict.fromkeys(OBSERVATIONS)
    labels[positive or "No Finding"] = 1
    return labels


def make_records(n_patients: int, *, seed: int = 0, max_studies: int = 3, labelled: bool = True) -> list[StudyRecord]:
    """Patients with 1..max_studies studies each; text and a positive label follow a per-patient topic."""
    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    classes = ["Cardiomegaly", "Consolidation", "Pleural Effusion", None]
    out = []
    for p in range(n_patients):
        t = int(rng.integers(len(topics)))
        for s in range(int(rng.integers(1, max_studies + 1))):
            out.append(
                StudyRecord(
                    study_id=f"p{p}-s{s}",
                    patient_id=f"p{p}",
                    findings=TOPICS[topics[t]]
                    + f" study {s} "
                    + " ".join(f"w{int(i)}" for i in rng.integers(0, 30, 3)),
                    labels=_labels(classes[int(rng.integers(len(classes)))]) if labelled else None,
                    meta={"style": p % 3},
                )
            )
    return out


def _topic(r: StudyRecord) -> str:
    return r.findings.split(" study")[0]


def _all(part: Partition) -> list[StudyRecord]:
    return [r for _, recs in part.groups() for r in recs]


def _patients(recs: list[StudyRecord]) -> set[str]:
    return {r.patient_id for r in recs}


def _assert_valid(part: Partition, records: list[StudyRecord]) -> None:
    ids = [r.study_id for r in _all(part)]
    assert sorted(ids) == sorted(r.study_id for r in records), "every study lands in exactly one part"
    owners: dict[str, str] = {}
    for label, recs in part.groups():
        for p in _patients(recs):
            assert owners.setdefault(p, label) == label, f"patient {p} in {owners[p]} and {label}"
    for name, s in part.sites.items():
        assert s.train, f"site {name} has no training studies"


def test_random_is_balanced_and_complete():
    records = make_records(200, seed=1, max_studies=1)
    part = partition_records(records, PartitionConfig(method="random", num_sites=4, seed=3, test_fraction=0.1))
    _assert_valid(part, records)
    sizes = [len(s.train) + len(s.val) for s in part.sites.values()]
    assert max(sizes) - min(sizes) <= 2
    # per site: 10 % of 50 patients to test, then 10 % of the remaining 45 to val
    assert len(part.test) == 4 * 5
    assert [len(s.val) for s in part.sites.values()] == [4, 4, 4, 4]


def test_test_set_draws_from_every_site():
    records = make_records(120, seed=2)
    config = PartitionConfig(method="cluster", num_sites=3, seed=0, test_fraction=0.2, svd_components=0)
    part = partition_records(records, config)
    # recompute site membership of test patients from the site clusters: each site contributed ~20 % of patients
    for s in part.sites.values():
        site_topic = {_topic(r) for r in s.train}
        assert len(site_topic) == 1
        from_site = [r for r in part.test if _topic(r) in site_topic]
        assert len(_patients(from_site)) >= 1


def test_test_studies_name_the_site_they_were_drawn_from():
    """Evaluation applies a test study's site device profile (fedmrg.report.data_loading.open_split) by this name."""
    records = make_records(120, seed=2)
    config = PartitionConfig(method="cluster", num_sites=3, seed=0, test_fraction=0.2, svd_components=0)
    part = partition_records(records, config)
    assert part.test and {r.meta.get("site") for r in part.test} == set(part.sites)
    for name, s in part.sites.items():
        site_topic = {_topic(r) for r in s.train}
        assert all(_topic(r) in site_topic for r in part.test if r.meta["site"] == name)
    assert all("site" not in r.meta for s in part.sites.values() for r in s.train + s.val)


def test_deterministic_and_independent_of_input_order():
    records = make_records(80, seed=4)
    config = PartitionConfig(method="dirichlet", num_sites=3, seed=7, alpha=0.5)
    a = partition_records(records, config)
    b = partition_records(list(reversed(records)), config)
    c = partition_records(records, PartitionConfig(method="dirichlet", num_sites=3, seed=8, alpha=0.5))
    ids = lambda p: [(lab, [r.study_id for r in recs]) for lab, recs in p.groups()]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_cluster_separates_distinct_report_topics_random_does_not():
    records = make_records(90, seed=5)
    cluster = partition_records(records, PartitionConfig(method="cluster", num_sites=3, seed=0, test_fraction=0))
    random = partition_records(records, PartitionConfig(method="random", num_sites=3, seed=0, test_fraction=0))
    for s in cluster.sites.values():
        assert len({_topic(r) for r in s.train + s.val}) == 1, "one topic per cluster site"
    assert all(len({_topic(r) for r in s.train}) == 3 for s in random.sites.values())
    h_c = heterogeneity({n: s.train + s.val for n, s in cluster.sites.items()})
    h_r = heterogeneity({n: s.train + s.val for n, s in random.sites.items()})
    assert h_c["text_jsd"] > 5 * h_r["text_jsd"]
    # clusters are ordered by size, largest first
    sizes = [len(s.train) + len(s.val) for s in cluster.sites.values()]
    assert sizes == sorted(sizes, reverse=True)


def test_dirichlet_small_alpha_is_more_label_skewed():
    records = make_records(400, seed=6, max_studies=1)

    def skew(alpha: float) -> float:
        vals = []
        for seed in range(3):
            part = partition_records(records, PartitionConfig(method="dirichlet", num_sites=4, seed=seed, alpha=alpha))
            _assert_valid(part, records)
            vals.append(mean_pairwise_jsd(np.stack([label_distribution(s.train + s.val) for s in part.sites.values()])))
        return float(np.mean(vals))

    assert skew(0.1) > 2 * skew(100.0)


def test_dirichlet_needs_labels():
    with pytest.raises(DataError, match="has no labels"):
        partition_records(make_records(20, labelled=False), PartitionConfig(method="dirichlet", num_sites=2))


def test_primary_label_is_rarest_positive():
    common, rare = "Cardiomegaly", "Pneumothorax"
    recs = [StudyRecord(f"s{i}", f"p{i}", findings="x", labels=_labels(common)) for i in range(5)]
    both = _labels(common)
    both[rare] = 1
    recs.append(StudyRecord("both", "pb", findings="x", labels=both))
    recs.append(StudyRecord("none", "pn", findings="x", labels=dict.fromkeys(OBSERVATIONS)))
    assert primary_labels(recs) == [common] * 5 + [rare, "No Finding"]


def test_style_partition_maps_style_to_site_and_unseen():
    records = make_records(60, seed=8)
    part = partition_records(records, PartitionConfig(method="style", num_sites=2, unseen_sites=1, seed=0))
    _assert_valid(part, records)
    for k, s in enumerate(part.sites.values()):
        assert {r.meta["style"] for r in s.train + s.val} == {k}
    assert {r.meta["style"] for r in part.test} == {0, 1}, "the test set mixes the training styles"
    assert {r.meta["style"] for r in part.unseen["unseen-1"]} == {2}


def test_style_partition_rejects_missing_or_out_of_range_style():
    records = make_records(10)
    records[0].meta["style"] = 5
    with pytest.raises(DataError, match=r"meta\['style'\].*got 5"):
        partition_records(records, PartitionConfig(method="style", num_sites=3))


def test_unseen_sites_and_custom_names():
    records = make_records(60, seed=9)
    config = PartitionConfig(
        method="cluster", num_sites=2, unseen_sites=1, site_names=["hosp-a", "hosp-b"], unseen_names=["hosp-x"]
    )
    part = partition_records(records, config)
    _assert_valid(part, records)
    assert list(part.sites) == ["hosp-a", "hosp-b"] and list(part.unseen) == ["hosp-x"]
    assert part.unseen["hosp-x"]
    # the unseen cluster is the smallest one
    assert len(part.unseen["hosp-x"]) <= min(len(s.train) + len(s.val) for s in part.sites.values())


@pytest.mark.parametrize("method", ["random", "cluster", "dirichlet", "style"])
def test_property_no_patient_in_two_parts(method):
    """Random inputs (patients, studies per patient, sites, fractions): every study once, no patient twice."""
    rng = np.random.default_rng(123)
    for trial in range(15):
        n_sites, n_unseen = int(rng.integers(1, 4)), int(rng.integers(0, 3))
        records = make_records(int(rng.integers(12, 60)), seed=trial, max_studies=int(rng.integers(1, 5)))
        if method == "style":
            for r in records:
                r.meta["style"] = int(r.patient_id[1:]) % (n_sites + n_unseen)
        config = PartitionConfig(
            method=method,
            num_sites=n_sites,
            unseen_sites=n_unseen,
            seed=int(rng.integers(0, 1000)),
            alpha=float(rng.choice([0.1, 0.5, 5.0])),
            val_fraction=float(rng.uniform(0, 0.5)),
            test_fraction=float(rng.uniform(0, 0.5)),
            svd_components=int(rng.choice([0, 5])),
        )
        part = partition_records(records, config)
        _assert_valid(part, records)


def test_check_patient_disjoint_catches_overlap():
    a = StudyRecord("s1", "p1", findings="x")
    b = StudyRecord("s2", "p1", findings="y")
    part = Partition(
        PartitionConfig(num_sites=2), {"site-1": SiteSplit("site-1", [a]), "site-2": SiteSplit("site-2", [b])}, [], {}
    )
    with pytest.raises(DataError, match="patient 'p1' is in both site-1/train and site-2/train"):
        part.check_patient_disjoint()


@pytest.mark.parametrize(
    ("records", "config", "message"),
    [
        (make_records(2, max_studies=1), PartitionConfig(num_sites=3), r"2 patient\(s\) cannot fill 3 site"),
        ([StudyRecord("a", "p"), StudyRecord("a", "q")], PartitionConfig(num_sites=1), "study id 'a' appears twice"),
        ([StudyRecord("a", " ")], PartitionConfig(num_sites=1), "empty patient id"),
        ([], PartitionConfig(num_sites=1), "no records"),
        ([StudyRecord(f"s{i}", f"p{i}") for i in range(4)], PartitionConfig(method="cluster", num_sites=2), "empty"),
    ],
)
def test_bad_records(records, config, message):
    with pytest.raises(DataError, match=message):
        partition_records(records, config)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "kmeans"}, "`method` must be one of random, cluster, dirichlet, style"),
        ({"num_sites": 0}, "`num_sites` must be an int >= 1, got 0"),
        ({"alpha": 0}, "`alpha` must be a number > 0"),
        ({"val_fraction": 1.0}, r"`val_fraction` must be a number in \[0, 1\)"),
        ({"test_fraction": -0.1}, "`test_fraction`"),
        ({"unseen_sites": -1}, "`unseen_sites`"),
        ({"num_sites": 2, "site_names": ["a"]}, r"`site_names` must list 2 name\(s\)"),
        ({"num_sites": 2, "site_names": ["a", "a"]}, "repeats"),
        ({"num_sites": 1, "site_names": ["a/b"]}, "not a valid site name"),
        ({"num_sites": 1, "unseen_sites": 1, "site_names": ["x"], "unseen_names": ["x"]}, "share name"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PartitionConfig(**kwargs)

"""Split study records into federated sites, a held-out test set and unseen sites (the FL-MRG benchmark).

FedMRG (paper sec. 4.1) builds its benchmark by splitting one dataset into sites at the *patient* level, either at
random ("FL-MRG Random") or by clustering the reports ("FL-MRG Clustering"), keeps 90 % of each site for training and
10 % for validation, and tests on an in-domain test set plus an unseen domain. Sec. 4.4.2 adds Dirichlet(alpha) label
skew. :func:`partition_records` does all of that in one deterministic pass:

1. group the records by patient (patients sorted by id, so the result does not depend on the input order);
2. assign every patient to one of ``num_sites + unseen_sites`` groups with the chosen method:

   - ``random``: patients shuffled, then cut into groups of (nearly) equal *record* counts;
   - ``cluster``: each patient's reports -> TF-IDF -> LSA (truncated SVD, L2-normalised) -> k-means; one cluster per
     group, clusters ordered by size (largest first);
   - ``dirichlet``: each patient gets a *primary label* (:func:`primary_labels`); for every label class the class's
     patients are spread over the groups with proportions drawn from Dirichlet(alpha) (Hsu et al. 2019; the
     NIID-Bench variant of Li et al. 2022 that stops filling a group once it holds its fair share, retried until every
     group holds ``min_group_records`` records);
   - ``style``: the group is given by ``record.meta["style"]`` (synthetic studies: site k = reporting style k);

3. the last ``unseen_sites`` groups become unseen sites (evaluation only; for ``cluster`` the smallest clusters);
4. inside each training site, patients are drawn for the in-domain test set (``test_fraction``), then for validation
   (``val_fraction`` of the rest); the test set is the union over sites, each study naming its site in
   ``meta["site"]`` (evaluation applies that site's device profile).

No patient ever appears in two sites or two splits; :meth:`Partition.check_patient_disjoint` verifies it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from fedmrg.data.records import StudyRecord
from fedmrg.errors import ConfigError, DataError
from fedmrg.observations import OBSERVATIONS

PartitionMethod = Literal["random", "cluster", "dirichlet", "style"]
PARTITION_METHODS: tuple[str, ...] = ("random", "cluster", "dirichlet", "style")

#: Primary-label class of a record with no positive observation.
NO_FINDING = "No Finding"


@dataclass
class PartitionConfig:
    """How to split records into sites (see the module docstring).

    Args:
        method: ``"random"``, ``"cluster"``, ``"dirichlet"`` or ``"style"``.
        num_sites: number of training sites (>= 1).
        seed: seed of every random choice; the same records and config always give the same partition.
        alpha: Dirichlet concentration (``dirichlet`` only, > 0); smaller means stronger label skew (paper: 0.1-0.9).
        val_fraction: fraction of each site's remaining patients kept for validation, in [0, 1).
        test_fraction: fraction of each training site's patients moved to the shared in-domain test set, in [0, 1).
        unseen_sites: number of extra groups that never train; their studies are only for evaluation (>= 0).
        site_names: names of the training sites (``site-1`` .. ``site-N`` by default). They must match the FLARE
            client names of the federation.
        unseen_names: names of the unseen sites (``unseen-1`` .. ``unseen-K`` by default).
        svd_components: LSA dimensions before k-means (``cluster`` only); 0 clusters the raw TF-IDF vectors.
        min_group_records: smallest group a ``dirichlet`` draw may produce, in records (None: 10, lowered for tiny
            inputs to a fifth of a fair share, at least 1).
    """

    method: PartitionMethod = "random"
    num_sites: int = 3
    seed: int = 0
    alpha: float = 0.5
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    unseen_sites: int = 0
    site_names: list[str] | None = None
    unseen_names: list[str] | None = None
    svd_components: int = 100
    min_group_records: int | None = None

    def __post_init__(self) -> None:
        if self.method not in PARTITION_METHODS:
            raise ConfigError(f"`method` must be one of {', '.join(PARTITION_METHODS)}, got {self.method!r}")
        _check_int("num_sites", self.num_sites, 1)
        _check_int("unseen_sites", self.unseen_sites, 0)
        _check_int("seed", self.seed, 0)
        _check_int("svd_components", self.svd_components, 0)
        if self.min_group_records is not None:
            _check_int("min_group_records", self.min_group_records, 1)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not self.alpha > 0:
            raise ConfigError(f"`alpha` must be a number > 0, got {self.alpha!r}")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
                raise ConfigError(f"`{name}` must be a number in [0, 1), got {v!r}")
        _check_names("site_names", self.site_names, self.num_sites)
        _check_names("unseen_names", self.unseen_names, self.unseen_sites)
        clash = set(self.training_site_names) & set(self.unseen_site_names)
        if clash:
            raise ConfigError(f"`site_names` and `unseen_names` share name(s) {sorted(clash)}")

    @property
    def training_site_names(self) -> list[str]:
        return list(self.site_names) if self.site_names else [f"site-{i + 1}" for i in range(self.num_sites)]

    @property
    def unseen_site_names(self) -> list[str]:
        return list(self.unseen_names) if self.unseen_names else [f"unseen-{i + 1}" for i in range(self.unseen_sites)]

    def params(self) -> dict[str, object]:
        """The settings that define the partition, JSON-ready (written into the dataset manifest)."""
        out: dict[str, object] = {
            "method": self.method,
            "num_sites": self.num_sites,
            "unseen_sites": self.unseen_sites,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
        }
        if self.method == "dirichlet":
            out["alpha"] = self.alpha
            out["min_group_records"] = self.min_group_records
        if self.method == "cluster":
            out["svd_components"] = self.svd_components
        return out


@dataclass
class SiteSplit:
    """The studies of one training site."""

    name: str
    train: list[StudyRecord] = field(default_factory=list)
    val: list[StudyRecord] = field(default_factory=list)


@dataclass
class Partition:
    """Result of :func:`partition_records`: training sites, the shared test set and the unseen sites."""

    config: PartitionConfig
    sites: dict[str, SiteSplit]
    test: list[StudyRecord]
    unseen: dict[str, list[StudyRecord]]

    def groups(self) -> Iterator[tuple[str, list[StudyRecord]]]:
        """Every disjoint part as ``(label, records)``: ``site/train``, ``site/val``, ``test``, ``unseen/name``."""
        for name, s in self.sites.items():
            yield f"{name}/train", s.train
            yield f"{name}/val", s.val
        yield "test", self.test
        for name, recs in self.unseen.items():
            yield f"unseen/{name}", recs

    def check_patient_disjoint(self) -> None:
        """Raise DataError naming the patient if any patient (or study) appears in two parts."""
        patient_owner: dict[str, str] = {}
        study_owner: dict[str, str] = {}
        for label, recs in self.groups():
            for r in recs:
                other = patient_owner.setdefault(r.patient_id, label)
                if other != label:
                    raise DataError(f"patient {r.patient_id!r} is in both {other} and {label}")
                if study_owner.setdefault(r.study_id, label) != label:
                    raise DataError(f"study {r.study_id!r} is in both {study_owner[r.study_id]} and {label}")

    def num_records(self) -> int:
        return sum(len(recs) for _, recs in self.groups())


def partition_records(records: Sequence[StudyRecord], config: PartitionConfig) -> Partition:
    """Split ``records`` into sites, a test set and unseen sites (see the module docstring).

    Raises:
        DataError: duplicate study ids, an empty patient id, fewer patients than groups, a method that needs labels or
            styles the records lack, or a method that leaves a group empty.
    """
    patients, by_patient = _group_by_patient(records)
    n_groups = config.num_sites + config.unseen_sites
    if len(patients) < n_groups:
        raise DataError(
            f"{len(patients)} patient(s) cannot fill {n_groups} site(s) "
            f"({config.num_sites} training + {config.unseen_sites} unseen); use fewer sites"
        )
    seq = np.random.SeedSequence(config.seed)
    rng_group, rng_split = (np.random.default_rng(s) for s in seq.spawn(2))
    sizes = np.array([len(by_patient[p]) for p in patients])

    if config.method == "random":
        group = _random_groups(sizes, n_groups, rng_group)
    elif config.method == "cluster":
        docs = [" ".join(r.report for r in by_patient[p]) for p in patients]
        group = _cluster_groups(docs, sizes, n_groups, seed=config.seed, svd_components=config.svd_components)
    elif config.method == "dirichlet":
        classes = _patient_primary_labels(patients, by_patient)
        min_records = config.min_group_records
        if min_records is None:
            min_records = max(1, min(10, int(sizes.sum()) // (5 * n_groups)))
        group = _dirichlet_groups(classes, sizes, n_groups, config.alpha, min_records, rng_group)
    else:
        group = _style_groups(patients, by_patient, n_groups)

    for g in range(n_groups):
        if not np.any(group == g):
            name = (config.training_site_names + config.unseen_site_names)[g]
            why = " (the reports form fewer distinct clusters than sites)" if config.method == "cluster" else ""
            raise DataError(f"partition `{config.method}` left site {name!r} without patients{why}; use fewer sites")

    return partition_from_groups(patients, by_patient, group, config, rng_split)


def partition_from_groups(
    patients: Sequence[str],
    by_patient: Mapping[str, Sequence[StudyRecord]],
    group: np.ndarray,
    config: PartitionConfig,
    rng_split: np.random.Generator,
) -> Partition:
    """The partition once each patient has a group: groups ``0..num_sites-1`` are training sites (their patients split
    into in-domain test, validation and training by ``config``'s fractions), the next ones the unseen sites.

    Args:
        patients: patient ids, aligned with ``group``.
        by_patient: each patient's studies.
        group: (n_patients,) int group index per patient.
        config: the partition settings (site names, fractions).
        rng_split: the generator of the test / validation draws.
    """
    sites: dict[str, SiteSplit] = {}
    test: list[StudyRecord] = []
    for g, name in enumerate(config.training_site_names):
        members = [patients[i] for i in np.flatnonzero(group == g)]
        n_test = _take_count(len(members), config.test_fraction, keep=1)
        order = rng_split.permutation(len(members))
        test_p, rest = [members[i] for i in order[:n_test]], [members[i] for i in order[n_test:]]
        n_val = _take_count(len(rest), config.val_fraction, keep=1)
        val_p, train_p = rest[:n_val], rest[n_val:]
        # the test study keeps its site's name, so evaluation applies that site's device profile to its image (an
        # in-domain study looks as it did at its hospital; without it a site-specific look becomes a label cue)
        test.extend(replace(r, meta={**r.meta, "site": name}) for p in sorted(test_p) for r in by_patient[p])
        sites[name] = SiteSplit(
            name,
            train=[r for p in sorted(train_p) for r in by_patient[p]],
            val=[r for p in sorted(val_p) for r in by_patient[p]],
        )
    unseen = {
        name: [r for i in np.flatnonzero(group == config.num_sites + k) for r in by_patient[patients[i]]]
        for k, name in enumerate(config.unseen_site_names)
    }
    test.sort(key=lambda r: (r.patient_id, r.study_id))
    part = Partition(config=config, sites=sites, test=test, unseen=unseen)
    part.check_patient_disjoint()
    return part


def primary_labels(records: Sequence[StudyRecord]) -> list[str]:
    """One class per record for label-skew partitioning: its *rarest* positive observation.

    A record's positives (label 1) other than "No Finding" are ranked by their prevalence over ``records`` and the
    rarest wins (ties: :data:`~fedmrg.observations.OBSERVATIONS` order), so a study with cardiomegaly and a pneumothorax
    counts as pneumothorax. A record without such a positive is ``"No Finding"``.

    Raises:
        DataError: a record has no labels (label the reports first, e.g. with ``fedmrg.labels.label_reports``).
    """
    findings = [o for o in OBSERVATIONS if o != NO_FINDING]
    prevalence: Counter[str] = Counter()
    for r in records:
        if r.labels is None:
            raise DataError(f"study {r.study_id!r} has no labels; the `dirichlet` partition needs labelled records")
        prevalence.update(o for o in findings if r.labels.get(o) == 1)
    rank = {o: (prevalence[o], i) for i, o in enumerate(findings)}
    out = []
    for r in records:
        pos = [o for o in findings if r.labels and r.labels.get(o) == 1]
        out.append(min(pos, key=rank.__getitem__) if pos else NO_FINDING)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# group assignment: each returns an int array (num_patients,) of group indices in 0..n_groups-1


def _random_groups(sizes: np.ndarray, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffle patients, then cut the sequence where the running record count crosses k/n_groups of the total."""
    order = rng.permutation(len(sizes))
    start = np.cumsum(sizes[order]) - sizes[order]  # records before each patient in the shuffled order
    group = np.empty(len(sizes), dtype=np.int64)
    group[order] = (start * n_groups) // int(sizes.sum())
    return group


def _cluster_groups(docs: list[str], sizes: np.ndarray, n_groups: int, *, seed: int, svd_components: int) -> np.ndarray:
    """TF-IDF (+ LSA) + k-means over patient documents; clusters renumbered largest first (by records)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    if not any(d.strip() for d in docs):
        raise DataError("the `cluster` partition needs report text, but every report is empty")
    # min_df=2 drops one-off tokens (typos, de-identification debris) that only add noise to the distances.
    min_df = 2 if len(docs) >= 20 else 1
    try:
        x = TfidfVectorizer(stop_words="english", min_df=min_df, sublinear_tf=True).fit_transform(docs)
    except ValueError as e:  # empty vocabulary
        raise DataError(f"the `cluster` partition found no usable words in the reports: {e}") from e
    if 0 < svd_components < min(x.shape):
        # LSA, as in scikit-learn's "Clustering text documents using k-means" example: k-means on dense, normalised
        # low-rank vectors gives clusters of less lopsided sizes than on sparse TF-IDF.
        x = normalize(TruncatedSVD(svd_components, random_state=seed).fit_transform(x))
    labels = KMeans(n_clusters=n_groups, n_init=10, random_state=seed).fit_predict(x)
    weight = np.bincount(labels, weights=sizes, minlength=n_groups)
    rank = np.argsort(-weight, kind="stable")  # rank[k] = old cluster id of the k-th largest
    new_id = np.empty(n_groups, dtype=np.int64)
    new_id[rank] = np.arange(n_groups)
    return new_id[labels]


def _dirichlet_groups(
    classes: list[str],
    sizes: np.ndarray,
    n_groups: int,
    alpha: float,
    min_records: int,
    rng: np.random.Generator,
    max_tries: int = 1000,
) -> np.ndarray:
    """Dirichlet label skew over patients (NIID-Bench's ``noniid-labeldir``), written here because no installed
    library has it; balanced so no group takes more than its share of records, retried until each group has
    ``min_records``."""
    labels = np.array(classes)
    class_members = {c: np.flatnonzero(labels == c) for c in sorted(set(classes))}
    fair = sizes.sum() / n_groups
    for _ in range(max_tries):
        group = np.full(len(sizes), -1, dtype=np.int64)
        load = np.zeros(n_groups)
        for members in class_members.values():
            members = rng.permutation(members)
            p = rng.dirichlet(np.full(n_groups, alpha))
            open_ = load < fair
            if (p * open_).sum() > 0:
                p = p * open_
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(members)).astype(int)[:-1]
            for g, part in enumerate(np.split(members, cuts)):
                group[part] = g
                load[g] += sizes[part].sum()
        if load.min() >= min_records:
            return group
    raise DataError(
        f"the `dirichlet` partition (alpha={alpha}) could not give each of {n_groups} site(s) at least {min_records} "
        f"record(s) in {max_tries} draws; raise alpha, lower the number of sites or `min_group_records`"
    )


def _style_groups(patients: list[str], by_patient: dict[str, list[StudyRecord]], n_groups: int) -> np.ndarray:
    """Group = ``meta["style"]`` (most common among a patient's studies, smallest on ties)."""
    group = np.empty(len(patients), dtype=np.int64)
    for i, p in enumerate(patients):
        styles = []
        for r in by_patient[p]:
            s = r.meta.get("style")
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < n_groups:
                raise DataError(
                    f"study {r.study_id!r}: the `style` partition needs meta['style'] as an int in 0..{n_groups - 1} "
                    f"(one style per site, training then unseen), got {s!r}"
                )
            styles.append(s)
        counts = Counter(styles)
        group[i] = min(counts, key=lambda s: (-counts[s], s))
    return group


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _group_by_patient(records: Sequence[StudyRecord]) -> tuple[list[str], dict[str, list[StudyRecord]]]:
    """Patients sorted by id and each patient's records sorted by study id."""
    by_patient: dict[str, list[StudyRecord]] = defaultdict(list)
    seen: set[str] = set()
    for r in records:
        if not str(r.patient_id).strip():
            raise DataError(f"study {r.study_id!r} has an empty patient id; partitions are made per patient")
        if r.study_id in seen:
            raise DataError(f"study id {r.study_id!r} appears twice in the input records")
        seen.add(r.study_id)
        by_patient[r.patient_id].append(r)
    if not by_patient:
        raise DataError("no records to partition")
    for recs in by_patient.values():
        recs.sort(key=lambda r: r.study_id)
    return sorted(by_patient), dict(by_patient)


def _patient_primary_labels(patients: list[str], by_patient: dict[str, list[StudyRecord]]) -> list[str]:
    """A patient's class is the rarest primary label among its studies (ranked over the whole dataset)."""
    flat = [r for p in patients for r in by_patient[p]]
    prim = primary_labels(flat)
    freq = Counter(prim)
    out, i = [], 0
    for p in patients:
        mine = prim[i : i + len(by_patient[p])]
        i += len(mine)
        out.append(min(mine, key=lambda c: (freq[c], c)))
    return out


def _take_count(n: int, fraction: float, *, keep: int) -> int:
    """How many of ``n`` patients to move out: ``round(n * fraction)``, at least 1 when the fraction is positive,
    while leaving ``keep`` behind."""
    if fraction <= 0 or n <= keep:
        return 0
    return min(max(1, round(n * fraction)), n - keep)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"`{name}` must be an int >= {minimum}, got {value!r}")


def _check_names(arg: str, names: list[str] | None, expected: int) -> None:
    if names is None:
        return
    if len(names) != expected:
        raise ConfigError(f"`{arg}` must list {expected} name(s), got {len(names)}: {names}")
    for n in names:
        if not isinstance(n, str) or not n or n != n.strip() or "/" in n or "\\" in n or n in (".", ".."):
            raise ConfigError(f"`{arg}`: {n!r} is not a valid site name (non-empty, no slashes or outer spaces)")
    dup = sorted(n for n, c in Counter(names).items() if c > 1)
    if dup:
        raise ConfigError(f"`{arg}` repeats {dup}")

"""How different the sites of a federation are: label-side and text-side Jensen–Shannon divergences.

- Label side: each site's *positive-mention distribution* over the 14 observations (share of all positive labels
  that fall on each observation, "No Finding" included), compared pairwise.
- Text side: each site's unigram distribution over a vocabulary shared by all sites (lower-cased word tokens,
  scikit-learn's ``CountVectorizer``), compared pairwise.

Both use the Jensen–Shannon divergence in bits (scipy's ``jensenshannon`` distance, squared, base 2), which lies in
[0, 1]: 0 for identical distributions, 1 for disjoint ones. The figure of a federation is the mean over all site pairs.
Sampling noise alone makes small sites look different, so compare partitions with the same number of sites and
studies (e.g. ``random`` against ``cluster`` of the same data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

from fedmrg.data.records import StudyRecord
from fedmrg.observations import OBSERVATIONS


def label_distribution(records: Sequence[StudyRecord]) -> np.ndarray:
    """Positive-mention distribution, float64 ``(14,)`` in :data:`OBSERVATIONS` order, summing to 1 (all zeros when
    no record has a positive label)."""
    counts = np.zeros(len(OBSERVATIONS))
    for r in records:
        if r.labels:
            counts += [r.labels.get(o) == 1 for o in OBSERVATIONS]
    total = counts.sum()
    return counts / total if total else counts


def unigram_distributions(texts: Sequence[Sequence[str]]) -> np.ndarray:
    """Unigram distribution of each group of texts over their joint vocabulary, float64 ``(G, V)``, rows sum to 1
    (a group without words is all zeros)."""
    from sklearn.feature_extraction.text import CountVectorizer

    docs = [" ".join(group) for group in texts]
    if not any(d.strip() for d in docs):
        return np.zeros((len(docs), 0))
    try:
        counts = CountVectorizer(lowercase=True).fit_transform(docs).toarray().astype(np.float64)
    except ValueError:  # no token of 2+ word characters anywhere
        return np.zeros((len(docs), 0))
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def mean_pairwise_jsd(distributions: np.ndarray) -> float:
    """Mean Jensen–Shannon divergence (bits, in [0, 1]) over all pairs of rows of ``(G, K)``; rows that are all zero
    (no data) are left out. NaN when fewer than two rows remain."""
    from scipy.spatial.distance import jensenshannon

    rows = [d for d in np.asarray(distributions, dtype=np.float64) if d.sum() > 0]
    if len(rows) < 2:
        return float("nan")
    return float(np.mean([jensenshannon(a, b, base=2) ** 2 for a, b in combinations(rows, 2)]))


def heterogeneity(sites: Mapping[str, Sequence[StudyRecord]]) -> dict[str, float]:
    """``{"label_jsd": ..., "text_jsd": ...}``: mean pairwise divergences between the given sites' records."""
    groups = list(sites.values())
    return {
        "label_jsd": mean_pairwise_jsd(np.stack([label_distribution(g) for g in groups])) if groups else float("nan"),
        "text_jsd": mean_pairwise_jsd(unigram_distributions([[r.report for r in g] for g in groups])),
    }

"""Sample which findings a synthetic study has, with realistic prevalence and co-occurrence.

A study is normal with probability ``normal_fraction`` (about a third by default). An abnormal study draws
one clinical *scenario* (two with probability 0.2), and each scenario switches findings on with its own
probabilities, so findings co-occur as they do in practice: heart failure gives cardiomegaly, edema and
effusions together; infection gives pneumonia with consolidation and opacity; an ICU film gives devices,
atelectasis and effusion. Each present finding is then uncertain with a per-finding probability.

The result holds only *present* findings (1 or -1); which negatives a report states (0) depends on the
site's reporting style and is decided by :func:`fedmrg.data.synthetic.reports.write_report`.

Label skew between sites: :func:`style_prevalence` mixes the scenario weights with a per-style Dirichlet draw
(``label_skew`` 0 = identical sites, 1 = fully site-specific mix) and shifts the normal fraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmrg.observations import OBSERVATIONS

#: scenario -> (weight among abnormal studies, {finding: probability})
SCENARIOS: dict[str, tuple[float, dict[str, float]]] = {
    "heart_failure": (
        0.17,
        {
            "Cardiomegaly": 0.8,
            "Edema": 0.75,
            "Pleural Effusion": 0.6,
            "Enlarged Cardiomediastinum": 0.15,
            "Support Devices": 0.25,
        },
    ),
    "infection": (0.16, {"Pneumonia": 0.6, "Consolidation": 0.7, "Lung Opacity": 0.75, "Pleural Effusion": 0.2}),
    "icu": (
        0.14,
        {
            "Support Devices": 1.0,
            "Atelectasis": 0.55,
            "Pleural Effusion": 0.4,
            "Lung Opacity": 0.3,
            "Pneumothorax": 0.08,
        },
    ),
    "atelectasis": (0.1, {"Atelectasis": 1.0, "Lung Opacity": 0.25}),
    "cardiomegaly": (0.1, {"Cardiomegaly": 1.0, "Enlarged Cardiomediastinum": 0.35}),
    "opacity": (0.08, {"Lung Opacity": 1.0, "Edema": 0.1}),
    "nodule": (0.07, {"Lung Lesion": 1.0, "Lung Opacity": 0.15}),
    "pneumothorax": (0.06, {"Pneumothorax": 1.0, "Support Devices": 0.4, "Fracture": 0.15}),
    "trauma": (0.05, {"Fracture": 1.0, "Pneumothorax": 0.15, "Lung Opacity": 0.2}),
    "pleural": (0.04, {"Pleural Other": 1.0, "Pleural Effusion": 0.2}),
    "mediastinum": (0.03, {"Enlarged Cardiomediastinum": 1.0}),
}

#: probability that a present finding is reported (and drawn) as uncertain
UNCERTAIN_RATE: dict[str, float] = {
    "Pneumonia": 0.3,
    "Atelectasis": 0.2,
    "Consolidation": 0.15,
    "Edema": 0.15,
    "Lung Opacity": 0.1,
    "Cardiomegaly": 0.1,
    "Enlarged Cardiomediastinum": 0.15,
    "Pleural Effusion": 0.1,
    "Pneumothorax": 0.1,
    "Lung Lesion": 0.15,
    "Fracture": 0.15,
    "Pleural Other": 0.1,
    "Support Devices": 0.0,
}

NORMAL_FRACTION = 1.0 / 3.0


@dataclass(frozen=True)
class Prevalence:
    """Normal fraction and scenario weights of one style (site)."""

    normal_fraction: float
    scenario_weights: tuple[float, ...]


def base_prevalence() -> Prevalence:
    w = np.array([SCENARIOS[k][0] for k in SCENARIOS])
    return Prevalence(NORMAL_FRACTION, tuple(float(x) for x in w / w.sum()))


def style_prevalence(style: int, *, label_skew: float, seed: int, alpha: float = 0.5) -> Prevalence:
    """Prevalence of ``style``: the base mix moved toward a per-style Dirichlet(``alpha``) draw by ``label_skew``.

    Raises:
        ValueError: ``label_skew`` outside [0, 1] or ``alpha`` <= 0.
    """
    if not 0.0 <= label_skew <= 1.0:
        raise ValueError(f"`label_skew` must be in [0, 1], got {label_skew}")
    if alpha <= 0:
        raise ValueError(f"`alpha` must be > 0, got {alpha}")
    base = base_prevalence()
    if label_skew == 0.0:
        return base
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7, int(style)]))
    site = rng.dirichlet(np.full(len(SCENARIOS), alpha))
    w = (1.0 - label_skew) * np.asarray(base.scenario_weights) + label_skew * site
    normal = float(np.clip(base.normal_fraction + label_skew * rng.uniform(-0.2, 0.25), 0.05, 0.8))
    return Prevalence(normal, tuple(float(x) for x in w / w.sum()))


def sample_findings(rng: np.random.Generator, prevalence: Prevalence | None = None) -> dict[str, int]:
    """Present findings of one study: observation name -> 1 (positive) or -1 (uncertain); {} for a normal study.

    "No Finding" is never returned (the report writer sets it); at least one finding is present otherwise.
    """
    prevalence = prevalence or base_prevalence()
    names = list(SCENARIOS)
    # fixed number of draws per study, so changing one probability does not reshuffle later studies
    u = rng.random(4 + 2 * len(OBSERVATIONS))
    if u[0] < prevalence.normal_fraction:
        return {}
    cum = np.cumsum(prevalence.scenario_weights)
    picks = [names[min(int(np.searchsorted(cum, u[1] * cum[-1])), len(names) - 1)]]
    if u[2] < 0.2:
        picks.append(names[min(int(np.searchsorted(cum, u[3] * cum[-1])), len(names) - 1)])
    probs: dict[str, float] = {}
    for p in picks:
        for name, q in SCENARIOS[p][1].items():
            probs[name] = 1.0 - (1.0 - probs.get(name, 0.0)) * (1.0 - q)
    out: dict[str, int] = {}
    for i, name in enumerate(OBSERVATIONS):
        if name in probs and u[4 + i] < probs[name]:
            out[name] = -1 if u[4 + len(OBSERVATIONS) + i] < UNCERTAIN_RATE.get(name, 0.0) else 1
    if not out:  # scenario drew nothing: keep its most likely finding
        top = max(SCENARIOS[picks[0]][1].items(), key=lambda kv: kv[1])[0]
        out[top] = 1
    if out.get("Pneumonia") and "Consolidation" not in out and "Lung Opacity" not in out:
        out["Lung Opacity"] = 1  # pneumonia is seen as an opacity on the film
    return out

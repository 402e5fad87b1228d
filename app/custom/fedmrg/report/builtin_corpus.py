"""A style-neutral report corpus for warming up the built-in language model.

Why neutral: the federated task is to learn each site's reporting *style* (specialised adapters) and the shared
clinical content (generic adapter). If the built-in decoder were pretrained on the very styles the demo sites write in,
the adapters would have little left to learn and the demo would not exercise them. So the warm-up corpus states the
same 14 CheXpert observations in one plain canonical wording of its own (a few fixed variants per finding, chosen at
random, fixed sentence order), shares the clinical vocabulary with any site style, but none of a site's phrasing,
ordering or sections. It is written here, not taken from ``fedmrg.data.synthetic``, so that no site style can leak
into the frozen decoder whatever styles that generator adds later. Single sentences can still coincide with one of a
site's phrasings ("there is no pneumothorax"): plain radiology sentences are shared by any style; a site's layout,
sections, ordering and summary sentences are not.

Text is lower-cased and R2Gen-cleaned (sentences end with ``" ."``), as the text metrics expect.
"""

from __future__ import annotations

import random

from fedmrg.observations import OBSERVATIONS

_SIDES = ("right", "left")
_ZONES = ("upper lobe", "middle lobe", "lower lobe", "base", "perihilar region")
_DEVICES = (
    "endotracheal tube",
    "right internal jugular catheter",
    "nasogastric tube",
    "cardiac pacemaker",
    "picc line",
)

#: observation -> (positive variants, negative variants, uncertain variants); ``{side}``, ``{zone}``, ``{device}``
#: are filled at random. Observations without a natural negative sentence have an empty tuple (left blank).
_PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "Enlarged Cardiomediastinum": (
        ("the cardiomediastinal silhouette is enlarged", "the mediastinum is widened"),
        ("the cardiomediastinal silhouette is within normal limits", "the mediastinal contours are normal"),
        ("the mediastinum may be mildly widened",),
    ),
    "Cardiomegaly": (
        ("the heart is enlarged", "there is cardiomegaly"),
        ("the heart size is normal", "there is no cardiomegaly"),
        ("the heart size is borderline enlarged",),
    ),
    "Lung Opacity": (
        ("there is an opacity in the {side} {zone}", "there is increased opacity in the {side} {zone}"),
        ("there is no focal airspace opacity",),
        ("a faint opacity may be present in the {side} {zone}",),
    ),
    "Lung Lesion": (
        ("there is a nodule in the {side} {zone}", "there is a mass in the {side} {zone}"),
        ("there is no suspicious pulmonary nodule or mass",),
        ("a possible nodule is seen in the {side} {zone}",),
    ),
    "Edema": (
        ("there is pulmonary edema", "there is mild interstitial edema"),
        ("there is no pulmonary edema",),
        ("mild vascular congestion may reflect early edema",),
    ),
    "Consolidation": (
        ("there is consolidation in the {side} {zone}",),
        ("there is no focal consolidation",),
        ("possible consolidation in the {side} {zone}",),
    ),
    "Pneumonia": (
        ("findings are consistent with pneumonia",),
        ("there is no evidence of pneumonia",),
        ("pneumonia cannot be excluded",),
    ),
    "Atelectasis": (
        ("there is atelectasis at the {side} base", "there is subsegmental atelectasis in the {side} {zone}"),
        ("there is no atelectasis",),
        ("possible atelectasis at the {side} base",),
    ),
    "Pneumothorax": (
        ("there is a small {side} pneumothorax", "there is a {side} pneumothorax"),
        ("there is no pneumothorax",),
        ("a small {side} pneumothorax is not excluded",),
    ),
    "Pleural Effusion": (
        ("there is a {side} pleural effusion", "there is a small {side} pleural effusion"),
        ("there is no pleural effusion",),
        ("possible small {side} pleural effusion",),
    ),
    "Pleural Other": (
        ("there is pleural thickening on the {side}",),
        ("there is no pleural thickening",),
        ("possible pleural thickening on the {side}",),
    ),
    "Fracture": (
        ("there is a fracture of a {side} rib", "there is an old healed {side} rib fracture"),
        ("there is no acute fracture", "the osseous structures are intact"),
        ("a possible {side} rib fracture is noted",),
    ),
    "Support Devices": (
        ("a {device} is in place", "there is a {device} in standard position"),
        (),
        ("a {device} may be malpositioned",),
    ),
}

#: marginal probability that an observation is positive / uncertain when the study is abnormal
_P_POSITIVE: dict[str, float] = {
    "Enlarged Cardiomediastinum": 0.06, "Cardiomegaly": 0.18, "Lung Opacity": 0.20, "Lung Lesion": 0.06,
    "Edema": 0.07, "Consolidation": 0.06, "Pneumonia": 0.06, "Atelectasis": 0.14, "Pneumothorax": 0.04,
    "Pleural Effusion": 0.14, "Pleural Other": 0.03, "Fracture": 0.04, "Support Devices": 0.10,
}  # fmt: skip
_P_UNCERTAIN = 0.03
_P_NEGATIVE_MENTION = 0.5
_P_NORMAL = 0.35


def sample_neutral_labels(rng: random.Random) -> dict[str, int | None]:
    """Draw one study's labels in CheXpert's CSV convention (1 / 0 / -1 / None), keys = ``OBSERVATIONS``."""
    labels: dict[str, int | None] = dict.fromkeys(OBSERVATIONS)
    if rng.random() >= _P_NORMAL:
        for obs, p in _P_POSITIVE.items():
            u = rng.random()
            if u < p:
                labels[obs] = 1
            elif u < p + _P_UNCERTAIN:
                labels[obs] = -1
            elif rng.random() < _P_NEGATIVE_MENTION and _PHRASES[obs][1]:
                labels[obs] = 0
    if all(v != 1 for obs, v in labels.items() if obs != "Support Devices"):
        labels["No Finding"] = 1
        for obs in ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Opacity"):
            labels[obs] = labels[obs] if labels[obs] is not None else 0
    return labels


def neutral_report(labels: dict[str, int | None], rng: random.Random) -> str:
    """Write one lower-cased, R2Gen-cleaned report for ``labels`` (CheXpert CSV convention) in the neutral style."""
    sentences = []
    for obs, (pos, neg, unc) in _PHRASES.items():
        variants = {1: pos, 0: neg, -1: unc}.get(labels.get(obs), ())  # type: ignore[arg-type]
        if variants:
            template = rng.choice(variants)
            sentences.append(
                template.format(side=rng.choice(_SIDES), zone=rng.choice(_ZONES), device=rng.choice(_DEVICES))
            )
    positives = [o.lower() for o, v in labels.items() if v == 1 and o not in ("No Finding", "Support Devices")]
    if labels.get("No Finding") == 1:
        sentences.append("no acute cardiopulmonary abnormality")
    elif positives:
        sentences.append("impression " + " and ".join(positives))
    return " . ".join(sentences) + " ."


def neutral_reports(n: int, *, seed: int) -> list[str]:
    """``n`` neutral-style reports, deterministic in ``seed`` (labels from a fixed prior, see module docstring)."""
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    rng = random.Random(seed)
    return [neutral_report(sample_neutral_labels(rng), rng) for _ in range(n)]

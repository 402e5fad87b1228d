"""Synthetic radiology reports in a distinct style per site, written from a study's findings.

A :class:`ReportStyle` fixes how one (synthetic) site reports: the layout (IU-like prose, numbered impression,
terse, organ-system sections, impression only), how negatives are phrased ("No X." / "There is no X." / "No
evidence of X." / "Negative for X."), the normal summary ("No acute cardiopulmonary abnormality." ...), how
uncertainty is hedged, how many negatives are stated and whether the heart or the lungs come first. Style
``k`` of ``K`` combines these axes deterministically, so styles 0..4 differ in layout and 5..9 again in wording.

Phrasing is standard radiology language ("cardiomegaly", "small left pleural effusion", "no pneumothorax",
"may represent atelectasis") so a rule-based labeler recovers the labels; :func:`write_report` returns the
labels the text states (present findings as given, 0 for every negative it writes, None otherwise), which
become the study's labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedmrg.data.synthetic.layout import DEVICES, Finding, FindingLayout
from fedmrg.observations import OBSERVATIONS

Structure = Literal["prose", "itemised", "terse", "sectioned", "impression_only"]
STRUCTURES: tuple[Structure, ...] = ("prose", "itemised", "terse", "sectioned", "impression_only")

_NEG_SINGLE = ("No {x}.", "There is no {x}.", "No evidence of {x}.", "Negative for {x}.")
_NEG_LIST = ("No {x}.", "There is no {x}.", "No evidence of {x}.", "Negative for {x}.")
_UNCERTAIN = ("Possible {x}.", "{X} cannot be excluded.", "Findings may represent {x}.", "Questionable {x}.")
_NORMAL_SUMMARY = (
    "No acute cardiopulmonary abnormality.",
    "No acute cardiopulmonary process.",
    "No active disease.",
    "No acute intrathoracic process.",
    "Normal chest radiograph.",
)
_NORMAL_HEART = (
    "The heart is normal in size.",
    "Heart size is normal.",
    "Normal heart size.",
    "The cardiac silhouette is within normal limits.",
)
_NORMAL_MEDIASTINUM = (
    "The mediastinum is unremarkable.",
    "Mediastinal contours are normal.",
    "Normal mediastinal contours.",
    "The mediastinal silhouette is within normal limits.",
)
_CLEAR_LUNGS = ("The lungs are clear.", "Lungs are clear.", "Clear lungs.", "The lungs are well expanded and clear.")

#: Negatives a style may state, most commonly stated first, with the noun phrase used.
_NEGATABLE: tuple[tuple[str, str], ...] = (
    ("Pneumothorax", "pneumothorax"),
    ("Pleural Effusion", "pleural effusion"),
    ("Consolidation", "focal consolidation"),
    ("Edema", "pulmonary edema"),
    ("Fracture", "acute fracture"),
    ("Lung Opacity", "focal airspace opacity"),
    ("Pneumonia", "pneumonia"),
    ("Lung Lesion", "suspicious pulmonary nodule"),
    ("Atelectasis", "atelectasis"),
    ("Pleural Other", "pleural thickening"),
)


@dataclass(frozen=True)
class ReportStyle:
    """How one site writes reports (see module docstring). Build with :func:`report_style`.

    Args:
        index: the style number.
        structure: report layout, one of :data:`STRUCTURES`.
        negation: index into the negative phrasings ("No X." / "There is no X." / "No evidence of X." / "Negative for
            X.").
        uncertainty: index into the hedges ("Possible X." / "X cannot be excluded." / "Findings may represent X." /
            "Questionable X.").
        normal_summary: the impression of a normal study.
        n_negatives: how many of the common negatives (pneumothorax, effusion, ...) the report states.
        heart_first: describe heart and mediastinum before the lungs.
        mention_heart: state a normal heart size / mediastinum explicitly.
    """

    index: int
    structure: Structure
    negation: int
    uncertainty: int
    normal_summary: str
    n_negatives: int
    heart_first: bool
    mention_heart: bool
    heart_phrase: str
    mediastinum_phrase: str
    clear_phrase: str


def report_style(k: int) -> ReportStyle:
    """Style ``k`` (>= 0): layout from ``k % 5``, wording axes from ``k`` and ``k // 5``."""
    if k < 0:
        raise ValueError(f"`style` must be >= 0, got {k}")
    g = k // len(STRUCTURES)
    structure = STRUCTURES[k % len(STRUCTURES)]
    n_neg = {"prose": 5, "itemised": 3, "terse": 2, "sectioned": 6, "impression_only": 1}[structure]
    return ReportStyle(
        index=k,
        structure=structure,
        negation=(k + g) % len(_NEG_SINGLE),
        uncertainty=(k + 2 * g) % len(_UNCERTAIN),
        normal_summary=_NORMAL_SUMMARY[(k + g) % len(_NORMAL_SUMMARY)],
        n_negatives=max(1, n_neg - g % 2),
        heart_first=(k + g) % 2 == 0,
        mention_heart=structure != "impression_only" and (k + g) % 3 != 2,
        heart_phrase=_NORMAL_HEART[(k + g) % len(_NORMAL_HEART)],
        mediastinum_phrase=_NORMAL_MEDIASTINUM[(k + 3 * g) % len(_NORMAL_MEDIASTINUM)],
        clear_phrase=_CLEAR_LUNGS[(k + g) % len(_CLEAR_LUNGS)],
    )


@dataclass(frozen=True)
class SyntheticReport:
    """A generated report and the labels its text states (CheXpert 1 / 0 / -1 / None for every observation)."""

    findings: str
    impression: str
    labels: dict[str, int | None]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


_DEGREE = {"small": "mild", "moderate": "moderate", "large": "marked"}
_DEGREE_ADV = {"small": "mildly", "moderate": "moderately", "large": "markedly"}
_SIZE = {"small": "small", "moderate": "moderate", "large": "large"}


def _lobe(f: Finding) -> str:
    if f.zone == "upper":
        return "upper lobe"
    if f.zone == "mid":
        return "lingula" if f.side == "left" else "middle lobe"
    return "lower lobe"


def _where(f: Finding, noun: str = "lung") -> str:
    """'the right lower lung' / 'both lower lungs'."""
    if f.side == "bilateral":
        return f"both {f.zone} {noun}s"
    return f"the {f.side} {f.zone} {noun}"


def _positive(name: str, f: Finding, rng: np.random.Generator) -> str:
    """One sentence stating a positive finding."""
    side = f.side
    pick = int(rng.integers(3))
    if name == "Cardiomegaly":
        return (
            f"The heart is {_DEGREE_ADV[f.extent]} enlarged.",
            f"{_cap(_DEGREE[f.extent])} cardiomegaly.",
            f"The cardiac silhouette is {_DEGREE_ADV[f.extent]} enlarged.",
        )[pick]
    if name == "Enlarged Cardiomediastinum":
        return (
            "The mediastinum is widened.",
            "Enlarged cardiomediastinal silhouette.",
            "The mediastinal contour is widened.",
        )[pick]
    if name == "Lung Opacity":
        where = f"in {_where(f)}"
        return (f"Patchy opacity {where}.", f"Hazy airspace opacity {where}.", f"Increased opacity {where}.")[pick]
    if name == "Lung Lesion":
        mm = 2 * f.size * 175.0  # 2 normalized units = 35 cm
        size = f"{mm / 10:.1f} cm" if mm >= 10 else f"{mm:.0f} mm"
        kind = "mass" if mm >= 30 else "nodule"
        return (
            f"{size} {kind} in {_where(f)}.",
            f"There is a {size} rounded {kind} in {_where(f)}.",
            f"A {size} {kind} projects over {_where(f)}.",
        )[pick]
    if name == "Edema":
        deg = {"small": "mild", "moderate": "moderate", "large": "severe"}[f.extent]
        return (
            f"{_cap(deg)} pulmonary edema.",
            f"There is {deg} interstitial pulmonary edema.",
            f"{_cap(deg)} interstitial edema with pulmonary vascular congestion.",
        )[pick]
    if name == "Consolidation":
        loc = "bilateral lower lobe" if side == "bilateral" else f"{side} {_lobe(f)}"
        return (f"Consolidation in the {loc}.", f"Focal consolidation in the {loc}.", f"There is {loc} consolidation.")[
            pick
        ]
    if name == "Pneumonia":
        loc = "bilateral lower lobe" if side == "bilateral" else f"{side} {_lobe(f)}"
        return (
            f"{_cap(loc)} pneumonia.",
            f"Findings consistent with {loc} pneumonia.",
            f"{_cap(loc)} pneumonia is present.",
        )[pick]
    if name == "Atelectasis":
        loc = "bibasilar" if side == "bilateral" else f"{side} basilar"
        return (
            f"{_cap(loc)} linear atelectasis.",
            f"Subsegmental atelectasis at the {loc.split()[0]} base" + ("s." if side == "bilateral" else "."),
            f"{_cap(loc)} discoid atelectasis.",
        )[pick]
    if name == "Pneumothorax":
        size = _SIZE[f.extent]
        return (
            f"{_cap(size)} {side} apical pneumothorax.",
            f"There is a {size} {side} pneumothorax.",
            f"{_cap(size)} {side}-sided pneumothorax.",
        )[pick]
    if name == "Pleural Effusion":
        size = _SIZE[f.extent]
        if side == "bilateral":
            return (
                f"{_cap(size)} bilateral pleural effusions.",
                f"There are {size} bilateral pleural effusions.",
                f"{_cap(size)} pleural effusions bilaterally.",
            )[pick]
        return (
            f"{_cap(size)} {side} pleural effusion.",
            f"There is a {size} {side} pleural effusion.",
            f"{_cap(size)} {side}-sided pleural effusion.",
        )[pick]
    if name == "Pleural Other":
        where = "apical" if f.zone == "upper" else "lateral"
        s = "bilateral" if side == "bilateral" else side
        return (
            f"{_cap(s)} {where} pleural thickening.",
            f"Pleural thickening along the {s} {where} chest wall.",
            f"Mild {s} {where} pleural thickening.",
        )[pick]
    if name == "Fracture":
        if f.bone == "clavicle":
            return (
                f"{_cap(side)} clavicle fracture.",
                f"Fracture of the {side} clavicle.",
                f"There is a fracture of the mid {side} clavicle.",
            )[pick]
        n = _ordinal(f.rib)
        return (
            f"Fracture of the {side} {n} rib.",
            f"{_cap(side)} {n} rib fracture.",
            f"Acute-appearing fracture of the lateral {side} {n} rib.",
        )[pick]
    if name == "Support Devices":
        return " ".join(_device_sentence(d, f, rng) for d in f.devices)
    raise ValueError(f"no report phrase for {name!r}")


def _uncertain(name: str, f: Finding, style: ReportStyle, rng: np.random.Generator) -> str:
    """One hedged sentence for an uncertain finding, in the style's hedge.

    "X cannot be excluded" gets a compact, pre-modified noun ("left upper lobe consolidation") so the hedge stays
    next to the finding, as radiologists write it; the other hedges take the noun with its location after it.
    """
    side = f.side
    where = _where(f)
    lobe = "bilateral lower lobe" if side == "bilateral" else f"{side} {_lobe(f)}"
    zone = f"{side} {f.zone} lung" if side != "bilateral" else f"bilateral {f.zone} lung"
    rib = f"{side} clavicle" if f.bone == "clavicle" else f"{side} {_ordinal(f.rib)} rib"
    # name -> (noun with location after, compact noun)
    phrases = {
        "Cardiomegaly": ("mild cardiomegaly", "mild cardiomegaly"),
        "Enlarged Cardiomediastinum": ("mediastinal widening", "mediastinal widening"),
        "Lung Opacity": (f"faint opacity in {where}", f"faint {zone} opacity"),
        "Lung Lesion": (f"small nodule in {where}", f"small {zone} nodule"),
        "Edema": ("mild interstitial edema", "mild interstitial edema"),
        "Consolidation": (f"early consolidation in the {lobe}", f"early {lobe} consolidation"),
        "Pneumonia": ("pneumonia", "pneumonia"),
        "Atelectasis": (
            f"atelectasis at the {side} base" + ("s" if side == "bilateral" else ""),
            "bibasilar atelectasis" if side == "bilateral" else f"{side} basilar atelectasis",
        ),
        "Pneumothorax": (f"tiny {side} apical pneumothorax", f"tiny {side} apical pneumothorax"),
        "Pleural Effusion": (
            f"small {side} pleural effusion" + ("s" if side == "bilateral" else ""),
            f"small {side} pleural effusion" + ("s" if side == "bilateral" else ""),
        ),
        "Pleural Other": (f"{side} pleural thickening", f"{side} pleural thickening"),
        "Fracture": (f"nondisplaced fracture of the {rib}", f"nondisplaced {rib} fracture"),
    }
    template = _UNCERTAIN[(style.uncertainty + int(rng.integers(2)) * 2) % len(_UNCERTAIN)]
    long, compact = phrases[name]
    x = compact if template.startswith("{X}") else long
    return template.format(x=x, X=_cap(x))


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _device_sentence(d: str, f: Finding, rng: np.random.Generator) -> str:
    if d == "ett":
        return f"Endotracheal tube terminates {int(rng.integers(3, 7))} cm above the carina."
    if d == "enteric":
        return "Enteric tube courses below the diaphragm."
    if d == "cvc":
        return "Right internal jugular central venous catheter tip projects over the SVC."
    if d == "picc":
        return "Left PICC line tip in the lower SVC."
    if d == "pacemaker":
        return "Left chest wall pacemaker with leads in the right atrium and right ventricle."
    if d == "sternotomy":
        return "Median sternotomy wires are intact."
    if d == "ecg":
        return "Monitoring leads overlie the chest."
    if d == "chest_tube":
        return f"{_cap(f.side)} chest tube in place."
    return f"{_cap(DEVICES[d])}."


def _negatives(names: list[tuple[str, str]], style: ReportStyle) -> list[str]:
    """Negative sentences: one combined 'No A or B.' for up to two, then singles."""
    if not names:
        return []
    nouns = [n for _, n in names]
    out = []
    if len(nouns) >= 2:
        out.append(_NEG_LIST[style.negation].format(x=f"{nouns[0]} or {nouns[1]}"))
        nouns = nouns[2:]
    out += [_NEG_SINGLE[(style.negation + i + 1) % len(_NEG_SINGLE)].format(x=n) for i, n in enumerate(nouns)]
    return out


_LUNG_ORDER = ("Lung Opacity", "Consolidation", "Pneumonia", "Edema", "Atelectasis", "Lung Lesion")
_PLEURA_ORDER = ("Pleural Effusion", "Pneumothorax", "Pleural Other")
_HEART_ORDER = ("Cardiomegaly", "Enlarged Cardiomediastinum")


def write_report(
    present: dict[str, int], layout: FindingLayout, style: ReportStyle | int, rng: np.random.Generator
) -> SyntheticReport:
    """Write FINDINGS and IMPRESSION for the ``present`` findings (name -> 1 or -1) in ``style``.

    Args:
        present: positive (1) and uncertain (-1) findings; everything else is absent.
        layout: their geometry (side, size, zone) from :func:`~fedmrg.data.synthetic.layout.sample_layout` with
            the render seed, so the text describes what the image shows.
        style: a :class:`ReportStyle` or its index.
        rng: chooses among equivalent phrasings.

    Returns:
        the report and the labels it states (every observation; "No Finding" 1 when nothing but support devices
        is present, else None).
    """
    if isinstance(style, int):
        style = report_style(style)
    bad = {k: v for k, v in present.items() if v not in (1, -1) or k not in OBSERVATIONS or k == "No Finding"}
    if bad:
        raise ValueError(f"`present` must map finding names to 1 or -1, got {bad}")
    labels: dict[str, int | None] = {name: None for name in OBSERVATIONS}
    labels.update(present)

    def state(name: str) -> str | None:
        f = layout.get(name)
        if name not in present or f is None:
            return None
        return _positive(name, f, rng) if present[name] == 1 else _uncertain(name, f, style, rng)

    heart = [s for n in _HEART_ORDER if (s := state(n))]
    lungs = [s for n in _LUNG_ORDER if (s := state(n))]
    pleura = [s for n in _PLEURA_ORDER if (s := state(n))]
    bones = [s for n in ("Fracture",) if (s := state(n))]
    devices = [s for n in ("Support Devices",) if (s := state(n))]

    # negatives this style states: the most common ones first, skipping present findings
    neg = [(n, p) for n, p in _NEGATABLE if n not in present][: style.n_negatives]
    for n, _ in neg:
        labels[n] = 0
    if style.mention_heart:
        if "Cardiomegaly" not in present:
            heart.insert(0, style.heart_phrase)
            labels["Cardiomegaly"] = 0
        if "Enlarged Cardiomediastinum" not in present and style.structure in ("prose", "sectioned"):
            heart.append(style.mediastinum_phrase)
            labels["Enlarged Cardiomediastinum"] = 0
    pleural_neg = _negatives([x for x in neg if x[0] in _PLEURA_ORDER], style)
    other_neg = _negatives([x for x in neg if x[0] not in _PLEURA_ORDER and x[0] != "Fracture"], style)
    bone_neg = _negatives([x for x in neg if x[0] == "Fracture"], style)
    lung_text = lungs or [style.clear_phrase]
    if lungs and style.structure in ("prose", "sectioned"):
        lung_text = [*lungs, "The lungs are otherwise clear."]

    abnormal = [n for n in present if n != "Support Devices"]
    devices_found = layout.get("Support Devices")
    # CheXpert counts post-surgical change (sternotomy) as an "other finding" that blocks No Finding
    surgical = devices_found is not None and "sternotomy" in devices_found.devices
    labels["No Finding"] = None if abnormal or surgical else 1
    summary = [state(n) for n in OBSERVATIONS if n in present and n != "Support Devices"]
    summary_text = [s for s in summary if s] or [style.normal_summary]

    if style.structure == "prose":
        body = heart + lung_text if style.heart_first else lung_text + heart
        findings = [*devices, *body, *pleura, *pleural_neg, *other_neg, *bones, *bone_neg]
        impression = summary_text[:2] if abnormal else [style.normal_summary]
    elif style.structure == "itemised":
        findings = [*devices, *heart, *lungs, *pleura, *bones, *pleural_neg, *other_neg, *bone_neg]
        items = summary_text if abnormal else [style.normal_summary]
        impression = [f"{i}. {s}" for i, s in enumerate(items, 1)]
    elif style.structure == "terse":
        findings = [
            *devices,
            *(heart if style.heart_first else []),
            *lungs,
            *pleura,
            *bones,
            *(pleural_neg + other_neg + bone_neg),
            *([] if style.heart_first else heart),
        ]
        impression = summary_text[:1] if abnormal else [style.normal_summary]
    elif style.structure == "sectioned":
        sections = [
            ("LUNGS", lung_text + other_neg),
            ("PLEURA", pleura + pleural_neg),
            ("CARDIAC", heart),
            ("OSSEOUS", bones + bone_neg),
        ]
        if not style.heart_first:
            sections = sections[2:3] + sections[:2] + sections[3:]
        findings = ([*devices] if devices else []) + [f"{h}: {' '.join(t)}" for h, t in sections if t]
        impression = summary_text if abnormal else [style.normal_summary]
    else:  # impression_only
        findings = []
        impression = [
            *(summary_text if abnormal else [style.normal_summary]),
            *devices,
            *pleural_neg,
            *other_neg,
            *bone_neg,
        ]
    return SyntheticReport(" ".join(findings), " ".join(impression), labels)

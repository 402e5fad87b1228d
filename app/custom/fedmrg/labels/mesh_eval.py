"""Score the labeler's positives against IU X-ray's human MeSH indexing (``indiana_reports.csv``).

IU's ``MeSH`` column holds ``;``-separated terms, each a main heading optionally followed by ``/``-separated
subterms (``Cardiomegaly/mild``, ``Pleural Effusion/right/small``, ``Cardiac Shadow/enlarged``); ``Problems`` holds
the main headings alone. A reference term ``A`` matches any entry whose main heading is ``A``; ``A/b`` matches
entries with main heading ``A`` and subterm ``b``. Reports indexed ``No Indexing`` have no reference and reports
with no text cannot be labeled: both are left out and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Reference used for each observation: the MeSH terms (as above) whose presence means "positive".
MESH_REFERENCE: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("Cardiomegaly", "Cardiac Shadow/enlarged"),
    "Pleural Effusion": ("Pleural Effusion",),
    "Atelectasis": ("Pulmonary Atelectasis",),
    "Pneumothorax": ("Pneumothorax", "Hydropneumothorax"),
    "Edema": ("Pulmonary Edema", "Pulmonary Congestion", "Heart Failure"),
    "Fracture": ("Fractures, Bone",),
    "Pneumonia": ("Pneumonia",),
    "Consolidation": ("Consolidation",),
    "Support Devices": (
        "Catheters, Indwelling",
        "Surgical Instruments",
        "Implanted Medical Device",
        "Medical Device",
        "Tube, Inserted",
        "Stents",
    ),
    "Lung Opacity": ("Opacity", "Airspace Disease", "Infiltrate"),
    "Lung Lesion": ("Nodule", "Mass"),
    "No Finding": ("normal",),
}

NOT_INDEXED = "No Indexing"


def parse_mesh(cell: str) -> list[tuple[str, tuple[str, ...]]]:
    """``"Cardiomegaly/mild;Pleural Effusion/right"`` -> ``[("Cardiomegaly", ("mild",)), ...]`` (lower-cased subterms)."""
    out = []
    for entry in cell.split(";"):
        parts = [p.strip() for p in entry.split("/")]
        if parts[0]:
            out.append((parts[0].lower(), tuple(p.lower() for p in parts[1:])))
    return out


def mesh_has(entries: Sequence[tuple[str, tuple[str, ...]]], term: str) -> bool:
    """Whether parsed MeSH ``entries`` contain ``term`` (``"A"`` or ``"A/b"``, case-insensitive)."""
    head, *sub = (p.strip().lower() for p in term.split("/"))
    return any(h == head and all(s in subs for s in sub) for h, subs in entries)


@dataclass(frozen=True)
class Score:
    """Precision / recall / F1 of predicted positives against the MeSH reference for one observation.

    ``support`` is the number of reference positives, ``predicted`` the number of predicted positives, ``n`` the
    number of reports scored, ``true_positives`` the reports both call positive.
    """

    observation: str
    reference: tuple[str, ...]
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int
    n: int
    true_positives: int


def score_against_mesh(
    labels: Sequence[dict[str, int | None]],
    mesh_cells: Sequence[str],
    reference: dict[str, tuple[str, ...]] = MESH_REFERENCE,
    *,
    uncertain_as_positive: bool = False,
) -> list[Score]:
    """One :class:`Score` per observation in ``reference`` (sklearn's binary precision / recall / F1).

    Args:
        labels: the labeler's output for N reports.
        mesh_cells: the N reports' ``MeSH`` cells; callers drop ``No Indexing`` reports first.
        reference: observation -> MeSH terms (default :data:`MESH_REFERENCE`).
        uncertain_as_positive: count label -1 as a predicted positive too (default: only 1 is positive).
    """
    from sklearn.metrics import precision_recall_fscore_support

    if len(labels) != len(mesh_cells):
        raise ValueError(f"{len(labels)} label rows but {len(mesh_cells)} MeSH cells")
    parsed = [parse_mesh(c) for c in mesh_cells]
    positive = (1, -1) if uncertain_as_positive else (1,)
    out = []
    for obs, terms in reference.items():
        y_true = [any(mesh_has(p, t) for t in terms) for p in parsed]
        y_pred = [lab[obs] in positive for lab in labels]
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
        tp = sum(t and q for t, q in zip(y_true, y_pred, strict=True))
        out.append(Score(obs, terms, float(p), float(r), float(f), sum(y_true), sum(y_pred), len(y_true), tp))
    return out


def markdown_table(scores: Sequence[Score]) -> str:
    """Scores as a markdown table with the MeSH mapping in the first columns."""
    lines = [
        "| observation | MeSH reference term(s) | precision | recall | F1 | reference + | predicted + |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        lines.append(
            f"| {s.observation} | {', '.join(s.reference)} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} "
            f"| {s.support} | {s.predicted} |"
        )
    return "\n".join(lines)

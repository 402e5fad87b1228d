"""Where and how large each finding of a synthetic study is: shared by the renderer and the report writer.

A :class:`FindingLayout` is drawn from the study's labels and the render seed alone, so the image
(:func:`~fedmrg.data.synthetic.renderer.render_study_image`) and the synthetic report
(:func:`~fedmrg.data.synthetic.reports.write_report`) agree on side, extent and zone ("small left pleural
effusion" is drawn on the patient's left, small) without passing anything but ``(labels, seed)`` around.

Sides are the *patient's* sides: in a PA/AP frontal image the patient's right is on the image's left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedmrg.observations import OBSERVATIONS

Side = Literal["right", "left", "bilateral"]
Extent = Literal["small", "moderate", "large"]
Zone = Literal["upper", "mid", "lower"]

#: Devices the renderer can draw, with the phrase the reports use for each.
DEVICES: dict[str, str] = {
    "ett": "endotracheal tube",
    "enteric": "enteric tube",
    "cvc": "right internal jugular central venous catheter",
    "picc": "left PICC line",
    "pacemaker": "left chest wall pacemaker",
    "sternotomy": "median sternotomy wires",
    "ecg": "overlying monitoring lines",
    "chest_tube": "chest tube",
}


@dataclass(frozen=True)
class Finding:
    """Geometry of one present (positive or uncertain) finding.

    Args:
        name: observation name from :data:`fedmrg.observations.OBSERVATIONS`.
        certain: False for an uncertain (-1) label: drawn weaker and smaller, reported with hedging.
        side: patient side.
        extent: size class; for Cardiomegaly it is the degree (mild / moderate / marked).
        zone: lung zone (upper / mid / lower) for parenchymal findings.
        u: lateral position of a focal finding, 0 (midline) .. 1 (chest wall), in units of the hemithorax width.
        size: finding-specific size in normalized image units (image width = 2), e.g. nodule radius.
        bone: for Fracture, ``"rib"`` or ``"clavicle"``.
        rib: for a rib Fracture, the posterior rib number (1-based, counted from the first visible rib).
        angle: for Atelectasis, tilt of the plate-like band in radians.
        devices: for Support Devices, keys of :data:`DEVICES`; ``side`` is then the chest tube's side.
    """

    name: str
    certain: bool = True
    side: Side = "right"
    extent: Extent = "small"
    zone: Zone = "lower"
    u: float = 0.5
    size: float = 0.0
    bone: str = "rib"
    rib: int = 6
    angle: float = 0.0
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class FindingLayout:
    """All present findings of one study, keyed by observation name."""

    findings: dict[str, Finding] = field(default_factory=dict)

    def get(self, name: str) -> Finding | None:
        return self.findings.get(name)


def _present(labels: dict[str, int | None], name: str) -> int:
    """1 positive, -1 uncertain, 0 otherwise (negative and blank are both 'not drawn')."""
    v = labels.get(name)
    if v not in (None, 0, 1, -1):
        raise ValueError(f"label of {name!r} must be 1, 0, -1 or None, got {v!r}")
    return 0 if v is None else int(v)


def layout_seed_sequence(seed: int) -> np.random.SeedSequence:
    """The seed stream for finding geometry (the renderer's anatomy uses a different one)."""
    return np.random.SeedSequence([int(seed), 1])


def sample_layout(labels: dict[str, int | None], seed: int) -> FindingLayout:
    """Draw the geometry of every positive / uncertain finding in ``labels`` (CheXpert 1 / 0 / -1 / None).

    Deterministic given ``(labels, seed)``. Unknown observation names raise ``ValueError``.
    """
    unknown = set(labels) - set(OBSERVATIONS)
    if unknown:
        raise ValueError(f"unknown observation(s) in `labels`: {sorted(unknown)}; expected names from OBSERVATIONS")
    rng = np.random.default_rng(layout_seed_sequence(seed))
    # Draw every random number unconditionally, in a fixed order, so one label's value never shifts another's geometry.
    draws = {name: rng.random(8) for name in OBSERVATIONS}
    out: dict[str, Finding] = {}

    def side(p_bilateral: float, r: float, r2: float) -> Side:
        if r < p_bilateral:
            return "bilateral"
        return "right" if r2 < 0.5 else "left"

    def extent(r: float, certain: bool) -> Extent:
        if not certain:
            return "small"
        return "small" if r < 0.45 else ("moderate" if r < 0.85 else "large")

    def zone(r: float) -> Zone:
        return "lower" if r < 0.5 else ("mid" if r < 0.8 else "upper")

    for name in OBSERVATIONS:
        state = _present(labels, name)
        if state == 0 or name == "No Finding":
            continue
        r = draws[name]
        certain = state == 1
        if name == "Pleural Effusion":
            p_bi = 0.6 if _present(labels, "Edema") or _present(labels, "Cardiomegaly") else 0.2
            f = Finding(name, certain, side(p_bi, r[0], r[1]), extent(r[2], certain))
        elif name in ("Cardiomegaly", "Enlarged Cardiomediastinum"):
            f = Finding(name, certain, "bilateral", extent(r[2], certain))
        elif name == "Edema":
            f = Finding(name, certain, "bilateral", extent(r[2] * 0.9, certain))
        elif name in ("Lung Opacity", "Consolidation", "Pneumonia"):
            ref = out.get("Consolidation") or out.get("Pneumonia")
            if ref is not None and name != "Lung Opacity" and ref.side != "bilateral":
                # pneumonia drawn where the consolidation is (and vice versa): reports then agree on location
                f = Finding(name, certain, ref.side, ref.extent, ref.zone, ref.u, ref.size)
            else:
                p_bi = 0.3 if name == "Lung Opacity" else 0.1
                f = Finding(
                    name,
                    certain,
                    side(p_bi, r[0], r[1]),
                    extent(r[2], certain),
                    zone(r[3]),
                    u=0.35 + 0.3 * r[4],
                    size=0.16 + 0.12 * r[5],
                )
        elif name == "Lung Lesion":
            size = (0.035 + 0.05 * r[5]) if certain else 0.028
            f = Finding(
                name,
                certain,
                side(0.0, r[0], r[1]),
                "large" if size > 0.065 else "small",
                zone(r[3]),
                u=0.3 + 0.35 * r[4],
                size=size,
            )
        elif name == "Atelectasis":
            f = Finding(
                name,
                certain,
                side(0.15, r[0], r[1]),
                extent(r[2] * 0.8, certain),
                "lower",
                u=0.3 + 0.25 * r[4],
                angle=float(r[5] - 0.5) * 0.5,
            )
        elif name == "Pneumothorax":
            f = Finding(name, certain, side(0.0, r[0], r[1]), extent(r[2], certain), "upper")
        elif name == "Pleural Other":
            f = Finding(name, certain, side(0.15, r[0], r[1]), "small", "upper" if r[3] < 0.5 else "mid")
        elif name == "Fracture":
            f = Finding(
                name,
                certain,
                side(0.0, r[0], r[1]),
                "small",
                bone="clavicle" if r[2] < 0.25 else "rib",
                rib=4 + int(r[3] * 5),
                u=0.45 + 0.25 * r[4],
            )
        elif name == "Support Devices":
            ptx = out.get("Pneumothorax")
            devices = _devices(r, chest_tube=ptx is not None)
            f = Finding(name, certain, ptx.side if ptx is not None else "right", devices=devices)
        else:  # pragma: no cover - every observation is handled above
            raise AssertionError(name)
        out[name] = f
    return FindingLayout(out)


def _devices(r: np.ndarray, *, chest_tube: bool) -> tuple[str, ...]:
    """1-3 devices; a chest tube is likely when a pneumothorax is present."""
    pool = ["ett", "enteric", "cvc", "picc", "pacemaker", "sternotomy", "ecg"]
    sub = np.random.default_rng(int(r[6] * 2**31))
    k = 1 + int(r[7] * 2.999)
    picked = list(sub.choice(len(pool), size=k, replace=False))
    names = [pool[i] for i in sorted(picked)]
    if chest_tube and sub.random() < 0.6:
        names = ["chest_tube", *names[:2]]
    if "enteric" in names and "ett" not in names and sub.random() < 0.5:
        names.insert(0, "ett")  # intubated patients usually have both
    return tuple(dict.fromkeys(names))

"""How each of the 14 observations changes a synthetic radiograph.

Two kinds of change: *anatomy* changes made before painting (:func:`adjust_anatomy`, :func:`diaphragm_shift`:
a larger heart for Cardiomegaly, a wider mediastinum for Enlarged Cardiomediastinum, a raised hemidiaphragm
for Atelectasis) and *overlays* added to the attenuation map (:func:`paint_findings`). An uncertain finding
(``Finding.certain`` False) is painted with the factor :data:`UNCERTAIN_STRENGTH` on density and size.

| observation | drawn as |
|---|---|
| Cardiomegaly | cardiac ellipse widened 1.22 / 1.32 / 1.45x (mild / moderate / marked; uncertain 1.12x) |
| Enlarged Cardiomediastinum | upper mediastinum 1.6-1.9x wider, larger aortic knob (uncertain 1.3x) |
| Pleural Effusion | dependent fluid density with a meniscus rising laterally, blunting the costophrenic angle |
| Pneumothorax | lucent rim without lung markings at apex and lateral wall, thin visceral pleural line |
| Lung Opacity | patchy, cloud-textured density |
| Consolidation | dense, flat-topped region with a sharp fissural margin |
| Pneumonia | patchy consolidation with surrounding haze |
| Edema | bilateral perihilar haze, indistinct markings, septal (Kerley B) lines at the lateral bases |
| Atelectasis | linear plate-like band in the lower zone, hemidiaphragm raised 0.05 |
| Lung Lesion | round nodule / mass |
| Pleural Other | pleural thickening along the lateral wall or an apical cap |
| Fracture | cortical break with a step in a posterior rib or the clavicle (drawn by the renderer's bones) |
| Support Devices | tubes, catheters, pacemaker with leads, sternotomy wires, monitoring leads |
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedmrg.data.synthetic.anatomy import Anatomy, Frame
from fedmrg.data.synthetic.fields import dist, ramp
from fedmrg.data.synthetic.layout import Finding, FindingLayout
from fedmrg.data.synthetic.scene import SIDES, LineCanvas, Lung, bezier, segment_distance, side_index

#: Density / size factor of an uncertain (-1) finding relative to a positive one.
UNCERTAIN_STRENGTH = 0.5

_HEART_SCALE = {"small": 1.22, "moderate": 1.32, "large": 1.45}
_EXTENT_SCALE = {"small": 0.75, "moderate": 1.0, "large": 1.35}

__all__ = ["Finding", "PaintContext", "adjust_anatomy", "diaphragm_shift", "effusion_side_weight", "paint_findings"]


def _k(f: Finding) -> float:
    return 1.0 if f.certain else UNCERTAIN_STRENGTH


def adjust_anatomy(a: Anatomy, layout: FindingLayout) -> Anatomy:
    """Apply the anatomy-level findings (heart size, mediastinal width) to a normal anatomy."""
    f = layout.get("Cardiomegaly")
    if f is not None:
        g = _HEART_SCALE[f.extent] if f.certain else 1.12
        rx, ry = a.heart_radii
        hx, hy = a.heart_center
        a = replace(a, heart_radii=(rx * g, ry * (1 + 0.5 * (g - 1))), heart_center=(hx + 0.35 * rx * (g - 1), hy))
    f = layout.get("Enlarged Cardiomediastinum")
    if f is not None:
        g = (1.6 + 0.3 * (f.extent != "small")) if f.certain else 1.3
        a = replace(a, mediastinum_half_width=a.mediastinum_half_width * g)
    return a


def diaphragm_shift(layout: FindingLayout) -> dict[int, float]:
    """Per side (-1 right, +1 left) vertical shift of the costophrenic angle; negative raises it."""
    out = {-1: 0.0, 1: 0.0}
    f = layout.get("Atelectasis")
    if f is not None:
        for s in side_index(f.side):
            out[s] = -0.05 * _k(f)
    return out


def effusion_side_weight(layout: FindingLayout, side: int) -> float:
    """1 when an effusion fills the base on ``side`` (hides the gastric bubble), else 0."""
    f = layout.get("Pleural Effusion")
    return float(f is not None and side in side_index(f.side) and f.extent != "small")


@dataclass
class PaintContext:
    """What the overlays need from the renderer: grids (size, size), anatomy, lungs and shared noise fields."""

    X: np.ndarray
    Y: np.ndarray
    anatomy: Anatomy
    lungs: dict[int, Lung]
    lung_mask: np.ndarray
    central: np.ndarray
    cloud: np.ndarray
    fine: np.ndarray
    lines: LineCanvas
    px: float
    rng: np.random.Generator

    @property
    def frame(self) -> Frame:
        return self.lines.frame

    def visible(self, side: int) -> np.ndarray:
        """Lung ``side`` where it is not hidden behind heart and mediastinum, (size, size) in [0, 1]."""
        return self.lungs[side].mask * (1.0 - self.central)


def paint_findings(A: np.ndarray, layout: FindingLayout, ctx: PaintContext) -> tuple[np.ndarray, np.ndarray, float]:
    """Add every finding's density to the attenuation map ``A`` (size, size).

    Returns:
        (A, keep_markings, marking_gain): the new map, a (size, size) factor in [0, 1] that hides lung
        markings (0 inside a pneumothorax) and a scalar gain on their contrast (> 1 with edema).
    """
    keep = np.ones_like(A)
    gain = 1.0
    for name, f in layout.findings.items():
        painter = _PAINTERS.get(name)
        if painter is None:
            continue
        out = painter(f, ctx)
        if name == "Pneumothorax":
            add, keep = out
        else:
            add = out
        A = A + add
        if name == "Edema":
            gain += 0.6 * _k(f)
    return A, keep, gain


def _envelope(lu: Lung, center: tuple[float, float], radius: float) -> np.ndarray:
    du, dv = lu.u - center[0], lu.v - center[1]
    return np.exp(-(du * du + dv * dv) / (radius * radius))


def _opacity(f: Finding, ctx: PaintContext) -> np.ndarray:
    add = np.zeros_like(ctx.X)
    for s in side_index(f.side):
        lu = ctx.lungs[s]
        env = _envelope(lu, lu.point(f.u, f.zone), f.size * _EXTENT_SCALE[f.extent])
        patchy = np.clip(env * (0.7 + 0.6 * ctx.cloud + 0.25 * ctx.fine), 0.0, 1.0)
        add += 0.15 * _k(f) * patchy * ctx.visible(s)
    return add


def _consolidation(f: Finding, ctx: PaintContext) -> np.ndarray:
    add = np.zeros_like(ctx.X)
    for s in side_index(f.side):
        lu = ctx.lungs[s]
        cu, cv = lu.point(f.u, f.zone)
        r = f.size * _EXTENT_SCALE[f.extent] * (1.0 if f.certain else 0.7)
        du, dv = (lu.u - cu) / r, (lu.v - cv) / (0.8 * r)
        body = ramp(1.0 - du * du - dv * dv, 0.6)
        fissure = (
            ramp(lu.v - (cv - 0.55 * r), 2 * ctx.px) if f.zone != "upper" else ramp(cv + 0.55 * r - lu.v, 2 * ctx.px)
        )
        add += 0.22 * _k(f) * body * fissure * (0.85 + 0.1 * ctx.fine) * ctx.visible(s)
    return add


def _pneumonia(f: Finding, ctx: PaintContext) -> np.ndarray:
    add = np.zeros_like(ctx.X)
    for s in side_index(f.side):
        lu = ctx.lungs[s]
        center = lu.point(f.u, f.zone)
        r = f.size * _EXTENT_SCALE[f.extent] * 1.15
        env = _envelope(lu, center, r)
        core = ramp(env - 0.5 + 0.3 * ctx.cloud, 0.5)
        add += _k(f) * (0.14 * core + 0.07 * env) * ctx.visible(s)
    return add


def _edema(f: Finding, ctx: PaintContext) -> np.ndarray:
    add = np.zeros_like(ctx.X)
    k = _k(f) * _EXTENT_SCALE[f.extent]
    rng = np.random.default_rng(int(ctx.rng.integers(2**31)))
    for s in SIDES:
        lu = ctx.lungs[s]
        haze = np.exp(-(((lu.u - 0.2) / 0.33) ** 2) - ((lu.v + 0.02) / 0.45) ** 2)
        add += 0.17 * k * haze * (0.85 + 0.15 * ctx.cloud) * ctx.visible(s)
        # septal lines: short horizontal lines reaching the pleura at the lateral bases
        n = int(6 + 4 * k)
        for _ in range(n):
            v = lu.base - 0.04 - rng.uniform(0.0, 0.3)
            t = np.clip((v - lu.apex) / (lu.base - lu.apex), 0.0, 1.0)
            u_wall = lu.medial + (lu.lateral - lu.medial) * np.sqrt(1 - (1 - t) ** 2) - 0.005
            length = rng.uniform(0.04, 0.08)
            pts = np.array([[s * u_wall, v], [s * (u_wall - length), v + rng.uniform(-0.006, 0.006)]])
            ctx.lines.curve(pts, 0.14 * _k(f))
    return add


def _atelectasis(f: Finding, ctx: PaintContext) -> np.ndarray:
    add = np.zeros_like(ctx.X)
    for s in side_index(f.side):
        lu = ctx.lungs[s]
        cu = lu.medial + f.u * (lu.lateral - lu.medial)
        cv = lu.base - 0.16 - 0.06 * f.u
        half = 0.15 * _EXTENT_SCALE[f.extent] * (1.0 if f.certain else 0.7)
        dx, dy = half * np.cos(f.angle), half * np.sin(f.angle)
        d = segment_distance(lu.u, lu.v, (cu - dx, cv - dy), (cu + dx, cv + dy))
        thick = 0.024 if f.certain else 0.012
        add += 0.22 * _k(f) * ramp(thick - d, 2 * ctx.px) * ctx.visible(s)
    return add


def _lesion(f: Finding, ctx: PaintContext) -> np.ndarray:
    lu = ctx.lungs[side_index(f.side)[0]]
    cu, cv = lu.point(f.u, f.zone)
    d = dist(lu.u - cu, lu.v - cv)
    lobulated = f.size * (1.0 + 0.08 * ctx.fine)
    return 0.3 * _k(f) * ramp(lobulated - d, 2 * ctx.px) * (0.9 + 0.1 * ctx.cloud)


def _effusion(f: Finding, ctx: PaintContext) -> np.ndarray:
    """Fluid replaces lung air below a meniscus that rises toward the lateral wall; the base and angle vanish."""
    add = np.zeros_like(ctx.X)
    height = {"small": 0.17, "moderate": 0.33, "large": 0.55}[f.extent] if f.certain else 0.08
    for s in side_index(f.side):
        lu = ctx.lungs[s]
        top_lateral = lu.base - height * (lu.base - lu.apex)
        w = np.clip((lu.u - lu.medial) / (lu.lateral - lu.medial), 0.0, 1.0)
        surface = top_lateral + 0.08 * (1.0 - w) ** 2 * (1 + 0.6 * (f.extent != "small"))
        fluid = ramp(lu.v - surface, 0.05)
        add += 0.3 * _k(f) * fluid * ctx.visible(s)
    return add


def _pneumothorax(f: Finding, ctx: PaintContext) -> tuple[np.ndarray, np.ndarray]:
    add = np.zeros_like(ctx.X)
    keep = np.ones_like(ctx.X)
    gap = {"small": 0.06, "moderate": 0.12, "large": 0.22}[f.extent] if f.certain else 0.035
    for s in side_index(f.side):
        lu = ctx.lungs[s]
        g = gap * (1.0 - lu.t) ** 0.8
        d_c = np.minimum(np.minimum(lu.d_top - 0.8 * g, lu.d_lat - g), np.minimum(lu.d_med, lu.d_bot))
        collapsed = ramp(d_c, 1.5 * ctx.px)
        rim = lu.mask * (1.0 - collapsed)
        keep = keep * (1.0 - rim)
        # the visceral pleural line: only where the lung has fallen away from apex / lateral wall
        away = ramp(lu.d_med - 0.05, 0.03) * ramp(lu.d_bot - 0.05, 0.03)
        line = np.exp(-((d_c / (0.9 * ctx.px)) ** 2)) * lu.mask * away * (g > 2 * ctx.px)
        add += _k(f) * (-0.08 * rim + 0.04 * collapsed * lu.mask + 0.2 * line)
    return add, keep


def _pleural_other(f: Finding, ctx: PaintContext) -> np.ndarray:
    add = np.zeros_like(ctx.X)
    thick = 0.07 if f.certain else 0.035
    for s in side_index(f.side):
        lu = ctx.lungs[s]
        if f.zone == "upper":
            where = ramp(0.3 - lu.t, 0.1)
            dist = np.minimum(lu.d_top, lu.d_lat)
        else:
            where = ramp(lu.t - 0.2, 0.1) * ramp(0.85 - lu.t, 0.1)
            dist = lu.d_lat
        nodular = thick * (1.0 + 0.35 * ctx.fine)  # irregular inner margin
        add += 0.3 * _k(f) * ramp(nodular - dist, 2 * ctx.px) * lu.mask * where
    return add


def _devices(f: Finding, ctx: PaintContext) -> np.ndarray:
    """Tubes, lines and wires: drawn into the shared line canvas; a pacemaker generator onto the map."""
    a = ctx.anatomy
    ln = ctx.lines
    add = np.zeros_like(ctx.X)
    r = np.random.default_rng(int(ctx.rng.integers(2**31)))
    j = r.uniform(-0.02, 0.02, size=16)
    carina = -0.3
    ln.gain = _k(f)
    for dev in f.devices:
        if dev == "ett":
            pts = bezier([(0.0, -1.1), (0.005, -0.8), (0.0 + j[0], carina - 0.12 + j[1])], 120)
            ln.curve(pts, 0.1, 0.018)
            ln.curve(pts + [0.012, 0.0], 0.4)
        elif dev == "enteric":
            pts = bezier([(0.03, -1.1), (0.05, -0.3), (0.0, a.base_left - 0.1), (0.35 + j[2], a.base_left + 0.12)], 200)
            ln.curve(pts, 0.25, 0.006)
        elif dev == "cvc":
            pts = bezier([(-0.42 + j[3], -1.1), (-0.2, -0.75), (-0.07, -0.5), (-0.06, -0.15 + j[4])], 160)
            ln.curve(pts, 0.3, 0.005)
        elif dev == "picc":
            pts = bezier([(1.05, -0.55 + j[5]), (0.5, -0.72), (0.1, -0.62), (-0.05, -0.18 + j[6])], 200)
            ln.curve(pts, 0.3, 0.003)
        elif dev == "pacemaker":
            cx, cy = 0.55 + j[7], a.apex + 0.02 + j[8]
            add += 0.9 * ramp(np.minimum(0.085 - np.abs(ctx.X - cx), 0.055 - np.abs(ctx.Y - cy)), 2 * ctx.px)
            ln.curve(bezier([(cx - 0.05, cy), (0.1, cy - 0.1), (-0.02, -0.3), (-0.04, 0.05)], 200), 0.7, 0.004)
            rv = (a.heart_center[0] + 0.1, a.heart_center[1] + 0.12)
            ln.curve(bezier([(cx - 0.05, cy + 0.01), (0.05, cy), (-0.05, -0.1), rv], 200), 0.7, 0.004)
        elif dev == "sternotomy":
            for v in np.linspace(-0.5, 0.1, 5):
                ln.ring((0.01 + 0.01 * r.standard_normal(), v), 0.022, 0.8, 0.004)
        elif dev == "ecg":
            for _ in range(3):
                ex, ey = r.uniform(-0.8, 0.8), r.uniform(-0.9, 0.6)
                ln.ring((ex, ey), 0.03, 0.45, 0.003)
                tail = (ex + r.uniform(-0.6, 0.6), -1.1)
                ln.curve(bezier([(ex, ey), (ex + r.uniform(-0.3, 0.3), (ey - 1.1) / 2), tail], 120), 0.3)
        elif dev == "chest_tube":
            s = side_index(f.side)[0]
            pts = bezier([(s * 1.05, 0.35), (s * 0.75, 0.2), (s * 0.5, -0.2), (s * 0.35, a.apex + 0.1)], 160)
            ln.curve(pts, 0.12, 0.02)
            ln.curve(pts, 0.45)
    ln.gain = 1.0
    return add * _k(f)


_PAINTERS = {
    "Lung Opacity": _opacity,
    "Consolidation": _consolidation,
    "Pneumonia": _pneumonia,
    "Edema": _edema,
    "Atelectasis": _atelectasis,
    "Lung Lesion": _lesion,
    "Pleural Effusion": _effusion,
    "Pneumothorax": _pneumothorax,
    "Pleural Other": _pleural_other,
    "Support Devices": _devices,
}

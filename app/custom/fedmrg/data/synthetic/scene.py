"""Geometry shared by the normal-anatomy and the finding painters: lungs, diaphragm, ribs and line drawing.

Everything here works on whole images at once (vectorised numpy, ``scipy.ndimage`` for blurs): a lung is an
implicit region (the smallest of four signed distances to its apex, lateral wall, medial edge and diaphragm is
positive inside), which also gives pleural lines, meniscus levels and pleural thickening as simple bands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb

import numpy as np

from fedmrg.data.synthetic.anatomy import Anatomy, Frame
from fedmrg.data.synthetic.fields import dist, ramp

SIDES = (-1, 1)  # -1: patient's right (image left), +1: patient's left (image right)


def side_index(side: str) -> tuple[int, ...]:
    """Patient side name -> tuple of side signs."""
    return {"right": (-1,), "left": (1,), "bilateral": (-1, 1)}[side]


@dataclass
class Lung:
    """Implicit geometry of one lung on the whole grid, in side coordinates (u lateral >= 0, v = y).

    ``d_*`` are distances (normalized units) to the apex, lateral wall, medial edge and diaphragm, positive
    inside; ``mask`` is the anti-aliased lung region in [0, 1]; ``t`` is the height fraction (0 apex, 1 base).
    """

    side: int
    u: np.ndarray
    v: np.ndarray
    t: np.ndarray
    d_top: np.ndarray
    d_lat: np.ndarray
    d_med: np.ndarray
    d_bot: np.ndarray
    diaphragm: np.ndarray
    mask: np.ndarray
    apex: float
    base: float
    lateral: float
    medial: float

    @property
    def d(self) -> np.ndarray:
        return np.minimum(np.minimum(self.d_top, self.d_lat), np.minimum(self.d_med, self.d_bot))

    def point(self, u_frac: float, zone: str) -> tuple[float, float]:
        """A point inside this lung in side coordinates: ``u_frac`` 0 medial .. 1 lateral, zone upper/mid/lower."""
        u = self.medial + u_frac * (self.lateral - self.medial)
        z = {"upper": 0.28, "mid": 0.52, "lower": 0.78}[zone]
        return u, self.apex + z * (self.base - 0.1 - self.apex)


def make_lung(X: np.ndarray, Y: np.ndarray, a: Anatomy, side: int, *, base_shift: float, eps: float) -> Lung:
    """Lung ``side`` of anatomy ``a``; ``base_shift`` < 0 raises the hemidiaphragm (volume loss)."""
    u = side * X
    v = Y
    va, vb = a.apex, a.base(side) + base_shift
    ul, um = a.lung_lateral, a.lung_medial
    u_apex = 0.32 * ul
    t = np.clip((v - va) / (vb - va), 0.0, 1.0)
    s = 1.0 - t
    u_lat = u_apex + (ul - u_apex) * np.sqrt(1.0 - s * s)
    u_med = u_apex - (u_apex - um) * np.sqrt(1.0 - s * s * s)
    uc = 0.5 * ul  # dome peak
    w = (u - uc) / np.where(u < uc, uc + 0.25, ul - uc)
    diaphragm = vb - a.dome * np.clip(1.0 - w * w, 0.0, 1.0)
    d_top, d_lat, d_med, d_bot = v - va, u_lat - u, u - u_med, diaphragm - v
    mask = ramp(np.minimum(np.minimum(d_top, d_lat), np.minimum(d_med, d_bot)), eps)
    return Lung(side, u, v, t, d_top, d_lat, d_med, d_bot, diaphragm, mask, va, vb, ul, um)


def segment_distance(px: np.ndarray, py: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Euclidean distance of grid points to the segment p0-p1, same shape as ``px``."""
    ax, ay = p1[0] - p0[0], p1[1] - p0[1]
    tt = np.clip(((px - p0[0]) * ax + (py - p0[1]) * ay) / (ax * ax + ay * ay + 1e-12), 0.0, 1.0)
    return dist(px - p0[0] - tt * ax, py - p0[1] - tt * ay)


def bezier(ctrl: list[tuple[float, float]] | np.ndarray, n: int = 200) -> np.ndarray:
    """Points (n, 2) on the Bezier curve with control points ``ctrl`` (k, 2)."""
    c = np.asarray(ctrl, dtype=np.float64)
    k = len(c) - 1
    t = np.linspace(0.0, 1.0, n)[:, None]
    basis = np.stack([comb(k, i) * t[:, 0] ** i * (1 - t[:, 0]) ** (k - i) for i in range(k + 1)], axis=1)
    return basis @ c


@dataclass
class LineCanvas:
    """Thin bright structures (wires, tubes, septal lines) splatted point by point, blurred once.

    Drawing a curve by dense point sampling costs O(curve length), where a distance field costs
    O(pixels x segments); the one Gaussian blur at the end anti-aliases every curve together.
    """

    frame: Frame
    gain: float = 1.0  #: multiplies every amplitude drawn (uncertain findings draw at reduced gain)
    canvas: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.canvas = np.zeros((self.frame.size, self.frame.size), np.float32)

    def curve(self, pts: np.ndarray, amplitude: float, half_width: float = 0.0) -> None:
        """Draw the polyline ``pts`` (N, 2, anatomical units), ``half_width`` wide on each side."""
        px = self.frame.pixel
        seg = np.diff(pts, axis=0)
        length = float(np.hypot(seg[:, 0], seg[:, 1]).sum())
        n = max(2, int(length / (0.5 * px)))
        cum = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
        s = np.linspace(0.0, cum[-1], n)
        p = np.stack([np.interp(s, cum, pts[:, 0]), np.interp(s, cum, pts[:, 1])], axis=1)
        if half_width > px:  # thinner than a pixel: one sample line is enough
            tang = np.gradient(p, axis=0)
            norm = np.stack([-tang[:, 1], tang[:, 0]], axis=1)
            norm /= np.linalg.norm(norm, axis=1, keepdims=True) + 1e-12
            offs = np.linspace(-half_width, half_width, max(2, int(2 * half_width / (0.5 * px)) + 1))
            p = (p[None, :, :] + offs[:, None, None] * norm[None, :, :]).reshape(-1, 2)
        self.points(p, amplitude)

    def points(self, p: np.ndarray, amplitude: float) -> None:
        pix = np.rint(self.frame.to_pixels(p)).astype(np.int64)
        size = self.frame.size
        ok = (pix[:, 0] >= 0) & (pix[:, 0] < size) & (pix[:, 1] >= 0) & (pix[:, 1] < size)
        flat = pix[ok, 1] * size + pix[ok, 0]
        np.maximum.at(self.canvas.reshape(-1), flat, np.float32(amplitude * self.gain))

    def ring(self, center: tuple[float, float], radius: float, amplitude: float, half_width: float = 0.0) -> None:
        th = np.linspace(0.0, 2 * np.pi, 64)
        self.curve(
            np.stack([center[0] + radius * np.cos(th), center[1] + radius * np.sin(th)], axis=1), amplitude, half_width
        )

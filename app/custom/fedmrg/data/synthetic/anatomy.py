"""Per-seed normal anatomy of a synthetic frontal chest radiograph, and the coordinate frame it lives in.

Coordinates are *normalized anatomical* units: x from -1 (image left = patient's right) to +1, y from -1
(top) to +1 (bottom), image width = 2 units. A random similarity transform (rotation, scale, shift) maps them
to the image, so the same anatomy appears at a different place, size and tilt for every seed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Anatomy:
    """Normal anatomy and exposure of one image (all lengths in normalized units).

    Args:
        rotation: in-plane tilt in radians; scale: zoom; shift: (x, y) translation.
        body_half_width: half width of the chest wall's outer edge.
        lung_lateral, lung_medial: lateral / medial extent of each lung from the midline.
        apex: y of the lung apices; base_right / base_left: y of the right / left costophrenic angles.
        dome: height of the hemidiaphragm domes above the costophrenic angles.
        heart_center, heart_radii, heart_tilt: the cardiac silhouette as a rotated ellipse (radians).
        mediastinum_half_width: upper mediastinum half width.
        rib_top, rib_count: y of the first posterior rib and the number of ribs above the diaphragm.
        window: (low, high) attenuation mapped to black / white; gamma: display gamma.
        noise: quantum-noise standard deviation on [0, 1] intensities; texture: soft-tissue texture strength.
    """

    rotation: float
    scale: float
    shift: tuple[float, float]
    body_half_width: float
    lung_lateral: float
    lung_medial: float
    apex: float
    base_right: float
    base_left: float
    dome: float
    heart_center: tuple[float, float]
    heart_radii: tuple[float, float]
    heart_tilt: float
    mediastinum_half_width: float
    rib_top: float
    rib_count: float
    window: tuple[float, float]
    gamma: float
    noise: float
    texture: float

    def base(self, side: int) -> float:
        """y of the costophrenic angle on ``side`` (-1 patient's right / image left, +1 patient's left)."""
        return self.base_right if side < 0 else self.base_left


def anatomy_seed_sequence(seed: int) -> np.random.SeedSequence:
    """The seed stream for anatomy and exposure (finding geometry uses another, see ``layout``)."""
    return np.random.SeedSequence([int(seed), 0])


def sample_anatomy(rng: np.random.Generator, view: str = "PA") -> Anatomy:
    """Draw a normal anatomy; AP views get a magnified heart and lower lung volumes, as in bedside films."""
    u = rng.uniform
    base_r = u(0.38, 0.50)
    a = Anatomy(
        rotation=float(u(-0.07, 0.07)),
        scale=float(u(0.9, 1.05)),
        shift=(float(u(-0.05, 0.05)), float(u(-0.06, 0.06))),
        body_half_width=float(u(0.86, 0.98)),
        lung_lateral=float(u(0.72, 0.8)),
        lung_medial=float(u(0.07, 0.1)),
        apex=float(u(-0.74, -0.66)),
        base_right=float(base_r),
        base_left=float(base_r + u(0.0, 0.06)),
        dome=float(u(0.14, 0.22)),
        heart_center=(float(u(0.07, 0.12)), float(base_r - u(0.26, 0.32))),
        heart_radii=(float(u(0.28, 0.32)), float(u(0.2, 0.24))),
        heart_tilt=float(u(-0.35, -0.15)),
        mediastinum_half_width=float(u(0.1, 0.13)),
        rib_top=float(u(-0.82, -0.76)),
        rib_count=float(u(9.0, 10.5)),
        window=(float(u(-0.02, 0.04)), float(u(0.78, 0.92))),
        gamma=float(u(0.8, 1.25)),
        noise=float(u(0.008, 0.025)),
        texture=float(u(0.01, 0.03)),
    )
    if view == "AP":
        hx, hy = a.heart_center
        rx, ry = a.heart_radii
        a = replace(a, heart_radii=(rx * 1.1, ry * 1.06), base_right=a.base_right - 0.05, base_left=a.base_left - 0.05)
    return a


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalized image coordinates of pixel centres, each (size, size) float32 in [-1, 1]."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    yy, xx = np.meshgrid(c, c, indexing="ij")
    xx.setflags(write=False)
    yy.setflags(write=False)
    return xx, yy


@dataclass(frozen=True)
class Frame:
    """The similarity transform between anatomical and image coordinates for one image of ``size`` pixels."""

    size: int
    rotation: float
    scale: float
    shift: tuple[float, float]

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Anatomical coordinates (X, Y) of every pixel centre, each (size, size) float32."""
        xn, yn = _pixel_grid(self.size)
        c, s = np.cos(self.rotation), np.sin(self.rotation)
        dx, dy = xn - self.shift[0], yn - self.shift[1]
        return ((c * dx + s * dy) / self.scale).astype(np.float32), ((-s * dx + c * dy) / self.scale).astype(np.float32)

    def to_pixels(self, pts: np.ndarray) -> np.ndarray:
        """Anatomical points (N, 2) as (x, y) -> pixel coordinates (N, 2) as (col, row), float."""
        c, s = np.cos(self.rotation), np.sin(self.rotation)
        x = self.scale * (c * pts[:, 0] - s * pts[:, 1]) + self.shift[0]
        y = self.scale * (s * pts[:, 0] + c * pts[:, 1]) + self.shift[1]
        return np.stack([(x + 1.0) * 0.5 * self.size - 0.5, (y + 1.0) * 0.5 * self.size - 0.5], axis=1)

    def rows(self, y0: float, y1: float) -> slice:
        """Image rows that can hold anatomical y in [y0, y1] anywhere across the width (a conservative band)."""
        tilt = abs(np.sin(self.rotation)) * self.scale * 1.5
        lo = self.scale * y0 * np.cos(self.rotation) + self.shift[1] - tilt
        hi = self.scale * y1 * np.cos(self.rotation) + self.shift[1] + tilt
        r0 = int(np.floor((lo + 1.0) * 0.5 * self.size)) - 2
        r1 = int(np.ceil((hi + 1.0) * 0.5 * self.size)) + 2
        return slice(min(max(r0, 0), self.size), min(max(r1, 0), self.size))

    @property
    def pixel(self) -> float:
        """One pixel in anatomical units."""
        return 2.0 / (self.size * self.scale)

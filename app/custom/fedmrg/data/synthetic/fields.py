"""Whole-image array primitives for the renderer, written for speed on small CPUs.

A synthetic study must render in a few milliseconds, so these avoid the slow general routines:
``np.hypot`` (about 8x slower than ``sqrt(x*x + y*y)`` on float32), ``scipy.ndimage.zoom`` for smooth
noise (a separable Gaussian interpolation matrix is two small matrix products) and drawing fresh white
noise per image (a fixed, seeded noise bank read at a random offset is a slice).
"""

from __future__ import annotations

import functools

import numpy as np


def ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 0 for d <= -width/2, 1 for d >= width/2, linear between (a cheap anti-aliased edge)."""
    r = d * np.float32(1.0 / width)
    r += np.float32(0.5)
    return np.clip(r, 0.0, 1.0, out=r)


def dist(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Euclidean length sqrt(dx**2 + dy**2), elementwise."""
    return np.sqrt(dx * dx + dy * dy)


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Small separable Gaussian blur (radius 1-2 pixels) with edge replication; (H, W) float32 -> same."""
    if sigma_px <= 0.2:
        return img
    radius = max(1, int(np.ceil(2.0 * sigma_px)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2).astype(np.float32)
    k /= k.sum()
    for axis in (0, 1):
        p = np.pad(img, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        n = img.shape[axis]
        out = k[0] * (p[:n] if axis == 0 else p[:, :n])
        for i in range(1, len(k)):
            out += k[i] * (p[i : i + n] if axis == 0 else p[:, i : i + n])
        img = out
    return img


@functools.lru_cache(maxsize=16)
def _interp_matrix(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, cells + 2) Gaussian interpolation weights from a coarse grid to pixel centres (rows sum to 1), and
    its transpose, both C-contiguous (a transposed view makes the matrix product ten times slower)."""
    centres = (np.arange(cells + 2) - 0.5) / cells
    x = (np.arange(size) + 0.5) / size
    w = np.exp(-0.5 * ((x[:, None] - centres[None, :]) * cells / 0.6) ** 2)
    m = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
    mt = np.ascontiguousarray(m.T)
    m.setflags(write=False)
    mt.setflags(write=False)
    return m, mt


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field (size, size) float32, zero mean and unit variance, about ``cells`` blobs per side."""
    m, mt = _interp_matrix(size, cells)
    coarse = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    f = (m @ coarse) @ mt
    f -= f.mean()
    f /= f.std() + 1e-6
    return f


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    bank = np.random.default_rng(20240601).standard_normal((2 * size, 2 * size), dtype=np.float32)
    bank.setflags(write=False)
    return bank


def white_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Unit-variance white noise (size, size) float32: a random window of a fixed seeded bank, flipped at random."""
    bank = _noise_bank(size)
    oy, ox = rng.integers(0, size, size=2)
    win = bank[oy : oy + size, ox : ox + size]
    return win[::-1] if rng.random() < 0.5 else win

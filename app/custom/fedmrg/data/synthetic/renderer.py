"""Render a synthetic frontal chest radiograph whose content follows 14-observation labels.

The image is built as an attenuation map (higher = denser = whiter) from soft tissue, lungs (air, dark),
mediastinum, heart, diaphragm and abdomen, spine, ribs and clavicles, lung markings and texture; each present
finding changes the anatomy (a larger heart, a raised hemidiaphragm) or adds its own density (see
:mod:`fedmrg.data.synthetic.findings`). The map is windowed, gamma-corrected, blurred and given quantum noise.

Label convention (CheXpert): 1 positive, 0 negative, -1 uncertain, None blank. Negative and blank findings are
not drawn. An *uncertain* finding is drawn as a weaker, smaller version of the positive one (about half the
density or size: a borderline heart, a barely blunted costophrenic angle, a faint patch), so that the image is
itself ambiguous. Anatomy, pose and exposure vary with ``seed``; the geometry of the findings (side, size,
zone) comes from :func:`fedmrg.data.synthetic.layout.sample_layout` with the same seed, which is what the
synthetic reports describe.

Not a physical simulation: no projection of a 3-D phantom, no scatter model, no lateral views.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedmrg.data.synthetic import findings as fnd
from fedmrg.data.synthetic.anatomy import Anatomy, Frame, anatomy_seed_sequence, sample_anatomy
from fedmrg.data.synthetic.fields import blur, dist, ramp, smooth_noise, white_noise
from fedmrg.data.synthetic.layout import FindingLayout, sample_layout
from fedmrg.data.synthetic.scene import SIDES, LineCanvas, make_lung, segment_distance

#: Bumped whenever a change alters the rendered pixels for a given (labels, seed, size, view).
RENDERER_VERSION = 1

RenderView = Literal["PA", "AP"]


def render_study_image(
    labels: dict[str, int | None], *, seed: int, size: int = 224, view: RenderView = "PA"
) -> np.ndarray:
    """Draw a frontal chest radiograph showing the findings in ``labels``.

    Args:
        labels: observation name (from :data:`fedmrg.observations.OBSERVATIONS`) -> 1 / 0 / -1 / None;
            missing names count as blank. 1 is drawn, -1 drawn weaker (see module docstring), 0 / None not drawn.
        seed: makes anatomy, pose, exposure and finding geometry; same inputs give identical pixels.
        size: output side in pixels (any size >= 16; structures scale with it).
        view: ``"PA"`` or ``"AP"`` (AP: magnified heart, lower lung volumes).

    Returns:
        numpy uint8 array of shape (size, size), 0 = black (air), 255 = white (bone, metal).

    Raises:
        ValueError: unknown observation name, a label outside {1, 0, -1, None}, size < 32 or a bad view.
    """
    if not isinstance(size, int | np.integer) or size < 16:
        raise ValueError(f"`size` must be an int >= 16, got {size!r}")
    if view not in ("PA", "AP"):
        raise ValueError(f"`view` must be 'PA' or 'AP', got {view!r}")
    layout = sample_layout(labels, seed)
    rng = np.random.default_rng(anatomy_seed_sequence(seed))
    anatomy = fnd.adjust_anatomy(sample_anatomy(rng, view), layout)
    image = _paint(anatomy, layout, rng, int(size))
    return image


def _paint(a: Anatomy, layout: FindingLayout, rng: np.random.Generator, size: int) -> np.ndarray:
    frame = Frame(size, a.rotation, a.scale, a.shift)
    X, Y = frame.grid()
    px = frame.pixel
    eps = 1.5 * px
    lines = LineCanvas(frame)
    base_shift = fnd.diaphragm_shift(layout)
    lungs = {s: make_lung(X, Y, a, s, base_shift=base_shift[s], eps=eps) for s in SIDES}
    diaphragm = np.where(X < 0, lungs[-1].diaphragm, lungs[1].diaphragm)
    cloud = smooth_noise(rng, size, 9)  # large-scale field: texture and patchy opacities
    fine = smooth_noise(rng, size, 48)

    # soft tissue: a cylinder-like thickness profile, thinner above the clavicles (supraclavicular fossae),
    # and the upper arms beside the chest wall
    bw = a.body_half_width
    ax = np.abs(X)
    T = np.sqrt(np.clip(1.0 - (X / bw) ** 2, 0.0, 1.0)) * ramp(bw - ax, 0.04)
    supra = ramp(a.apex + 0.02 - Y, 0.12) * ramp(ax - 0.2, 0.1) * ramp(0.8 - ax, 0.15)
    T *= 1.0 - 0.3 * supra
    arms = ramp(ax - bw + 0.01, 0.08) * ramp(bw + 0.3 - ax, 0.1) * ramp(Y - a.apex + 0.25, 0.2)
    A = 0.42 * T + 0.28 * arms + a.texture * cloud * (T + arms)

    # heart and mediastinum displace lung; they are drawn as one central density (max, not sum)
    hx, hy = a.heart_center
    mw = a.mediastinum_half_width
    c, s = np.cos(a.heart_tilt), np.sin(a.heart_tilt)
    dx, dy = X - hx, Y - hy
    rx, ry = a.heart_radii
    heart = ramp(1.0 - ((c * dx + s * dy) / rx) ** 2 - ((-s * dx + c * dy) / ry) ** 2, 0.1)
    medi = ramp(mw - np.abs(X - 0.01), 2 * eps) * ramp(hy - Y, 0.15)
    knob = ramp(1.0 - ((X - mw + 0.02) / (0.55 * mw + 0.02)) ** 2 - ((Y + 0.3) / 0.065) ** 2, 0.3)
    central = np.maximum(np.maximum(heart, medi), knob)
    L = (lungs[-1].mask + lungs[1].mask) * (1.0 - central)

    # lungs (air) with lung markings radiating from the hila
    vessels = _lung_markings(X, Y, a, rng, px)
    A += 0.15 * central - 0.26 * L

    # abdomen below the hemidiaphragms (liver on the right, gastric air bubble on the left)
    abdomen = ramp(Y - diaphragm, 2 * eps) * ramp(a.lung_lateral + 0.04 - ax, 0.1)  # inside the chest wall
    A += 0.24 * abdomen * (1.0 - 0.6 * central)
    bubble = ramp(1.0 - ((X - 0.42) / 0.13) ** 2 - ((Y - lungs[1].base - 0.02) / 0.07) ** 2, 0.3)
    A -= 0.12 * bubble * abdomen * (1.0 - fnd.effusion_side_weight(layout, 1))

    # trachea, spine
    A -= 0.07 * ramp(0.032 - np.abs(X - 0.005 * (Y + 1)), eps) * ramp(-0.3 - Y, 0.05)
    vert = 0.85 + 0.15 * np.cos(2 * np.pi * (Y - a.rib_top) / 0.105)
    A += 0.1 * ramp(0.075 - ax, 2 * eps) * vert

    # ribs, clavicles, humeral heads
    fracture = layout.get("Fracture")
    for s_ in SIDES:
        lu = lungs[s_]
        rib_break = fracture if (fracture and fracture.bone == "rib" and _on_side(fracture.side, s_)) else None
        A += _ribs(lu.u, Y, a, rib_break, px) * (0.45 + 0.55 * lu.mask)
        clav_break = fracture if (fracture and fracture.bone == "clavicle" and _on_side(fracture.side, s_)) else None
        top = frame.rows(a.apex - 0.42, a.apex + 0.25)  # clavicles and humeral heads live in this band
        uu, yy = lu.u[top], Y[top]
        A[top] += 0.15 * _clavicle(uu, yy, a, clav_break, px) + 0.2 * ramp(
            0.16 - dist(uu - bw - 0.06, yy - a.apex + 0.2), 3 * eps
        )

    # findings (may hide lung markings, e.g. pneumothorax)
    ctx = fnd.PaintContext(X, Y, a, lungs, L, central, cloud, fine, lines, px, rng)
    A, keep_markings, marking_gain = fnd.paint_findings(A, layout, ctx)
    A += 0.1 * vessels * L * keep_markings * marking_gain
    hila = sum(np.exp(-(((lungs[s_].u - 0.2) / 0.08) ** 2) - ((Y + 0.05) / 0.12) ** 2) for s_ in SIDES)
    A += 0.06 * hila
    A += blur(lines.canvas, 0.6 * max(1.0, size / 224))

    # film response, detector blur, quantum noise
    lo, hi = a.window
    img = np.clip((A - lo) / (hi - lo), 0.0, 1.0) ** a.gamma
    img = blur(img, 0.5 * size / 224)
    img += a.noise * (0.6 * white_noise(rng, size) + 0.8 * fine)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _on_side(side: str, s: int) -> bool:
    return side == "bilateral" or (side == "right") == (s < 0)


def _lung_markings(X: np.ndarray, Y: np.ndarray, a: Anatomy, rng: np.random.Generator, px: float) -> np.ndarray:
    """Branching-looking vessel streaks radiating from each hilum, fading toward the periphery, in [0, 1].

    One pass for both lungs: each half of the image takes angles around its own hilum and its own random
    angular profiles (sparse peaks = vessels); a near and a far profile blend with distance, which makes the
    streaks appear to branch.
    """
    nb = 720
    k = np.exp(-0.5 * (np.arange(-4, 5) / 1.2) ** 2)
    profiles = []
    for _ in range(4):  # (right near, right far, left near, left far)
        prof = rng.random(nb) ** 10
        prof = np.convolve(np.concatenate([prof[-4:], prof, prof[:4]]), k, mode="valid")
        profiles.append((prof / prof.max()).astype(np.float32))
    table = np.concatenate(profiles)
    left = X >= 0
    dx = X - np.where(left, np.float32(0.2), np.float32(-0.2))
    dy = Y + np.float32(0.08)
    r = dist(dx, dy)
    th = np.arctan2(dy, dx) + 0.12 * np.sin(r * 11 + rng.uniform(0, 2 * np.pi))
    idx = ((th + np.pi) * (nb / (2 * np.pi))).astype(np.int32) % nb + left * np.int32(2 * nb)
    near = ramp(0.45 - r, 0.3)
    streaks = table[idx] * near + table[idx + nb] * (1 - near)
    return np.clip(streaks * np.exp(-r / 0.4) * ramp(r - 0.05, 0.05), 0.0, 1.0)


def _ribs(u: np.ndarray, Y: np.ndarray, a: Anatomy, fracture: fnd.Finding | None, px: float) -> np.ndarray:
    """Posterior (and fainter anterior) ribs of one side as attenuation; ``fracture`` breaks one rib."""
    span = a.base_left + 0.12 - a.rib_top
    curve = u * (0.55 * u - 0.22)  # posterior ribs rise from the spine, then sweep down laterally
    w = np.clip((Y - a.rib_top - curve) / span, 0.0, None)
    q = a.rib_count * w * (1.2 - 0.2 * w)  # rib spacing widens downward (a cheap stand-in for w ** 0.85)
    lateral = ramp(a.lung_lateral + 0.07 - u, 0.06) * ramp(u - 0.07, 0.04)
    if fracture is not None:
        k = fracture.rib - 1
        on_rib = np.floor(q) == k
        gap = (0.025 if fracture.certain else 0.01) + 1.5 * px
        past = (u > fracture.u) & on_rib
        q = q + (0.3 if fracture.certain else 0.1) * past
        lateral = lateral * (1.0 - (on_rib & (np.abs(u - fracture.u) < gap)))
    f = q - np.floor(q)
    thick = 0.42
    inner = np.minimum(f, thick - f)
    band = ramp(inner, 0.05)
    cortex = band * (1.0 - ramp(inner - 0.07, 0.05))
    ribs = (0.06 * band + 0.07 * cortex) * lateral * (q < a.rib_count + thick) * (Y - a.rib_top + 0.03 > 0)
    # anterior ribs: fainter, sloping down toward the midline
    qa = 0.75 * a.rib_count * np.clip((Y - a.rib_top - 0.12 + 0.32 * u) / span, 0.0, None)
    fa = qa - np.floor(qa)
    ant = ramp(np.minimum(fa, 0.3 - fa), 0.06) * ramp(u - 0.3, 0.2) * lateral * (qa < 0.6 * a.rib_count)
    return ribs + 0.035 * ant


def _clavicle(u: np.ndarray, Y: np.ndarray, a: Anatomy, fracture: fnd.Finding | None, px: float) -> np.ndarray:
    """One clavicle (side coordinates) as a band in [0, 1]; ``fracture`` adds a displaced gap."""
    p0 = (0.07, a.apex + 0.1)
    p1 = (0.7, a.apex - 0.1)
    v = Y - 0.035 * np.sin(np.pi * np.clip((u - p0[0]) / (p1[0] - p0[0]), 0, 1)) * 2
    half = 0.028
    if fracture is not None:
        cut = p0[0] + 0.5 * (p1[0] - p0[0])
        v = v + (0.02 if fracture.certain else 0.006) * (u > cut)
        gap = ramp(np.abs(u - cut) - (0.01 if fracture.certain else 0.004) - px, px)
    else:
        gap = 1.0
    d = segment_distance(u, v, p0, p1)
    band = ramp(half - d, 2 * px)
    cortex = band * (1.0 - ramp(half - 0.01 - d, 2 * px))
    return (0.7 * band + 0.5 * cortex) * gap


def render_info(seed: int, size: int, view: str) -> dict[str, int | str]:
    """What records store in ``meta["renderer"]``: enough to re-render the image exactly."""
    return {"seed": int(seed), "size": int(size), "view": view, "version": RENDERER_VERSION}

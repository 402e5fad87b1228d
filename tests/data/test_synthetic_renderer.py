"""The synthetic radiograph renderer: shape, determinism, per-seed variation and that findings change pixels."""

from __future__ import annotations

import numpy as np
import pytest

from fedmrg.data.synthetic import render_study_image, sample_layout
from fedmrg.data.synthetic.anatomy import Frame
from fedmrg.observations import OBSERVATIONS

FINDINGS = [o for o in OBSERVATIONS if o != "No Finding"]


@pytest.mark.parametrize("size", [16, 64, 224, 300])
def test_shape_dtype_and_range(size):
    img = render_study_image({"Cardiomegaly": 1, "Support Devices": 1}, seed=3, size=size)
    assert img.shape == (size, size) and img.dtype == np.uint8
    assert img.min() < 40 and img.max() > 200  # air outside / in lungs is dark, bone and metal bright


def test_same_seed_same_pixels_and_seeds_differ():
    a = render_study_image({"Edema": 1}, seed=11, size=96)
    b = render_study_image({"Edema": 1}, seed=11, size=96)
    c = render_study_image({"Edema": 1}, seed=12, size=96)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5  # pose, anatomy and exposure vary per seed


@pytest.mark.parametrize("name", FINDINGS)
def test_each_finding_changes_the_image_and_uncertain_is_weaker(name):
    seed = 5
    base = render_study_image({}, seed=seed, size=128).astype(float)
    pos = render_study_image({name: 1}, seed=seed, size=128).astype(float)
    unc = render_study_image({name: -1}, seed=seed, size=128).astype(float)
    d_pos, d_unc = np.abs(pos - base).mean(), np.abs(unc - base).mean()
    assert d_pos > 0.1, f"{name}: positive label left the image unchanged"
    assert d_unc > 0.02, f"{name}: uncertain label left the image unchanged"
    assert d_unc < d_pos, f"{name}: uncertain should be drawn weaker than positive ({d_unc:.2f} vs {d_pos:.2f})"


def test_negative_and_blank_are_not_drawn():
    a = render_study_image({}, seed=9, size=64)
    b = render_study_image({name: 0 for name in FINDINGS} | {"No Finding": 1, "Edema": None}, seed=9, size=64)
    np.testing.assert_array_equal(a, b)


def test_cardiomegaly_widens_the_bright_central_shadow():
    def central_width(img: np.ndarray) -> float:
        band = img[int(0.55 * len(img)) : int(0.65 * len(img))].astype(float).mean(0)  # rows through the heart
        return float((band > 0.5 * (band.max() + np.median(band))).sum())

    widths = [
        (
            central_width(render_study_image({}, seed=s, size=128)),
            central_width(render_study_image({"Cardiomegaly": 1}, seed=s, size=128)),
        )
        for s in range(6)
    ]
    assert sum(w1 > w0 for w0, w1 in widths) >= 5, widths


def test_effusion_side_follows_layout():
    """A right effusion brightens the image's left lower lung field, a left one the right."""
    for seed in range(4):
        for side in ("right", "left"):
            lab = {"Pleural Effusion": 1}
            s = seed
            while sample_layout(lab, s).get("Pleural Effusion").side != side:
                s += 100
            diff = render_study_image(lab, seed=s, size=96).astype(float) - render_study_image({}, seed=s, size=96)
            lower = diff[48:80]
            left_img, right_img = lower[:, :48].sum(), lower[:, 48:].sum()
            assert (left_img > right_img) == (side == "right"), (seed, side, left_img, right_img)


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        ({"Heart Attack": 1}, {}, "unknown observation"),
        ({"Edema": 2}, {}, "must be 1, 0, -1 or None"),
        ({}, {"size": 8}, "`size` must be an int >= 16"),
        ({}, {"view": "LATERAL"}, "`view` must be 'PA' or 'AP'"),
    ],
)
def test_bad_input_raises(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        render_study_image(labels, seed=0, **kwargs)


def test_frame_maps_points_consistently_with_grid():
    f = Frame(64, rotation=0.05, scale=0.95, shift=(0.03, -0.02))
    X, Y = f.grid()
    rows, cols = [5, 40, 63], [0, 31, 50]
    pts = np.stack([X[rows, cols], Y[rows, cols]], axis=1)
    np.testing.assert_allclose(f.to_pixels(pts), np.stack([cols, rows], axis=1), atol=1e-3)


def test_ap_view_differs_from_pa():
    pa = render_study_image({}, seed=2, size=64, view="PA")
    ap = render_study_image({}, seed=2, size=64, view="AP")
    assert np.abs(pa.astype(int) - ap.astype(int)).mean() > 1


@pytest.mark.slow
def test_classifier_learns_cardiomegaly_and_effusion_from_renders():
    """A tiny CNN trained on renders separates cardiomegaly and effusion on held-out renders (AUC > 0.9)."""
    from fedmrg.data.synthetic.signal_check import renderer_auc

    r = renderer_auc(n_train=1200, n_test=400, size=64, epochs=8, seed=1)
    assert r.auc["Cardiomegaly"] > 0.9, r.auc
    assert r.auc["Pleural Effusion"] > 0.9, r.auc

"""Per-site device transforms: each profile does what its name says, deterministically, in array and dict form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import GaussianSmooth

from fedmrg.data.site_transforms import (
    DEFAULT_PROFILES,
    SiteDevice,
    SiteDeviced,
    SiteProfile,
    default_profile_names,
    load_site_profiles,
)
from fedmrg.errors import ConfigError


def _image(seed: int = 0, size: int = 64) -> np.ndarray:
    """(1, H, W) float32 in [0.1, 0.9]: smooth gradient plus a sharp square plus texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.3 + 0.3 * x + 0.1 * rng.random((size, size))
    img[size // 4 : size // 2, size // 4 : size // 2] = 0.85
    return np.clip(img, 0.1, 0.9)[None].astype(np.float32)


def _edge_energy(img: np.ndarray) -> float:
    return float(np.abs(np.diff(img[0], axis=0)).mean() + np.abs(np.diff(img[0], axis=1)).mean())


@pytest.mark.parametrize("name", list(DEFAULT_PROFILES))
def test_profile_keeps_shape_dtype_range_and_is_deterministic(name):
    img = _image()
    t = SiteDevice(name, site="site-1")
    out = t(img)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == img.shape
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out, SiteDevice(name, site="site-1")(img.copy()))
    out_t = t(torch.from_numpy(img))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_allclose(np.asarray(out_t), out, atol=1e-6)


def test_clean_is_identity():
    img = _image()
    np.testing.assert_allclose(SiteDevice("clean")(img), img, atol=1e-6)


def test_each_profile_changes_the_image_as_named():
    img = _image()
    out = {n: SiteDevice(n, site="s")(img) for n in DEFAULT_PROFILES}
    assert _edge_energy(out["soft-blur"]) < 0.6 * _edge_energy(img)
    assert out["low-contrast"].std() < 0.7 * img.std()
    assert out["bright-noisy"].mean() > img.mean() + 0.08
    assert np.abs(out["bright-noisy"] - np.clip(img + 0.12, 0, 1)).std() > 0.02, "noise added"
    assert out["dark-sharp"].mean() < img.mean() - 0.05
    # unsharp masking overshoots on both sides of a step edge (the halo of a sharpening device)
    step = np.full((1, 32, 32), 0.4, dtype=np.float32)
    step[0, 8:24, 8:24] = 0.7
    sharp = SiteDevice("s", profiles={"s": {"sharpen": 1.5}})(step)
    assert sharp.max() > 0.75 and sharp.min() < 0.37


def test_blur_matches_monai_gaussian_smooth():
    img = _image()
    expected = np.asarray(GaussianSmooth(sigma=1.5)(img))
    np.testing.assert_allclose(SiteDevice("soft-blur")(img), np.clip(expected, 0, 1), atol=1e-6)


def test_noise_depends_on_site_and_image_not_on_call_count():
    img = _image()
    t = SiteDevice("bright-noisy", site="site-4")
    first, second = t(img), t(img)
    np.testing.assert_array_equal(first, second)
    other_site = SiteDevice("bright-noisy", site="site-5")(img)
    assert not np.allclose(first, other_site)
    other_img = t(_image(seed=1))
    noise_a, noise_b = first - np.clip(img + 0.12, 0, 1), other_img - np.clip(_image(seed=1) + 0.12, 0, 1)
    assert not np.allclose(noise_a, noise_b)


def test_multichannel_input():
    img = np.concatenate([_image(0), _image(1), _image(2)])
    out = SiteDevice("soft-blur")(img)
    assert out.shape == (3, 64, 64)
    np.testing.assert_allclose(out[1:2], SiteDevice("soft-blur")(img[1:2]), atol=1e-6)


def test_dictionary_version_matches_array_version():
    img, mask = _image(0), _image(1)
    d = SiteDeviced(keys=["image", "other"], profile="low-contrast", site="a")({"image": img, "other": mask, "x": 3})
    np.testing.assert_array_equal(d["image"], SiteDevice("low-contrast", site="a")(img))
    np.testing.assert_array_equal(d["other"], SiteDevice("low-contrast", site="a")(mask))
    assert d["x"] == 3
    with pytest.raises(KeyError):
        SiteDeviced(keys=["missing"], profile="clean")({"image": img})
    assert "missing" not in SiteDeviced(keys=["missing"], allow_missing_keys=True)({"image": img})


def test_constructor_arguments_are_stored_unchanged():
    profiles = {"mine": {"blur_sigma": 2}}
    t = SiteDeviced(keys="image", profile="mine", site="x", profiles=profiles)
    assert (t.profile, t.site, t.profiles) == ("mine", "x", profiles)
    assert t.transform.params == SiteProfile(blur_sigma=2.0)


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown site profile 'foggy'; valid profiles: clean, soft-blur"):
        SiteDevice("foggy")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"gamma": 0}, "`gamma` must be > 0"),
        ({"contrast": 1.5}, r"`contrast` must be in \(0, 1\]"),
        ({"noise_std": -0.1}, "`noise_std`"),
        ({"blur": 1}, r"unknown key\(s\) `blur`"),
        ({"brightness": "high"}, "`brightness` must be a number"),
    ],
)
def test_bad_profile_values(spec, message):
    with pytest.raises(ConfigError, match=message):
        SiteDevice("p", profiles={"p": spec})


def test_profiles_from_yaml(tmp_path):
    path = tmp_path / "profiles.yaml"
    path.write_text("foggy:\n  blur_sigma: 3\n  contrast: 0.5\nclean:\n  brightness: 0.1\n")
    table = load_site_profiles(path)
    assert table["foggy"] == SiteProfile(blur_sigma=3.0, contrast=0.5)
    assert table["clean"].brightness == 0.1, "a file may replace a built-in"
    assert table["soft-blur"] == DEFAULT_PROFILES["soft-blur"]
    path.write_text("foggy:\n  blur_sigma: -1\n")
    with pytest.raises(ConfigError, match=r"profiles.yaml: profile 'foggy': `blur_sigma` must be >= 0"):
        load_site_profiles(path)


def test_default_profile_names_cycle():
    names = list(DEFAULT_PROFILES)
    assert default_profile_names(7) == names + names[:2]


def test_rejects_non_channel_first():
    with pytest.raises(ValueError, match=r"channel-first \(C, H, W\)"):
        SiteDevice("clean")(np.zeros((8, 8), dtype=np.float32))

"""Per-site "device" transforms: each site's images get a fixed blur / contrast / brightness / noise signature.

FedMRG's benchmark (paper sec. 4.1.2) imitates imaging-device variability by applying client-specific visual
transformations (blurring, contrast and brightness changes) to each client's images. Here a site is given a named
*profile* (configuration, not code); :class:`SiteDevice` applies it to one channel-first image and
:class:`SiteDeviced` to the image keys of a data dictionary, in MONAI's array / dictionary style and built on MONAI's
intensity transforms. Applying a profile is deterministic: the noise draw is seeded from the site name and the image
content, so the same image at the same site always looks the same (the site's device does not change between epochs).

Order of operations (each skipped at its neutral value), on intensities in [0, 1]:

1. ``blur_sigma`` (pixels): :class:`monai.transforms.GaussianSmooth`;
2. ``sharpen`` (unsharp-mask gain): :class:`monai.transforms.GaussianSharpen` with sigmas 0.5 and 1.0 pixels;
3. ``gamma``: :class:`monai.transforms.AdjustContrast` (> 1 darkens mid-tones, < 1 lightens);
4. ``contrast`` (0..1]: linear squeeze of [0, 1] into a window of that width around mid-grey 0.5
   (:class:`monai.transforms.ScaleIntensityRange`);
5. ``brightness``: additive offset (:class:`monai.transforms.ShiftIntensity`);
6. ``noise_std``: additive Gaussian noise of that standard deviation (:class:`monai.transforms.RandGaussianNoise`
   with a seeded ``RandomState``);
7. clip to [0, 1].

Profiles are a mapping ``name -> {field: value}`` (YAML file via :func:`load_site_profiles`); the built-in ones are
in :data:`DEFAULT_PROFILES`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    AdjustContrast,
    GaussianSharpen,
    GaussianSmooth,
    MapTransform,
    RandGaussianNoise,
    ScaleIntensityRange,
    ShiftIntensity,
    Transform,
)
from monai.utils import convert_to_dst_type

from fedmrg.config import from_dict, load_yaml
from fedmrg.errors import ConfigError

NdarrayOrTensor = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class SiteProfile:
    """One imaging-device signature (see the module docstring for the order of operations).

    Args:
        blur_sigma: Gaussian blur standard deviation in pixels (0 = off, >= 0).
        sharpen: unsharp-mask gain ``alpha`` of GaussianSharpen (0 = off, >= 0).
        gamma: gamma of the intensity curve (1 = off, > 0).
        contrast: width of the output intensity window around 0.5 (1 = off, in (0, 1]).
        brightness: intensity offset added after contrast (0 = off, in [-0.5, 0.5]).
        noise_std: standard deviation of additive Gaussian noise in intensity units (0 = off, in [0, 0.5]).
    """

    blur_sigma: float = 0.0
    sharpen: float = 0.0
    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "blur_sigma": (self.blur_sigma >= 0, ">= 0"),
            "sharpen": (self.sharpen >= 0, ">= 0"),
            "gamma": (self.gamma > 0, "> 0"),
            "contrast": (0 < self.contrast <= 1, "in (0, 1]"),
            "brightness": (-0.5 <= self.brightness <= 0.5, "in [-0.5, 0.5]"),
            "noise_std": (0 <= self.noise_std <= 0.5, "in [0, 0.5]"),
        }
        for name, (ok, rule) in checks.items():
            if not ok:
                raise ValueError(f"`{name}` must be {rule}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


#: Built-in profiles; the default assignment gives site k the k-th name (cycling).
DEFAULT_PROFILES: dict[str, SiteProfile] = {
    "clean": SiteProfile(),
    "soft-blur": SiteProfile(blur_sigma=1.5),
    "low-contrast": SiteProfile(contrast=0.6, gamma=0.8),
    "bright-noisy": SiteProfile(brightness=0.12, noise_std=0.04),
    "dark-sharp": SiteProfile(sharpen=1.5, gamma=1.4, brightness=-0.08),
}


def load_site_profiles(path: str | Path) -> dict[str, SiteProfile]:
    """Read profiles from a YAML mapping ``name: {blur_sigma: ..., ...}``; they add to (or replace) the built-ins.

    Raises:
        ConfigError: the file is missing or not YAML, a field is unknown or out of range (names file and profile).
    """
    data = load_yaml(path)
    return parse_site_profiles(data, source=str(path))


def parse_site_profiles(data: Mapping[str, Any] | None, *, source: str = "<profiles>") -> dict[str, SiteProfile]:
    """Built-in profiles updated with ``data`` (``name -> field mapping`` or :class:`SiteProfile`)."""
    out = dict(DEFAULT_PROFILES)
    for name, spec in (data or {}).items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: profile names must be non-empty strings, got {name!r}")
        if isinstance(spec, SiteProfile):
            out[name] = spec
        else:
            out[name] = from_dict(SiteProfile, spec, source=f"{source}: profile {name!r}")
    return out


def get_profile(name: str, profiles: Mapping[str, SiteProfile] | None = None) -> SiteProfile:
    """The profile called ``name``; ConfigError listing the valid names when there is none."""
    table = DEFAULT_PROFILES if profiles is None else profiles
    if name not in table:
        raise ConfigError(f"unknown site profile {name!r}; valid profiles: {', '.join(table)}")
    return table[name]


def default_profile_names(n: int) -> list[str]:
    """Profiles for ``n`` sites: the built-in names in order, cycling (site 1 clean, site 2 soft-blur, ...)."""
    names = list(DEFAULT_PROFILES)
    return [names[i % len(names)] for i in range(n)]


def image_seed(img: NdarrayOrTensor, site: str) -> int:
    """A 32-bit seed from the site name and the image's bytes (same image + site -> same seed)."""
    arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    h = hashlib.blake2b(digest_size=4)
    h.update(site.encode("utf-8"))
    h.update(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
    return int.from_bytes(h.digest(), "little")


class SiteDevice(Transform):
    """Apply a site's device profile to one channel-first image.

    Args:
        profile: profile name, looked up in ``profiles`` (built-ins by default). Defaults to ``"clean"``.
        site: the site's name; mixed into the noise seed so two sites with the same profile differ. Defaults to "".
        profiles: extra or replacement profiles, ``name -> {field: value}`` (as in the YAML file). Defaults to None.

    Input: ``(C, H, W)`` numpy array or torch tensor, float intensities in [0, 1]. Output: the same type, shape and
    float32 dtype, in [0, 1].

    Raises:
        ConfigError: unknown profile name (the message lists the valid ones) or an invalid profile field.
    """

    backend = [torch.Tensor, np.ndarray]

    def __init__(self, profile: str = "clean", site: str = "", profiles: Mapping[str, Any] | None = None) -> None:
        self.profile = profile
        self.site = site
        self.profiles = profiles
        self._params = get_profile(profile, parse_site_profiles(profiles))
        p = self._params
        self._ops: list[Transform] = []
        if p.blur_sigma > 0:
            self._ops.append(GaussianSmooth(sigma=p.blur_sigma))
        if p.sharpen > 0:
            self._ops.append(GaussianSharpen(sigma1=0.5, sigma2=1.0, alpha=p.sharpen))
        if p.gamma != 1:
            self._ops.append(AdjustContrast(gamma=p.gamma))
        if p.contrast != 1:
            lo = 0.5 - p.contrast / 2
            self._ops.append(ScaleIntensityRange(a_min=0.0, a_max=1.0, b_min=lo, b_max=lo + p.contrast))
        if p.brightness != 0:
            self._ops.append(ShiftIntensity(offset=p.brightness))
        self._noise = RandGaussianNoise(prob=1.0, std=p.noise_std, sample_std=False) if p.noise_std > 0 else None
        self._clip = ScaleIntensityRange(a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True)

    @property
    def params(self) -> SiteProfile:
        """The resolved profile."""
        return self._params

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        if img.ndim != 3:
            raise ValueError(f"image should be channel-first (C, H, W), got shape {tuple(img.shape)}")
        out: Any = torch.as_tensor(np.asarray(img) if isinstance(img, np.ndarray) else img, dtype=torch.float32)
        for op in self._ops:
            out = op(out)
        if self._noise is not None:
            self._noise.set_random_state(image_seed(img, self.site))
            out = self._noise(out)
        out = self._clip(out)
        if isinstance(img, np.ndarray):
            return np.asarray(out, dtype=np.float32)
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


class SiteDeviced(MapTransform):
    """Dictionary version of :class:`SiteDevice`: applies the profile to each of ``keys``.

    Args:
        keys: keys of the images to transform, each ``(C, H, W)`` in [0, 1].
        profile: profile name. Defaults to ``"clean"``.
        site: the site's name (noise seed). Defaults to "".
        profiles: extra or replacement profiles. Defaults to None.
        allow_missing_keys: do not raise when a key is absent. Defaults to False.
    """

    backend = SiteDevice.backend

    def __init__(
        self,
        keys: KeysCollection,
        profile: str = "clean",
        site: str = "",
        profiles: Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.profile = profile
        self.site = site
        self.profiles = profiles
        self.transform = SiteDevice(profile=profile, site=site, profiles=profiles)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


def profile_field_names() -> Sequence[str]:
    """The fields a profile may set (for help texts and error messages)."""
    return [f.name for f in fields(SiteProfile)]

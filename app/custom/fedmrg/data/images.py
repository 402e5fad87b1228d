"""Load radiographs (PNG / JPG / BMP / DICOM) as grey-level arrays, and the model's image transform chain.

:func:`load_image` returns what a person sees on a reading screen, as ``float32 (H, W)`` in ``[0, 1]``
(0 black, 1 white):

- PNG / JPG / BMP through PIL, rows as rows (MONAI's ``PILReader`` would swap H and W unless given
  ``reverse_indexing=False``; see ``_load_raster`` for why PIL is called directly). EXIF orientation is applied,
  colour is converted to luminance (PIL ``L``), 8-bit data are divided by 255 and 16-bit data by 65535.
- DICOM through pydicom: Modality LUT / rescale (``apply_modality_lut``), then the first VOI LUT or window
  (``apply_voi_lut``) scaled by its output range (``0 .. 2**n - 1`` for a VOI LUT with ``n`` bits per entry;
  the stored-value range through the rescale for a window, as pydicom computes it); without VOI data the
  image's own min..max (what DICOM viewers show by default). ``MONOCHROME1`` (white = low values) is inverted.
  RGB / YBR images (secondary captures) become luminance. Multi-frame files are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmrg.errors import DataError

if TYPE_CHECKING:
    from monai.transforms import Compose

RASTER_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
#: ImageNet channel statistics used by the torchvision-pretrained ResNet-101 of R2Gen / PromptMRG.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, the weights of PIL's "L" conversion


def load_image(path: str | Path) -> np.ndarray:
    """Load one radiograph as ``float32 (H, W)`` in ``[0, 1]``.

    Raises:
        DataError: missing, truncated or corrupt file, unsupported format, multi-frame DICOM, or pixel data pydicom
            cannot decode (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    if _is_dicom(path):
        return _load_dicom(path)
    if path.suffix.lower() in RASTER_SUFFIXES:
        return _load_raster(path)
    raise DataError(f"{path}: unsupported image format (expected {', '.join(RASTER_SUFFIXES + DICOM_SUFFIXES)})")


def sniff_format(head: bytes) -> str | None:
    """``"dicom"``, ``"png"``, ``"jpeg"`` or ``"bmp"`` from a file's first 132 bytes (magic numbers), else None.

    DICOM Part 10 files carry ``DICM`` after a 128-byte preamble; PNG, JPEG and BMP start with their signatures.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    return None


_SNIFFED_SUFFIX = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg", "bmp": ".bmp"}


def load_image_bytes(data: bytes, *, name: str = "upload") -> np.ndarray:
    """:func:`load_image` for a file's content (e.g. a web upload), the format told by its magic number.

    Args:
        data: the whole file.
        name: what error messages call it (e.g. the uploaded file's name).

    Raises:
        DataError: naming ``name``: not a PNG / JPEG / BMP / DICOM file, or any :func:`load_image` refusal.
    """
    import tempfile

    kind = sniff_format(data[:132])
    if kind is None:
        raise DataError(f"{name}: not a PNG, JPEG, BMP or DICOM (Part 10) file")
    with tempfile.TemporaryDirectory(prefix="fedmrg-image-") as tmp:
        path = Path(tmp) / f"image{_SNIFFED_SUFFIX[kind]}"
        path.write_bytes(data)
        try:
            return load_image(path)
        except DataError as e:
            raise DataError(str(e).replace(str(path), name, 1)) from e


def check_image(path: str | Path) -> None:
    """Cheap readability check without decoding pixels: PIL ``verify()`` (PNG chunk CRCs) or the DICOM header.

    Raises:
        DataError: the file is missing, not an image, multi-frame or lacks pixel data (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    if _is_dicom(path):
        _check_dicom(_read_dicom(path, defer_size="1 KB"), path)
        return
    if path.suffix.lower() not in RASTER_SUFFIXES:
        raise DataError(f"{path}: unsupported image format")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable image: {e}") from e


def image_transform(
    size: int | tuple[int, int] = 224,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """MONAI chain from a :func:`load_image` array to the encoder's input.

    ``(H, W)`` float in [0, 1] -> add channel -> ``Resize`` to ``size`` -> 3 channels -> ``(x - mean) / std`` per
    channel -> ``torch.float32 (3, size, size)``.

    The resize uses ``mode="area"`` (each output pixel is the mean of the input pixels it covers): anti-aliased
    when shrinking a radiograph, which is the usual case; enlarging a small image gives blocky, nearest-like
    pixels. MONAI's ``anti_aliasing=True`` is not used because its Gaussian pre-filter pads with zeros and darkens
    the border by about 20 %. A square ``size`` squashes non-square images, as R2Gen's ``Resize((224, 224))`` does.
    """
    from monai.transforms import Compose, EnsureChannelFirst, EnsureType, NormalizeIntensity, RepeatChannel, Resize

    spatial = (size, size) if isinstance(size, int) else tuple(size)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"`mean` and `std` need 3 values (one per channel), got {len(mean)} and {len(std)}")
    return Compose(
        [
            EnsureChannelFirst(channel_dim="no_channel"),
            Resize(spatial, mode="area"),
            RepeatChannel(3),
            NormalizeIntensity(subtrahend=list(mean), divisor=list(std), channel_wise=True),
            EnsureType("tensor", dtype=_torch_float32(), track_meta=False),
        ]
    )


def _torch_float32() -> Any:
    import torch

    return torch.float32


# ----------------------------------------------------------------------------------------------- raster images


def _load_raster(path: Path) -> np.ndarray:
    # PIL directly, not MONAI's PILReader: that reader is a thin wrapper over the same two PIL calls, and importing
    # monai costs about 7 s of CPU (its package import pulls in its networks and transformers), which a command
    # that only reads a few PNGs should not pay. The result equals what PIL shows (tests compare pixel for pixel).
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # JPEGs from phones / scanners may store rotated pixels
            if img.mode not in ("L", "I", "I;16", "I;16B", "I;16L"):
                img = img.convert("L")
            arr = np.asarray(img, dtype=np.float64)
            scale = 255.0 if img.mode == "L" else 65535.0
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable image: {e}") from e
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a single-channel image after conversion, got shape {arr.shape}")
    return np.clip(arr / scale, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------------ DICOM


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix.lower() in RASTER_SUFFIXES:
        return False
    from pydicom.misc import is_dicom

    return is_dicom(path)


def _read_dicom(path: Path, **kwargs: Any) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError as e:
        raise DataError(f"{path}: not a DICOM file ({e})") from e
    except Exception as e:  # pydicom raises OSError, EOFError, ValueError, struct.error on damaged files
        raise DataError(f"{path}: unreadable or truncated DICOM file: {e}") from e


def dicom_frames(ds: Any) -> int | None:
    """Frames declared by a DICOM header (1 when absent), or None when ``NumberOfFrames`` is not a number."""
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return None


def dicom_problem(ds: Any) -> str | None:
    """Why a DICOM dataset (header read) cannot be loaded as one radiograph, or None when it can."""
    if "PixelData" not in ds:
        return f"no pixel data (SOP class {ds.get('SOPClassUID', 'unknown')})"
    frames = dicom_frames(ds)
    if frames is None:
        return f"invalid NumberOfFrames {ds.get('NumberOfFrames')!r}"
    if frames > 1:
        return f"multi-frame DICOM ({frames} frames) is not supported; export a single frame"
    return None


def _check_dicom(ds: Any, path: Path) -> None:
    problem = dicom_problem(ds)
    if problem:
        raise DataError(f"{path}: {problem}")


def _load_dicom(path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = _read_dicom(path)
    _check_dicom(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    try:
        arr = ds.pixel_array
    except Exception as e:  # truncated data, or a compressed transfer syntax without its decoder plugin
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise DataError(f"{path}: cannot decode pixel data (transfer syntax {name}): {e}") from e

    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"):  # pixel_array gives RGB
        bits = int(ds.get("BitsStored", 8))
        return np.clip(arr.astype(np.float64) @ _LUMA / (2**bits - 1), 0.0, 1.0).astype(np.float32)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(f"{path}: photometric interpretation {photometric or 'missing'} is not supported")
    if arr.ndim != 2:
        raise DataError(f"{path}: expected one 2D frame, got pixel array shape {arr.shape}")

    try:
        arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        if ds.get("VOILUTSequence"):
            arr = np.asarray(apply_voi_lut(arr.astype(np.int64), ds, index=0), dtype=np.float64)
            lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            arr = np.asarray(apply_voi_lut(arr, ds, index=0), dtype=np.float64)
            # The window's output range, as pydicom computes it (its y_min / y_max): the extremes map onto it.
            with np.errstate(over="ignore"):
                lo, hi = (float(v) for v in apply_voi_lut(np.array([-np.inf, np.inf]), ds, index=0))
        else:
            lo, hi = float(arr.min()), float(arr.max())
    except (ValueError, TypeError, IndexError, AttributeError) as e:
        raise DataError(f"{path}: invalid Modality / VOI LUT attributes: {e}") from e

    out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    out = np.clip(out, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)

"""load_image / check_image / image_transform on the real IU PNGs, pydicom's test files and built images.

Expected values come from the DICOM standard's formulas written out here, not from the code under test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fedmrg.data.images import IMAGENET_MEAN, IMAGENET_STD, check_image, image_transform, load_image
from fedmrg.errors import DataError


def _check(a: np.ndarray, shape: tuple[int, int]) -> None:
    assert a.shape == shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0


# ------------------------------------------------------------------------------------------- PNG / JPG


def test_real_iu_pngs_match_what_pil_shows(iu_dir):
    pngs = sorted((iu_dir / "images").glob("*.png"))
    assert len(pngs) == 4
    for p in pngs:
        a = load_image(p)
        with Image.open(p) as im:
            expected = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            _check(a, (im.height, im.width))
        np.testing.assert_array_equal(a, expected)
        check_image(p)


def test_orientation_rows_stay_rows(tmp_path):
    arr = np.zeros((20, 50), dtype=np.uint8)  # H=20, W=50, bright block top-right
    arr[:5, 40:] = 255
    Image.fromarray(arr).save(tmp_path / "x.png")
    a = load_image(tmp_path / "x.png")
    _check(a, (20, 50))
    assert a[:5, 40:].min() == 1.0 and a[5:, :].max() == 0.0 and a[:, :40].max() == 0.0


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((40, 80), dtype=np.uint8)  # stored: bright left half
    arr[:, :40] = 255
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # Orientation 6: display = stored rotated 90 degrees clockwise
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    a = load_image(tmp_path / "rot.jpg")
    _check(a, (80, 40))  # rotated: H and W swap
    # rotating clockwise moves the stored left half to the top
    assert a[:30].mean() > 0.9 and a[50:].mean() < 0.1


def test_sixteen_bit_and_rgb_png(tmp_path):
    v = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(v).save(tmp_path / "g16.png")
    np.testing.assert_allclose(load_image(tmp_path / "g16.png"), v / 65535.0, atol=1e-6)
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # pure red 200 -> PIL luminance round(200 * 0.299) = 60
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(load_image(tmp_path / "rgb.png"), np.full((2, 3), 60 / 255.0), atol=1e-6)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_damaged_raster_names_the_file(tmp_path, kind, iu_dir):
    src = sorted((iu_dir / "images").glob("*.png"))[0].read_bytes()
    data = {"truncated": src[: len(src) // 3], "garbage": b"hello world", "empty": b""}[kind]
    p = tmp_path / f"{kind}.png"
    p.write_bytes(data)
    with pytest.raises(DataError, match=f"{kind}.png: unreadable image"):
        load_image(p)
    with pytest.raises(DataError, match=f"{kind}.png"):
        check_image(p)


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(DataError, match="nope.png: image file not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "scan.tiff").write_bytes(b"II*\x00")
    with pytest.raises(DataError, match="scan.tiff: unsupported image format"):
        load_image(tmp_path / "scan.tiff")


# ------------------------------------------------------------------------------------------------ DICOM


def test_ct_small_without_window_uses_image_range():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = (hu - hu.min()) / (hu.max() - hu.min())
    a = load_image(path)
    _check(a, hu.shape)
    np.testing.assert_allclose(a, expected, atol=1e-6)


def test_mr_small_linear_window():
    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    x = ds.pixel_array.astype(np.float64)
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR), output scaled to [0, 1]
    expected = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    expected[x <= c - 0.5 - (w - 1) / 2] = 0.0
    expected[x > c - 0.5 + (w - 1) / 2] = 1.0
    np.testing.assert_allclose(load_image(path), expected, atol=1e-6)


def _dataset(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits: int = 12, **attrs) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def test_monochrome1_twelve_bit_window_is_inverted(tmp_path):
    x = np.array([[0, 1024, 2048], [3072, 4095, 100]])
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        _dataset(x, photometric=photometric, WindowCenter=2048, WindowWidth=4096).save_as(
            tmp_path / f"{photometric}.dcm", enforce_file_format=True
        )
    # LINEAR window c=2048, w=4096 over a 12-bit unsigned range: (x - 2047.5) / 4095 + 0.5
    mono2 = np.clip((x - 2047.5) / 4095 + 0.5, 0, 1)
    np.testing.assert_allclose(load_image(tmp_path / "MONOCHROME2.dcm"), mono2, atol=1e-6)
    np.testing.assert_allclose(load_image(tmp_path / "MONOCHROME1.dcm"), 1.0 - mono2, atol=1e-6)


def test_sixteen_bit_rescale_without_window(tmp_path):
    x = np.array([[0, 30000], [65535, 12345]])
    _dataset(x, bits=16, RescaleSlope=2, RescaleIntercept=-100).save_as(tmp_path / "r.dcm", enforce_file_format=True)
    y = x * 2.0 - 100
    np.testing.assert_allclose(load_image(tmp_path / "r.dcm"), (y - y.min()) / (y.max() - y.min()), atol=1e-6)


def test_voi_lut_sequence(tmp_path):
    lut_item = Dataset()
    lut_item.add_new(0x00283002, "US", [4, 10, 8])  # LUT Descriptor: 4 entries, first input 10, 8-bit output
    lut_item.add_new(0x00283006, "US", [0, 50, 200, 255])  # LUT Data
    x = np.array([[0, 10, 11], [12, 13, 500]])
    _dataset(x, VOILUTSequence=[lut_item]).save_as(tmp_path / "lut.dcm", enforce_file_format=True)
    # inputs below 10 take the first entry, above 13 the last; output range 0..2**8-1
    expected = np.array([[0, 0, 50], [200, 255, 255]]) / 255.0
    np.testing.assert_allclose(load_image(tmp_path / "lut.dcm"), expected, atol=1e-6)


def test_constant_image_is_black(tmp_path):
    _dataset(np.full((3, 3), 7)).save_as(tmp_path / "c.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(load_image(tmp_path / "c.dcm"), np.zeros((3, 3), np.float32))


def test_rgb_dicom_becomes_luminance():
    path = get_testdata_file("SC_rgb_small_odd.dcm")
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float64)
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(load_image(path), expected, atol=1e-6)


def test_dicom_without_extension(tmp_path):
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "IM0001")
    np.testing.assert_array_equal(load_image(tmp_path / "IM0001"), load_image(get_testdata_file("MR_small.dcm")))


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("MR_truncated.dcm", "cannot decode pixel data"),
        ("rtdose.dcm", r"multi-frame DICOM \(15 frames\) is not supported"),
        ("reportsi.dcm", "no pixel data"),
        ("JPEG-lossy.dcm", "cannot decode pixel data"),  # 12-bit JPEG: no decoder plugin here
    ],
)
def test_bad_dicom_errors_name_the_file(tmp_path, name, match):
    p = tmp_path / name
    shutil.copy(get_testdata_file(name), p)
    with pytest.raises(DataError, match=match) as e:
        load_image(p)
    assert str(p) in str(e.value)


def test_not_dicom_and_cut_header(tmp_path):
    (tmp_path / "fake.dcm").write_bytes(b"\x00" * 200)
    with pytest.raises(DataError, match="fake.dcm: not a DICOM file"):
        load_image(tmp_path / "fake.dcm")
    head = Path(get_testdata_file("CT_small.dcm")).read_bytes()[:400]
    (tmp_path / "cut.dcm").write_bytes(head)
    with pytest.raises(DataError, match="cut.dcm"):
        load_image(tmp_path / "cut.dcm")


def test_check_image_on_dicom(tmp_path):
    check_image(get_testdata_file("CT_small.dcm"))
    shutil.copy(get_testdata_file("rtdose.dcm"), tmp_path / "multi.dcm")
    with pytest.raises(DataError, match="multi.dcm: multi-frame"):
        check_image(tmp_path / "multi.dcm")


# -------------------------------------------------------------------------------------------- transform


def test_image_transform_shape_and_normalisation():
    out = image_transform(32)(np.full((40, 60), 0.5, dtype=np.float32))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (3, 32, 32)
    for c in range(3):
        expected = (0.5 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(out[c], torch.full((32, 32), expected), atol=1e-5, rtol=0)


def test_image_transform_keeps_orientation_and_custom_stats():
    img = np.zeros((64, 32), dtype=np.float32)
    img[:16] = 1.0  # top quarter white
    out = image_transform((16, 8), mean=(0, 0, 0), std=(1, 1, 1))(img)
    assert out.shape == (3, 16, 8)
    # area resize by 4: the top 16 input rows become the top 4 output rows exactly
    assert out[:, :4].min() == 1.0 and out[:, 4:].max() == 0.0
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    with pytest.raises(ValueError, match="3 values"):
        image_transform(8, mean=(0.5,))

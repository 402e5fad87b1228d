"""Vision readers and site splits: bad input is refused naming the file (or converted and counted), patients stay
together, the MSD Task05 reader works on volumes written here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedmrg.errors import DataError
from fedmrg.vision import data as vdata
from fedmrg.vision.config import load_vision_config
from fedmrg.vision.tasks import site_splits


def _img(path: Path, size=(20, 16), mode="RGB", value=128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 50, 50)).save(path)
    return path


def _seg_folder(root: Path, n: int = 3) -> Path:
    for i in range(n):
        _img(root / "images" / f"a{i}.jpg")
        m = np.zeros((16, 20), np.uint8)
        m[4:10, 5:12] = 255
        Image.fromarray(m).save(root / "masks" / f"a{i}.png") if (root / "masks").is_dir() else (
            (root / "masks").mkdir(), Image.fromarray(m).save(root / "masks" / f"a{i}.png"))
    return root


def test_image_without_mask_is_named(tmp_path):
    root = _seg_folder(tmp_path / "d")
    _img(root / "images" / "lonely.jpg")
    with pytest.raises(DataError, match=r"lonely\.jpg: no mask"):
        vdata.read_image_mask_folder(root)


def test_mask_of_another_size_is_refused(tmp_path):
    root = _seg_folder(tmp_path / "d", 1)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "a0.png")
    s = vdata.read_image_mask_folder(root)[0]
    img = vdata.load_rgb(s.image)
    with pytest.raises(DataError, match=r"a0\.png of a0 is 8x8 px, its image 20x16 px"):
        vdata.load_mask(s.mask, img.shape[:2], s.name)


def test_grayscale_is_converted_and_counted(tmp_path):
    p = _img(tmp_path / "g.png", mode="L", value=77)
    before = vdata.CONVERSIONS["grayscale_to_rgb"]
    arr = vdata.load_rgb(str(p))
    assert arr.shape == (16, 20, 3) and (arr == 77).all()
    assert vdata.CONVERSIONS["grayscale_to_rgb"] == before + 1


def test_corrupt_image_is_named(tmp_path):
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg: not a readable image"):
        vdata.load_rgb(str(p))


def test_empty_class_is_refused():
    samples = [vdata.Sample(str(i), np.zeros((4, 4, 3), np.uint8), label=i % 2) for i in range(6)]
    with pytest.raises(DataError, match=r"my.csv: class\(es\) \['c2'\] have no example"):
        vdata.check_classes(samples, ["c0", "c1", "c2"], "my.csv")


def _write_nifti(path: Path, arr: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))


def _msd(root: Path, with_label: bool = True) -> Path:
    rng = np.random.default_rng(0)
    training = []
    for c in range(2):
        vol = rng.normal(100, 20, (12, 10, 4, 2)).astype(np.float32)  # H, W, D, (T2, ADC)
        lab = np.zeros((12, 10, 4), np.uint8)
        lab[3:8, 2:6, 1:3] = 1 + c
        _write_nifti(root / "imagesTr" / f"prostate_{c:02d}.nii.gz", vol)
        entry = {"image": f"./imagesTr/prostate_{c:02d}.nii.gz"}
        if with_label:
            _write_nifti(root / "labelsTr" / f"prostate_{c:02d}.nii.gz", lab)
            entry["label"] = f"./labelsTr/prostate_{c:02d}.nii.gz"
        training.append(entry)
    (root / "dataset.json").write_text(json.dumps({"name": "Prostate", "training": training}))
    return root


def test_msd_task05_reader_gives_2d_slices_with_prostate(tmp_path):
    samples = vdata.read_msd_task05(_msd(tmp_path / "Task05_Prostate"))
    assert [s.name for s in samples] == ["prostate_00_z001", "prostate_00_z002", "prostate_01_z001",
                                         "prostate_01_z002"]
    s = samples[0]
    assert s.image.shape == (12, 10) and s.image.dtype == np.uint8
    assert s.mask.shape == (12, 10) and s.mask.sum() == 5 * 4
    assert {x.group for x in samples} == {"prostate_00", "prostate_01"}


def test_nifti_without_label_is_named(tmp_path):
    with pytest.raises(DataError, match=r"prostate_00\.nii\.gz: NIfTI volume without its label"):
        vdata.read_msd_task05(_msd(tmp_path / "T", with_label=False))


def _ham(root: Path, lesions: int = 90) -> Path:
    rows = []
    for i in range(lesions):
        for j in range(1 + i % 3):  # 1-3 images per lesion
            iid = f"ISIC_{i:03d}{j}"
            _img(root / "images" / f"{iid}.jpg", size=(12, 10), value=20 * (i % 10))
            rows.append({"lesion_id": f"HAM_{i:03d}", "image_id": iid, "dx": "mel" if i % 4 == 0 else "nv",
                         "dx_type": "histo"})
    with (root / "HAM10000_metadata.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_ham10000_sites_never_split_a_lesion(tmp_path):
    root = _ham(tmp_path / "ham")
    cfg = load_vision_config({"task": "melanoma", "num_sites": 3, "val_fraction": 0.3, "dirichlet_alpha": 5.0})
    where: dict[str, set] = {}
    for i in range(3):
        splits = site_splits(cfg, str(root), i)
        for split, samples in splits.items():
            for s in samples:
                where.setdefault(s.group, set()).add("test" if split == "test" else (i, split))
    multi = {g: w for g, w in where.items() if len({x for x in w if x != "test"}) > 1 or
             ("test" in w and len(w) > 1)}
    assert not multi, multi
    assert len(where) == 90


def test_retina_npz_reader_and_data_fraction(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "retinamnist_small.npz", train_images=rng.integers(0, 255, (200, 28, 28, 3), np.uint8),
             train_labels=(np.arange(200) % 5).reshape(-1, 1), val_images=np.zeros((10, 28, 28, 3), np.uint8),
             val_labels=np.zeros((10, 1)))
    full = site_splits(load_vision_config({"task": "retina", "num_sites": 1}), str(tmp_path), 0)
    small = site_splits(load_vision_config({"task": "retina", "num_sites": 1, "data_fraction": 0.05}),
                        str(tmp_path), 0)
    assert len(full["test"]) == 10 and len(full["train"]) + len(full["val"]) == 200
    assert 1 <= len(small["train"]) < 0.15 * len(full["train"])
    with pytest.raises(DataError, match="no `test_images`"):
        vdata.read_npz(tmp_path, "test")


@pytest.mark.shared_data
def test_real_ham10000_lesions_stay_at_one_site(shared_data):
    root = shared_data / "ham10000"
    samples = vdata.read_ham10000(root)
    sites = vdata.dirichlet_sites(samples, 3, 0.5, seed=0)
    per_lesion: dict[str, set] = {}
    for s, k in zip(samples, sites, strict=True):
        per_lesion.setdefault(s.group, set()).add(k)
    assert max(len(v) for v in per_lesion.values()) == 1
    assert len(set(sites)) == 3

"""Readers, site partitions and synthetic tasks of the vision system.

Every reader returns :class:`Sample` records (one image, with a class label or a binary mask); images are decoded
lazily by :func:`load_rgb`. Layouts (as in ``../shared/data``):

- RetinaMNIST: a folder holding ``retinamnist*.npz`` (or the file) with ``<split>_images`` ``(n, 28, 28, 3)`` and
  ``<split>_labels``; 5 grades;
- HAM10000: ``HAM10000_metadata.csv`` + ``images/<image_id>.jpg``; melanoma (``dx == "mel"``) vs rest; ``lesion_id``
  is the patient unit (never split across sites or train/val);
- an image + mask folder pair (Kvasir-SEG): ``images/`` and ``masks/`` with the same stems (masks: any 8-bit image,
  foreground = value >= 128);
- an image folder + CSV (``labels.csv`` with columns ``image``, ``label``) for classification evaluation;
- MSD Task05 (prostate): ``dataset.json`` + ``imagesTr/*.nii.gz`` (4D, channel 0 = T2) + ``labelsTr/``; 2D axial
  slices that contain prostate, label > 0 = prostate (read with nibabel, MONAI's NIfTI backend, directly: MONAI's
  ``LoadImage`` initialises every reader and took minutes to import on the shared CI machine).

Bad input: an image with no mask, a mask of another size than its image, an unreadable image, a NIfTI volume without
its label, a class with no example: :class:`~fedmrg.errors.DataError` naming the file (or class). A grayscale image
for an RGB backbone is converted (channel repeated) and counted in :data:`CONVERSIONS`.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmrg.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: documented conversions applied while loading, counted per kind (e.g. ``"grayscale_to_rgb"``)
CONVERSIONS: Counter[str] = Counter()
TASK_KINDS = {
    "retina": "classification",
    "melanoma": "classification",
    "polyp": "segmentation",
    "prostate": "segmentation",
    "synthetic_cls": "classification",
    "synthetic_seg": "segmentation",
}
CLASS_NAMES = {
    "retina": ["grade0", "grade1", "grade2", "grade3", "grade4"],
    "melanoma": ["rest", "melanoma"],
    "synthetic_cls": ["plain", "striped"],
}


@dataclass
class Sample:
    """One image: ``image`` is a path or an ``(H, W[, 3])`` uint8 array; ``label`` a class index or ``mask`` a path
    or ``(H, W)`` bool array; ``group`` the patient / lesion unit kept together."""

    name: str
    image: str | np.ndarray
    label: int | None = None
    mask: str | np.ndarray | None = None
    group: str = ""


def load_rgb(image: str | np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8; grayscale repeated to RGB (counted); DataError naming an unreadable file."""
    if isinstance(image, np.ndarray):
        arr = image
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(image) as im:
                im.load()
                if im.mode not in ("RGB", "L"):
                    im = im.convert("RGB")
                arr = np.asarray(im)
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            raise DataError(f"{image}: not a readable image ({e})") from e
    if arr.ndim == 2:
        CONVERSIONS["grayscale_to_rgb"] += 1
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(
            f"image {getattr(image, 'name', image) if not isinstance(image, np.ndarray) else ''} has "
            f"shape {arr.shape}, expected (H, W) or (H, W, 3)"
        )
    return np.ascontiguousarray(arr.astype(np.uint8))


def load_mask(mask: str | np.ndarray, shape: tuple[int, int], image_name: str) -> np.ndarray:
    """``(H, W)`` bool mask (value >= 128 of the first channel); DataError when unreadable or of another size."""
    if isinstance(mask, np.ndarray):
        arr = mask
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(mask) as im:
                arr = np.asarray(im.convert("L"))
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            raise DataError(f"{mask}: not a readable mask image ({e})") from e
        arr = arr >= 128
    if arr.ndim == 3:
        arr = arr[..., 0]
    if tuple(arr.shape) != tuple(shape):
        raise DataError(
            f"mask {mask if isinstance(mask, str) else ''} of {image_name} is {arr.shape[1]}x"
            f"{arr.shape[0]} px, its image {shape[1]}x{shape[0]} px: masks must have the image's size"
        )
    return arr.astype(bool)


# -- readers --------------------------------------------------------------------------------------------------------
def find_npz(path: str | Path, prefix: str = "retinamnist") -> Path:
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(path.glob(f"{prefix}*.npz")) if path.is_dir() else []
    if not found:
        raise DataError(f"{path}: no {prefix}*.npz (give the folder holding it, or the file)")
    return found[0]


def read_npz(path: str | Path, split: str, prefix: str = "retinamnist") -> list[Sample]:
    """Samples of ``<split>_images`` / ``<split>_labels`` of a MedMNIST ``.npz``."""
    f = find_npz(path, prefix)
    with np.load(f) as d:
        if f"{split}_images" not in d.files or f"{split}_labels" not in d.files:
            raise DataError(f"{f}: no `{split}_images` / `{split}_labels` arrays (has {sorted(d.files)})")
        imgs, labels = d[f"{split}_images"], d[f"{split}_labels"].reshape(-1)
    return [
        Sample(f"{f.stem}_{split}_{i:05d}", imgs[i], int(labels[i]), group=f"{split}_{i}") for i in range(len(imgs))
    ]


def read_ham10000(root: str | Path) -> list[Sample]:
    """HAM10000: melanoma (1) vs rest (0), ``group`` = ``lesion_id``. Rows whose image is missing: DataError."""
    root = Path(root)
    meta = root / "HAM10000_metadata.csv"
    if not meta.is_file():
        raise DataError(f"{root}: no HAM10000_metadata.csv (HAM10000 layout: the CSV + images/)")
    with meta.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    need = {"lesion_id", "image_id", "dx"}
    if rows and not need <= set(rows[0]):
        raise DataError(f"{meta}: missing column(s) {sorted(need - set(rows[0]))}")
    out = []
    for r in sorted(rows, key=lambda r: r["image_id"]):
        img = root / "images" / f"{r['image_id']}.jpg"
        if not img.is_file():
            raise DataError(f"{meta}: image {img} of row {r['image_id']} does not exist")
        out.append(Sample(r["image_id"], str(img), int(r["dx"] == "mel"), group=r["lesion_id"]))
    return out


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def read_image_mask_folder(root: str | Path) -> list[Sample]:
    """``images/`` + ``masks/`` with the same stems; an image with no mask: DataError naming it."""
    root = Path(root)
    imgs_dir, masks_dir = root / "images", root / "masks"
    if not imgs_dir.is_dir() or not masks_dir.is_dir():
        raise DataError(f"{root}: expected images/ and masks/ folders (same file stems)")
    masks = {p.stem.removesuffix("_segmentation"): p for p in _images_in(masks_dir)}
    out = []
    for p in _images_in(imgs_dir):
        if p.stem not in masks:
            raise DataError(f"{p}: no mask {masks_dir}/{p.stem}.* for this image")
        out.append(Sample(p.stem, str(p), mask=str(masks[p.stem]), group=p.stem))
    if not out:
        raise DataError(f"{imgs_dir}: no images")
    return out


def read_image_csv_folder(root: str | Path, class_names: list[str]) -> list[Sample]:
    """An image folder with ``labels.csv`` (``image``, ``label``; label a class name or index)."""
    root = Path(root)
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise DataError(f"{root}: no labels.csv (columns image, label)")
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        if "image" not in r or "label" not in r:
            raise DataError(f"{csv_path}: needs columns image, label")
        lab = r["label"].strip()
        idx = class_names.index(lab) if lab in class_names else int(lab) if lab.isdigit() else -1
        if not 0 <= idx < len(class_names):
            raise DataError(
                f"{csv_path}: label {lab!r} of {r['image']} is not one of {class_names} or 0..{len(class_names) - 1}"
            )
        img = root / r["image"]
        if not img.is_file():
            img = root / "images" / r["image"]
        out.append(Sample(Path(r["image"]).stem, str(img), idx, group=r["image"]))
    return out


def read_msd_task05(root: str | Path, min_foreground: int = 1) -> list[Sample]:
    """MSD Task05 (prostate) 2D axial slices of ``training`` cases: channel 0 (T2) scaled to 0-255 per volume
    (1st-99th percentile), mask = label > 0, slices with at least ``min_foreground`` prostate pixels.
    ``group`` = the case, so a patient's slices stay together. A case without its label file: DataError."""
    import nibabel as nib

    root = Path(root)
    ds = root / "dataset.json"
    if not ds.is_file():
        raise DataError(f"{root}: no dataset.json (Medical Segmentation Decathlon layout)")
    try:
        training = json.loads(ds.read_text(encoding="utf-8"))["training"]
    except (json.JSONDecodeError, KeyError) as e:
        raise DataError(f"{ds}: not an MSD dataset.json with a `training` list ({e})") from e
    out = []
    for case in training:
        img_p, lab_p = root / case["image"], root / case.get("label", "")
        if not case.get("label") or not lab_p.is_file():
            raise DataError(f"{img_p}: NIfTI volume without its label ({lab_p if case.get('label') else 'no `label`'})")
        try:
            vol = np.asarray(nib.load(str(img_p)).dataobj, dtype=np.float32)
            lab = np.asarray(nib.load(str(lab_p)).dataobj)
        except Exception as e:  # nibabel raises various errors for broken files
            raise DataError(f"{img_p}: not a readable NIfTI volume ({e})") from e
        if vol.ndim == 4:
            vol = vol[..., 0]
        if vol.shape != lab.shape:
            raise DataError(f"{lab_p}: label shape {lab.shape} differs from its image {vol.shape}")
        lo, hi = np.percentile(vol, 1), np.percentile(vol, 99)
        scaled = np.clip((vol - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        stem = Path(case["image"]).name.removesuffix(".nii.gz").removesuffix(".nii")
        for z in range(vol.shape[2]):
            m = lab[:, :, z] > 0
            if m.sum() >= min_foreground:
                out.append(Sample(f"{stem}_z{z:03d}", scaled[:, :, z], mask=m, group=stem))
    if not out:
        raise DataError(f"{root}: no slice with prostate in any labelled case")
    return out


# -- synthetic tasks ------------------------------------------------------------------------------------------------
def synthetic_task(kind: str, n: int, size: int = 64, seed: int = 0) -> list[Sample]:
    """A small rendered task, marked synthetic: ``synthetic_cls`` (a plain vs a striped blob, round or elongated
    either way) or ``synthetic_seg`` (segment the blob). Deterministic from ``seed``.

    The classes differ in texture, not in shape: a linear probe on the built-in backbone's frozen features separates
    plain from striped blobs (AUC 0.89) but not round from elongated ones (0.53), so a shape task would only show that
    the frozen backbone cannot see it (docs/results/vision.md)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for i in range(n):
        bg = rng.uniform(0.2, 0.7, 3)
        img = bg[None, None, :] + rng.normal(0, 0.06, (size, size, 3))
        cx, cy = rng.uniform(0.3, 0.7, 2)
        label = int(rng.integers(0, 2))
        r = rng.uniform(0.12, 0.22)
        elongated = label == 1 if kind != "synthetic_cls" else bool(rng.integers(0, 2))
        rx, ry = (r * 1.6, r * 0.55) if elongated else (r, r)
        a = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        m = (u / rx) ** 2 + (v / ry) ** 2 <= 1
        fill = rng.uniform(0.5, 1.0, 3) * (1 + rng.normal(0, 0.05, (int(m.sum()), 3)))
        if kind == "synthetic_cls" and label == 1:  # dark stripes across the blob, about 5 px apart at 64 px
            fill = np.where((np.sin(u[m] * size * 1.2) > 0)[:, None], fill, fill * 0.4)
        img[m] = fill
        arr = np.clip(img * 255, 0, 255).astype(np.uint8)
        if kind == "synthetic_cls":
            out.append(Sample(f"synthetic_{i:05d}", arr, label=label, group=str(i)))
        else:
            out.append(Sample(f"synthetic_{i:05d}", arr, mask=m, group=str(i)))
    return out


# -- partitions -----------------------------------------------------------------------------------------------------
def _group_hash(group: str, seed: int) -> int:
    return zlib.crc32(f"{seed}/{group}".encode())


def dirichlet_sites(samples: list[Sample], num_sites: int, alpha: float, seed: int) -> list[int]:
    """Site index per sample: per class, the class's groups are spread over sites by Dirichlet(``alpha``) shares
    (label skew); a group (patient / lesion) goes to one site, by its first sample's label."""
    rng = np.random.default_rng(seed)
    first_label: dict[str, int] = {}
    for s in samples:
        first_label.setdefault(s.group, int(s.label or 0))
    site_of: dict[str, int] = {}
    for c in sorted(set(first_label.values())):
        groups = sorted((g for g, lab in first_label.items() if lab == c), key=lambda g: _group_hash(g, seed))
        shares = rng.dirichlet([alpha] * num_sites)
        cuts = (np.cumsum(shares)[:-1] * len(groups)).round().astype(int)
        for site, part in enumerate(np.split(np.array(groups, dtype=object), cuts)):
            for g in part:
                site_of[g] = site
    return [site_of[s.group] for s in samples]


def colour_clusters(samples: list[Sample], k: int, seed: int) -> list[int]:
    """Cluster index per sample by k-means on the mean and spread of each colour channel (a stand-in for centres
    in single-centre data; clusters ordered by size, largest first)."""
    from sklearn.cluster import KMeans

    feats = []
    for s in samples:
        a = load_rgb(s.image).astype(np.float32) / 255
        feats.append(np.concatenate([a.mean((0, 1)), a.std((0, 1))]))
    km = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(np.array(feats))
    order = [c for c, _ in Counter(km.labels_.tolist()).most_common()]
    remap = {c: i for i, c in enumerate(order)}
    return [remap[int(c)] for c in km.labels_]


def split_train_val(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Group-wise split (a group never spans train and val), deterministic from ``seed``."""
    val = [s for s in samples if _group_hash(s.group, seed) % 1000 < val_fraction * 1000]
    train = [s for s in samples if _group_hash(s.group, seed) % 1000 >= val_fraction * 1000]
    return train, val


def subsample(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """Keep ``fraction`` of the groups (at least one sample), deterministic from ``seed`` (the "5 % data" option)."""
    if fraction >= 1:
        return samples
    kept = [s for s in samples if _group_hash(s.group, seed + 7) % 10000 < fraction * 10000]
    return kept or samples[:1]


def check_classes(samples: list[Sample], class_names: list[str], source: str) -> None:
    """DataError naming ``source`` and the class when a class has no example (or a label is out of range)."""
    counts = Counter(s.label for s in samples)
    bad = [lab for lab in counts if lab is None or not 0 <= lab < len(class_names)]
    if bad:
        raise DataError(f"{source}: labels {bad} outside 0..{len(class_names) - 1}")
    empty = [c for i, c in enumerate(class_names) if counts.get(i, 0) == 0]
    if empty:
        raise DataError(
            f"{source}: class(es) {empty} have no example; every class needs training images (or drop the class)"
        )

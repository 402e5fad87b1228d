"""The built-in backbone: a small ViT pretrained self-supervised (contrastive, SimCLR) on public and rendered images.

Recipe (:data:`RECIPE`, rebuilt by ``python scripts/build_vision_backbone.py``): a ``ViTModel`` with a 4-layer,
128-wide, 4-head encoder (0.8 M parameters), 64 x 64 px input, 8 px patches (64 tokens). SimCLR: two augmented views
of every image in a batch of 64 (random resized crop of 25-100 % of the area, flips, 90-degree rotations, mild
brightness and contrast jitter, colour kept: with grayscale views and stronger jitter the probe lost 0.061 AUC on
RetinaMNIST, whose grades depend on colour), the features (final CLS + mean patch token, as the linear probe
and the vision heads read them) through a 2-layer projection head, and MONAI's ``ContrastiveLoss`` (NT-Xent,
temperature 0.2) pulling the two views of an image together against the other 126 views; 1,000 steps, AdamW, cosine
schedule; one CPU thread and deterministic algorithms, so the same inputs give the same bytes. The projection head is
dropped. Pretraining images:

- RetinaMNIST and BreastMNIST train splits (MedMNIST v2, CC BY 4.0, attribution in the model card), 28 px upsampled;
- images the project renders (:func:`render_images`: smooth colour fields, textured blobs, vessel-like curves,
  circular fields of view), deterministic from a seed.

HAM10000 (CC BY-NC 4.0) and Kvasir-SEG (research and education only) are *not* used: their licences do not allow
shipping derived weights with a production application. The saved folder holds the encoder as a plain ``ViTModel``
(``config.json``, ``model.safetensors``, ``preprocessor_config.json``), ``build_info.json`` (inputs' SHA-256, loss
curve, versions) and ``MODEL_CARD.md``. A masked-autoencoder recipe (``ViTMAEForPreTraining``, 600 steps) gave frozen
features below random weights on both probe tasks, hence the contrastive one (docs/results/vision.md).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmrg.errors import ConfigError
from fedmrg.vision.backbones import BUILTIN_DIR, builtin_backbone_dir  # noqa: F401  (re-exported)

RECIPE: dict[str, Any] = {
    "objective": "simclr",
    "image_size": 64,
    "patch_size": 8,
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 512,
    "projection_hidden": 512,
    "projection_dim": 128,
    "temperature": 0.2,
    "crop_area": [0.25, 1.0],
    "crop_log_aspect": 0.3,
    "brightness": 0.1,
    "contrast": [0.85, 1.15],
    "grayscale_p": 0.0,
    "num_rendered": 3000,
    "medmnist_files": ["retinamnist_trainval.npz", "breastmnist_trainval.npz"],
    "steps": 1000,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "warmup_steps": 50,
    "seed": 0,
}


# -- images ---------------------------------------------------------------------------------------------------------
def render_images(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` rendered RGB images ``(n, size, size, 3)`` uint8: colour fields, textured blobs, curves, round fields."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = np.zeros((size, size, 3), np.float32)
        base = rng.uniform(0.1, 0.9, 3)
        for c in range(3):  # smooth colour field: a few low-frequency waves
            f = sum(
                rng.uniform(-0.15, 0.15)
                * np.sin(
                    2 * math.pi * (rng.uniform(0.3, 2.5) * xx * math.cos(a) + rng.uniform(0.3, 2.5) * yy * math.sin(a))
                    + rng.uniform(0, 6.3)
                )
                for a in rng.uniform(0, math.pi, 3)
            )
            img[..., c] = base[c] + f
        for _ in range(rng.integers(1, 5)):  # textured blobs with soft edges
            cx, cy = rng.uniform(0.1, 0.9, 2)
            rx, ry = rng.uniform(0.05, 0.35, 2)
            a = rng.uniform(0, math.pi)
            dx, dy = xx - cx, yy - cy
            u, v = dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)
            r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
            w = 1.0 / (1.0 + np.exp((r - 1.0) * rng.uniform(4, 20)))
            tex = 1 + rng.uniform(0, 0.3) * np.sin(2 * math.pi * rng.uniform(3, 12) * (xx + yy * rng.uniform(-1, 1)))
            col = rng.uniform(0, 1, 3)
            img = img * (1 - w[..., None]) + (col[None, None, :] * tex[..., None]) * w[..., None]
        for _ in range(rng.integers(0, 4)):  # vessel-like curves
            a, b, ph, y0 = rng.uniform(0.5, 4), rng.uniform(0.05, 0.3), rng.uniform(0, 6.3), rng.uniform(0.1, 0.9)
            d = np.abs(yy - (y0 + b * np.sin(2 * math.pi * a * xx + ph)))
            if rng.random() < 0.5:
                d = d.T
            w = np.exp(-((d / rng.uniform(0.005, 0.02)) ** 2))
            img = img * (1 - w[..., None]) + rng.uniform(0, 1, 3)[None, None, :] * w[..., None]
        if rng.random() < 0.4:  # circular field of view (fundus / endoscope)
            r = np.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
            img = img * (1.0 / (1.0 + np.exp((r - rng.uniform(0.38, 0.5)) * 60)))[..., None]
        img = img + rng.normal(0, rng.uniform(0.0, 0.05), img.shape)
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def _resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """``(n, h, w[, 3])`` uint8 -> ``(n, size, size, 3)`` uint8 (bilinear, grayscale repeated to RGB)."""
    t = torch.from_numpy(images).float()
    if t.dim() == 3:
        t = t.unsqueeze(-1).expand(-1, -1, -1, 3)
    t = torch.nn.functional.interpolate(t.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pretraining_images(data_root: Path, recipe: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The pretraining pool ``(n, S, S, 3)`` uint8 and a description of its sources (files with SHA-256)."""
    s = recipe["image_size"]
    parts, sources = [], {}
    for name in recipe["medmnist_files"]:
        path = data_root / "medmnist" / name
        if not path.is_file():
            raise ConfigError(f"{path}: missing; the built-in backbone's recipe pretrains on it (--data-root)")
        with np.load(path) as d:
            if "train_images" not in d.files:
                raise ConfigError(f"{path}: no `train_images` array")
            imgs = d["train_images"]
        parts.append(_resize_uint8(imgs, s))
        sources[f"medmnist/{name}:train_images"] = {"count": int(len(imgs)), "sha256": sha256(path)}
    rendered = render_images(recipe["num_rendered"], s, recipe["seed"])
    parts.append(rendered)
    sources["rendered"] = {
        "count": int(len(rendered)),
        "seed": recipe["seed"],
        "sha256": hashlib.sha256(rendered.tobytes()).hexdigest(),
    }
    return np.concatenate(parts), sources


# -- pretraining ----------------------------------------------------------------------------------------------------
def vit_config(recipe: dict[str, Any]):
    from transformers import ViTConfig

    keys = ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    return ViTConfig(**{k: recipe[k] for k in keys})


def augment(x: torch.Tensor, recipe: dict[str, Any], g: torch.Generator) -> torch.Tensor:
    """One SimCLR view of a batch ``x`` ``(B, 3, S, S)`` in [0, 1]: crop-resize, flip, rot90, jitter, grayscale;
    returns ``(B, 3, S, S)`` normalised to [-1, 1]. Written with torch ops on the batch and one seeded generator (MONAI's
    random transforms draw from per-transform NumPy states per sample), so that a build is reproducible bit for bit."""
    n, _, size, _ = x.shape
    lo, hi = recipe["crop_area"]
    out = torch.empty_like(x)
    for i in range(n):
        area = float(torch.empty(1).uniform_(lo, hi, generator=g))
        aspect = math.exp(float(torch.empty(1).uniform_(-recipe["crop_log_aspect"], recipe["crop_log_aspect"],
                                                         generator=g)))  # fmt: skip
        w = min(max(round(size * math.sqrt(area * aspect)), 8), size)
        h = min(max(round(size * math.sqrt(area / aspect)), 8), size)
        x0 = int(torch.randint(0, size - w + 1, (1,), generator=g))
        y0 = int(torch.randint(0, size - h + 1, (1,), generator=g))
        crop = x[i : i + 1, :, y0 : y0 + h, x0 : x0 + w]
        out[i] = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
    flip = torch.rand(n, generator=g) < 0.5
    out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    out = torch.rot90(out, int(torch.randint(0, 4, (1,), generator=g)), dims=(2, 3))
    b = recipe["brightness"]
    shift = torch.empty(n, 1, 1, 1).uniform_(-b, b, generator=g)
    scale = torch.empty(n, 1, 1, 1).uniform_(*recipe["contrast"], generator=g)
    mean = out.mean((1, 2, 3), keepdim=True)
    out = (out - mean) * scale + mean + shift
    gray = torch.rand(n, generator=g) < recipe["grayscale_p"]
    out = torch.where(gray[:, None, None, None], out.mean(1, keepdim=True).expand_as(out), out)
    return out.clamp(0, 1).sub(0.5).div(0.5)


def cls_and_mean_patch(vit: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(B, 2D)`` from pixels ``(B, 3, S, S)``: final CLS token and mean patch token, with autograd (pretraining)
    or without (:func:`vit_features`, the probe)."""
    h = vit(pixel_values=x).last_hidden_state
    return torch.cat([h[:, 0], h[:, 1:].mean(1)], 1)


def pretrain(images: np.ndarray, recipe: dict[str, Any], log_every: int = 50) -> tuple[torch.nn.Module, list]:
    """SimCLR pretraining (:func:`fedmrg.training.contrastive.pretrain_contrastive`) on ``images`` ``(n, S, S, 3)``
    uint8; returns the ``ViTModel`` (eval mode) and the loss log (NT-Xent, nats; 4.84 at chance for a batch of 64)."""
    from transformers import ViTModel

    from fedmrg.training.contrastive import ContrastiveSchedule, pretrain_contrastive

    torch.manual_seed(recipe["seed"])
    vit = ViTModel(vit_config(recipe), add_pooling_layer=False)
    d = recipe["hidden_size"]
    head = torch.nn.Sequential(torch.nn.Linear(2 * d, recipe["projection_hidden"]), torch.nn.GELU(),
                               torch.nn.Linear(recipe["projection_hidden"], recipe["projection_dim"]))  # fmt: skip
    vit.train()
    schedule = ContrastiveSchedule(steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                                   warmup_steps=recipe["warmup_steps"], weight_decay=recipe["weight_decay"],
                                   temperature=recipe["temperature"], clip_norm=1.0)  # fmt: skip
    pool = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float().div(255)
    log: list[dict[str, Any]] = []

    def on_log(step: int, loss: float, seconds: float) -> None:
        log.append({"step": step, "loss": round(loss, 5), "seconds": round(seconds, 1)})
        print(f"step {step}/{schedule.steps} loss {loss:.4f} ({seconds:.0f} s)", flush=True)

    pretrain_contrastive(lambda x: cls_and_mean_patch(vit, x), [vit], head, pool,
                         lambda x, g: augment(x, recipe, g), schedule, torch.Generator().manual_seed(recipe["seed"] + 1),
                         log_every=log_every, on_log=on_log)  # fmt: skip
    return vit.eval(), log


def save_backbone(vit: torch.nn.Module, out_dir: Path, info: dict[str, Any]) -> None:
    """Write the ViT folder (``save_pretrained``), ``preprocessor_config.json`` and ``build_info.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    vit.save_pretrained(str(out_dir))
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(
            {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": vit.config.image_size}, indent=1
        )
        + "\n"
    )
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


# -- linear probe ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def vit_features(vit: torch.nn.Module, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Frozen features ``(n, 2D)``: final CLS token and mean patch token, for images ``(n, S, S, 3)`` uint8."""
    vit.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i : i + batch]).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
        out.append(cls_and_mean_patch(vit, x).numpy())
    return np.concatenate(out)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p[:, 1]) if p.shape[1] == 2 else roc_auc_score(y, p, multi_class="ovr"))


def probe_probabilities(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Standardised features + logistic regression (C 0.1); class probabilities ``(n_test, n_classes)``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(sc.transform(train_x), train_y)
    return clf.predict_proba(sc.transform(test_x))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> dict[str, float]:
    """Standardised features + logistic regression; accuracy and (macro one-vs-rest) AUC on the test set."""
    return probe_scores(train_y, test_y, probe_probabilities(train_x, train_y, test_x))


def probe_scores(train_y: np.ndarray, test_y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Accuracy and AUC of probe probabilities ``p`` (N, C), columns in the sorted training classes' order."""
    return {"accuracy": float((np.unique(train_y)[p.argmax(1)] == test_y).mean()), "auc": _auc(test_y, p)}


def paired_auc_gain(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, n_boot: int = 1000) -> dict[str, float]:
    """AUC(a) - AUC(b) on the same test images and its 95 % interval from a paired bootstrap of those images (seed
    0; a resample missing a class is drawn again)."""
    rng = np.random.default_rng(0)
    gains: list[float] = []
    while len(gains) < n_boot:
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) < len(np.unique(y)):
            continue
        gains.append(_auc(y[i], p_a[i]) - _auc(y[i], p_b[i]))
    lo, hi = np.percentile(gains, [2.5, 97.5])
    return {"auc_gain": _auc(y, p_a) - _auc(y, p_b), "ci95": [float(lo), float(hi)]}


def _ham_probe_data(data_root: Path, size: int, limit: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HAM10000 melanoma-vs-rest: images ``(n, S, S, 3)``, labels, and a lesion-grouped train mask (70 %)."""
    import csv
    import zlib

    from PIL import Image

    meta = data_root / "ham10000" / "HAM10000_metadata.csv"
    with meta.open(newline="", encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["image_id"])
    rows = [r for r in rows if (data_root / "ham10000" / "images" / f"{r['image_id']}.jpg").is_file()][:limit]
    imgs = np.stack(
        [
            np.asarray(
                Image.open(data_root / "ham10000" / "images" / f"{r['image_id']}.jpg")
                .convert("RGB")
                .resize((size, size), Image.BILINEAR)
            )
            for r in rows
        ]
    )
    y = np.array([int(r["dx"] == "mel") for r in rows])
    train = np.array([zlib.crc32(r["lesion_id"].encode()) % 10 < 7 for r in rows])
    return imgs, y, train


def run_probes(backbone_dir: Path, data_root: Path) -> dict[str, Any]:
    """Linear probes of the saved backbone vs the same architecture at random init (seed 0).

    Tasks: RetinaMNIST 5-grade (train -> val split of the ``.npz``) and HAM10000 melanoma vs rest (first 3000 images by
    id, 70/30 split grouped by ``lesion_id``). Features: final CLS + mean patch token of the frozen encoder.
    """
    from transformers import ViTModel

    from fedmrg.vision.backbones import load_vit

    pre, _ = load_vit(backbone_dir)
    torch.manual_seed(0)
    rand = ViTModel(pre.config, add_pooling_layer=False).eval()
    size = int(pre.config.image_size)
    with np.load(data_root / "medmnist" / "retinamnist_trainval.npz") as d:
        rtr, rtr_y = _resize_uint8(d["train_images"], size), d["train_labels"].reshape(-1)
        rva, rva_y = _resize_uint8(d["val_images"], size), d["val_labels"].reshape(-1)
    h_img, h_y, h_tr = _ham_probe_data(data_root, size)
    out: dict[str, Any] = {}
    probs: dict[str, dict[str, np.ndarray]] = {}
    for name, vit in (("builtin", pre), ("random_init", rand)):
        f = vit_features(vit, h_img)
        probs[name] = {"retinamnist_val": probe_probabilities(vit_features(vit, rtr), rtr_y, vit_features(vit, rva)),
                       "ham10000_melanoma": probe_probabilities(f[h_tr], h_y[h_tr], f[~h_tr])}  # fmt: skip
    truth = {"retinamnist_val": (rtr_y, rva_y), "ham10000_melanoma": (h_y[h_tr], h_y[~h_tr])}
    for name, by_task in probs.items():
        out[name] = {task: probe_scores(*truth[task], p) for task, p in by_task.items()}
    out["builtin_minus_random"] = {task: paired_auc_gain(y, probs["builtin"][task], probs["random_init"][task])
                                   for task, (_, y) in truth.items()}  # fmt: skip
    out["protocol"] = (
        "frozen features (CLS + mean patch), StandardScaler + LogisticRegression(C=0.1); RetinaMNIST "
        f"train {len(rtr)} -> val {len(rva)}; HAM10000 melanoma vs rest, {int(h_tr.sum())} train / "
        f"{int((~h_tr).sum())} test images, split by lesion_id"
    )
    return out


def render_model_card(info: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` of the built-in backbone from its ``build_info.json``."""
    r = info["recipe"]
    lines = [
        "# fedmrg built-in vision backbone (SimCLR-pretrained small ViT)",
        "",
        "Rebuild: `python scripts/build_vision_backbone.py --probe` (one CPU thread, deterministic; same inputs and "
        "versions give the same `model.safetensors`, SHA-256 below).",
        "",
        f"- architecture: `ViTModel`, {r['num_hidden_layers']} layers, width {r['hidden_size']}, "
        f"{r['num_attention_heads']} heads, MLP {r['intermediate_size']}, {r['image_size']} px input, "
        f"{r['patch_size']} px patches",
        f"- pretraining: SimCLR (two views per image; random resized crop of {r['crop_area'][0]:.0%}-"
        f"{r['crop_area'][1]:.0%} of the area, flips, 90-degree rotations, brightness +-{r['brightness']}, contrast "
        f"{r['contrast'][0]}-{r['contrast'][1]}, grayscale p {r['grayscale_p']}), MONAI `ContrastiveLoss` (NT-Xent, "
        f"temperature {r['temperature']}) on a {r['projection_hidden']}-{r['projection_dim']} projection of the CLS + "
        f"mean patch features (dropped after pretraining), {r['steps']} steps x {r['batch_size']} images, AdamW lr "
        f"{r['lr']} (warm-up {r['warmup_steps']}, cosine), weight decay {r['weight_decay']}, seed {r['seed']}",
        f"- build time: {info.get('build_seconds', '?')} s on one thread of a 2-core CPU machine; versions "
        f"{info.get('versions')}",
        f"- model.safetensors SHA-256: `{info.get('model_sha256', '?')}`",
        "",
        "## Data and licences",
        "",
        "| source | images | licence |",
        "|---|---|---|",
    ]
    for name, s in info["sources"].items():
        lic = (
            "CC BY 4.0 - MedMNIST v2 (Yang et al., Scientific Data 2023); RetinaMNIST from DeepDRiD, BreastMNIST "
            "from Al-Dhabyani et al. 2020"
            if name.startswith("medmnist")
            else "rendered by this project (no licence constraint)"
        )
        lines.append(f"| `{name}` (sha256 `{s['sha256'][:16]}...`) | {s['count']} | {lic} |")
    lines += [
        "",
        "HAM10000 (CC BY-NC 4.0) and Kvasir-SEG (research and education only) are not used for pretraining: "
        "their licences do not allow shipping derived weights in a production application.",
        "",
    ]
    log = info.get("loss_log") or []
    if log:
        lines += [
            f"NT-Xent loss: {log[0]['loss']} at step {log[0]['step']} -> {log[-1]['loss']} at step {log[-1]['step']}.",
            "",
        ]
    probe = info.get("linear_probe")
    if probe:
        lines += [
            "## Is it worth freezing? Linear probe",
            "",
            probe["protocol"],
            "",
            "| backbone | RetinaMNIST acc | RetinaMNIST AUC | HAM10000 melanoma acc | HAM10000 melanoma AUC |",
            "|---|---|---|---|---|",
        ]
        for name in ("builtin", "random_init"):
            p = probe[name]
            lines.append(
                f"| {name} | {p['retinamnist_val']['accuracy']:.3f} | {p['retinamnist_val']['auc']:.3f} | "
                f"{p['ham10000_melanoma']['accuracy']:.3f} | {p['ham10000_melanoma']['auc']:.3f} |"
            )
        lines.append("")
        for task, gain in probe.get("builtin_minus_random", {}).items():
            lo, hi = gain["ci95"]
            lines.append(
                f"- {task}: AUC built-in - random {gain['auc_gain']:+.3f} (95 % paired bootstrap interval "
                f"{lo:+.3f} to {hi:+.3f})"
            )
        lines.append("")
    lines += [
        "## Limits",
        "",
        "Small and briefly trained on low-resolution images: a starting point that runs on a CPU, "
        "not a foundation model. Give a real checkpoint (`--backbone DIR`) when you have one.",
        "",
    ]
    return "\n".join(lines)

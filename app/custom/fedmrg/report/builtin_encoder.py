"""A pretrained start for the built-in ResNet encoder: self-supervised (SimCLR) on chest radiographs the project renders.

The paper's encoder starts from ImageNet weights; ours cannot be downloaded, and a random start leaves the diagnosis
head nothing to read in a short federated run. This module pretrains the built-in encoder of
:func:`fedmrg.report.builtin.ensure_builtin_models` without labels:

- images: ``num_images`` frontal radiographs drawn by :func:`fedmrg.data.synthetic.renderer.render_study_image` from
  findings sampled by :func:`fedmrg.data.synthetic.sampling.sample_findings`, with seeds of their own
  (``PRETRAIN_SEED_OFFSET + i``): no study of any prepared data set, no evaluation split, and the findings are not
  used as targets (only to vary what is drawn);
- objective: SimCLR's NT-Xent (Chen et al. 2020) between two random views of each image (random resized crop,
  small rotation, brightness / contrast / gamma jitter, Gaussian noise, all batched in torch), through a two-layer
  projection head that is discarded afterwards; the loop is the one the vision system's built-in backbone uses
  (:mod:`fedmrg.training.contrastive`);
- output: a Hugging Face ``ResNetModel`` folder, cached under ``<cache>/builtin-ssl/<hash>/`` (hash of the recipe
  and of the base encoder's weights) with a ``manifest.json`` written last; ``encoder.path: builtin-ssl`` in a run
  configuration resolves to it (:mod:`fedmrg.report.run_config`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmrg.errors import FedMRGError

#: Seeds of pretraining renders start here (prepared synthetic data sets use small study seeds).
PRETRAIN_SEED_OFFSET = 7_000_000
MANIFEST = "manifest.json"
#: part of the cache key: raised whenever the pretraining code changes the weights it builds for the same recipe
BUILD_VERSION = 2
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SSLRecipe:
    """Everything that determines the pretrained encoder (hashed into its cache key).

    Attributes:
        num_images: rendered images in the pretraining pool.
        image_size: side of the rendered and trained images, pixels.
        steps: AdamW steps; batch_size: images per step (2 views each).
        lr: peak learning rate (cosine decay, 5 % warm-up); weight_decay: AdamW's.
        temperature: NT-Xent temperature; proj_dim: projection head output width.
        augment_strength: scale of every view perturbation (:func:`random_views`). 40 steps of batch 16 on 64
            renders at 48 px: NT-Xent 3.42 -> 3.17 at 1.0, 2.91 -> 1.25 at 0.3 (chance 3.43).
        seed: drives the renders, the views and the batches.
    """

    num_images: int = 512
    image_size: int = 64
    steps: int = 100
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    proj_dim: int = 64
    augment_strength: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_images", "image_size", "steps", "batch_size", "proj_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SSLRecipe.{name} must be an int >= 1, got {v!r}")
        if self.image_size < 32:
            raise ValueError(f"SSLRecipe.image_size must be >= 32, got {self.image_size}")
        if self.batch_size < 2:
            raise ValueError("SSLRecipe.batch_size must be >= 2 (NT-Xent needs negatives)")


def render_pool(num_images: int, image_size: int, seed: int, *, progress: bool = False) -> torch.Tensor:
    """``num_images`` rendered radiographs, (N, 1, S, S) float32 in [0, 1] (labels drawn and discarded)."""
    from fedmrg.data.synthetic.renderer import render_study_image
    from fedmrg.data.synthetic.sampling import sample_findings

    out = np.empty((num_images, 1, image_size, image_size), dtype=np.float32)
    for i in range(num_images):
        img_seed = PRETRAIN_SEED_OFFSET + seed * 1_000_003 + i
        labels = sample_findings(np.random.default_rng(img_seed))
        view = "AP" if (img_seed % 5) == 0 else "PA"
        out[i, 0] = render_study_image(labels, seed=img_seed, size=image_size, view=view) / 255.0
        if progress and (i + 1) % 256 == 0:
            print(f"[fedmrg builtin-ssl] rendered {i + 1}/{num_images}", file=sys.stderr, flush=True)
    return torch.from_numpy(out)


def random_views(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """One random view of each image: (B, 1, S, S) in [0, 1] -> (B, 3, S, S) ImageNet-normalised float32.

    ``strength`` scales every perturbation (crop, rotation, gamma, contrast, brightness, noise); 1 = the recipe's.
    """
    b, _, s, _ = x.shape
    k = float(strength)
    scale = 1 - torch.empty(b).uniform_(0, 0.3 * k, generator=gen)  # side fraction of the crop
    angle = torch.empty(b).uniform_(-8 * k, 8 * k, generator=gen) * math.pi / 180
    shift = (1 - scale)[:, None] * torch.empty(b, 2).uniform_(-1, 1, generator=gen)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (b, 1, s, s), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gamma = torch.exp(torch.empty(b, 1, 1, 1).uniform_(-0.2 * k, 0.2 * k, generator=gen))
    v = v.clamp(0, 1) ** gamma
    contrast = 1 + torch.empty(b, 1, 1, 1).uniform_(-0.2 * k, 0.2 * k, generator=gen)
    bright = torch.empty(b, 1, 1, 1).uniform_(-0.05 * k, 0.05 * k, generator=gen)
    mean = v.mean(dim=(2, 3), keepdim=True)
    v = (v - mean) * contrast + mean + bright
    v = v + torch.randn(v.shape, generator=gen) * torch.empty(b, 1, 1, 1).uniform_(0, 0.03 * k, generator=gen)
    v = v.clamp(0, 1).expand(-1, 3, -1, -1)
    m = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    sd = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    return (v - m) / sd


def pretrain_encoder(encoder: nn.Module, images: torch.Tensor, recipe: SSLRecipe, *, progress: bool = False) -> dict:
    """SimCLR-train ``encoder`` (a HF ``ResNetModel``) in place on ``images`` (N, 1, S, S) with the shared loop
    (:func:`fedmrg.training.contrastive.pretrain_contrastive`, its pooled output through a projection head, 5 %
    warm-up); returns statistics."""
    from fedmrg.training.contrastive import ContrastiveSchedule, pretrain_contrastive

    width = int(encoder.config.hidden_sizes[-1])
    head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, recipe.proj_dim))
    schedule = ContrastiveSchedule(steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr,
                                   warmup_steps=recipe.steps // 20, weight_decay=recipe.weight_decay,
                                   temperature=recipe.temperature)  # fmt: skip

    def on_log(step: int, loss: float, seconds: float) -> None:
        print(f"[fedmrg builtin-ssl] step {step}/{recipe.steps}: NT-Xent {loss:.3f}", file=sys.stderr, flush=True)

    encoder.train()
    t0 = time.perf_counter()
    losses = pretrain_contrastive(
        lambda v: encoder(pixel_values=v).pooler_output.flatten(1), [encoder], head, images,
        lambda x, g: random_views(x, g, recipe.augment_strength), schedule, torch.Generator().manual_seed(recipe.seed),
        log_every=max(1, recipe.steps // 10) if progress else 0, on_log=on_log,
    )  # fmt: skip
    encoder.eval()
    return {
        "first_loss": losses[0],
        "final_loss": float(np.mean(losses[-20:])),
        "chance_loss": math.log(2 * recipe.batch_size - 1),
        "seconds": time.perf_counter() - t0,
    }


def _weights_digest(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()[:16]


def ensure_ssl_encoder(
    base_encoder_dir: str | Path,
    cache_root: str | Path | None = None,
    *,
    recipe: SSLRecipe | None = None,
    progress: bool = True,
    lock_timeout: float = 3600.0,
) -> Path:
    """The folder of the SimCLR-pretrained copy of the encoder in ``base_encoder_dir``, building it on first use.

    Safe under concurrency like :func:`fedmrg.report.builtin.ensure_builtin_models` (file lock, atomic rename, manifest
    written last). Cost: rendering ``num_images`` plus ``steps`` steps of 2 x ``batch_size`` images through the encoder.
    """
    from filelock import FileLock, Timeout
    from transformers import ResNetModel

    from fedmrg.paths import cache_dir

    recipe = recipe or SSLRecipe()
    base_dir = Path(base_encoder_dir)
    if not (base_dir / "model.safetensors").is_file():
        raise FedMRGError(f"{base_dir}: no model.safetensors; expected the built-in encoder folder")
    spec = json.dumps(
        {"recipe": asdict(recipe), "base": _weights_digest(base_dir), "build": BUILD_VERSION}, sort_keys=True
    )
    key = hashlib.sha256(spec.encode()).hexdigest()[:16]
    root = (Path(cache_root) if cache_root is not None else cache_dir()) / "builtin-ssl"
    final = root / key
    if (final / MANIFEST).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f"{key}.lock"))
    try:
        lock.acquire(timeout=lock_timeout)
    except Timeout:
        raise FedMRGError(f"timed out waiting for another process to build {final} ({lock.lock_file})") from None
    try:
        if (final / MANIFEST).is_file():
            return final
        shutil.rmtree(final, ignore_errors=True)
        tmp = root / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if progress:
                print(f"[fedmrg builtin-ssl] pretraining the built-in encoder into {final} ...", file=sys.stderr)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(recipe.seed)
                encoder = ResNetModel.from_pretrained(str(base_dir))
                t0 = time.perf_counter()
                images = render_pool(recipe.num_images, recipe.image_size, recipe.seed, progress=progress)
                render_s = time.perf_counter() - t0
                stats = pretrain_encoder(encoder, images, recipe, progress=progress)
            encoder.save_pretrained(str(tmp))
            manifest = {"recipe": asdict(recipe), "base_encoder": str(base_dir), "base_digest": _weights_digest(base_dir),
                        "render_seconds": render_s, **stats}  # fmt: skip
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final
    finally:
        lock.release()

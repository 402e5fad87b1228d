"""Build the built-in vision backbone of ``fedmrg.vision`` (SimCLR-pretrained small ViT) and its model card.

    python scripts/build_vision_backbone.py [--data-root ../shared/data] [--out DIR] [--probe]

Default ``--out`` is the package folder ``app/custom/fedmrg/vision/builtin_backbone`` (committed, ~3 MB). The build
runs on one CPU thread with deterministic algorithms: the same inputs (checked by SHA-256 in ``build_info.json``)
give the same ``model.safetensors`` bytes with the same torch / transformers versions. ``--probe`` adds the linear-
probe measurement (built-in vs the same architecture at random init) to ``build_info.json`` and the model card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedmrg.vision.builtin import (
    BUILTIN_DIR,
    RECIPE,
    pretrain,
    pretraining_images,
    render_model_card,
    run_probes,
    save_backbone,
    sha256,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"),
                    help="folder holding medmnist/ (default: ../shared/data next to the project)")
    ap.add_argument("--out", default=str(BUILTIN_DIR), help="output folder (default: the package's builtin_backbone)")
    ap.add_argument("--probe", action="store_true", help="also run the linear probes (needs ham10000/ and medmnist/)")
    ap.add_argument("--probe-only", action="store_true", help="only the probes, on the backbone already in --out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    data_root = Path(args.data_root)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if not args.probe_only:
        t0 = time.time()
        images, sources = pretraining_images(data_root, RECIPE)
        print(f"pretraining pool: {len(images)} images", flush=True)
        vit, log = pretrain(images, RECIPE)
        info = {"recipe": RECIPE, "sources": sources, "loss_log": log, "build_seconds": round(time.time() - t0, 1),
                "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                             "numpy": np.__version__}}
        save_backbone(vit, out, info)
        info["model_sha256"] = sha256(out / "model.safetensors")
        (out / "build_info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        print(f"saved {out} (model.safetensors sha256 {info['model_sha256']})", flush=True)
    if args.probe or args.probe_only:
        info = json.loads((out / "build_info.json").read_text())
        info["linear_probe"] = run_probes(out, data_root)
        (out / "build_info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        print(json.dumps(info["linear_probe"], indent=1))
    (out / "MODEL_CARD.md").write_text(render_model_card(json.loads((out / "build_info.json").read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

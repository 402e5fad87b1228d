"""What each method sends per round: shared tensors and bytes of the FedMRG model, per method, and the ratio to
``full`` (whole decoder shared), all measured in one run on the same decoder and encoder.

.venv/bin/python scripts/report_shared_sizes.py --decoder /path/to/hf-causal-lm [--encoder-preset resnet-101]
    [--mode auto] [--methods fedmrg fedlora fedprompt fedprefix fedvera full]

The decoder directory is any local Hugging Face causal LM (e.g. the built-in tiny decoder or a Llama-2-7B copy).
Builds each model once on CPU; a 7B decoder needs about 30 GiB of RAM per build in float32 (use --dtype bfloat16).
"""

from __future__ import annotations

import argparse
import time

import torch

from fedmrg.report.config import METHODS, DecoderConfig, EncoderConfig, FedMRGConfig
from fedmrg.report.model import FedMRGModel
from fedmrg.report.shared_state import get_private_state, get_shared_state, state_nbytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", required=True, help="local Hugging Face causal-LM directory")
    parser.add_argument(
        "--encoder-preset", default="resnet-101", choices=["resnet-tiny", "resnet-18", "resnet-50", "resnet-101"]
    )
    parser.add_argument("--mode", default="auto", choices=["auto", "llm", "clm"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()

    rows = []
    for method in args.methods:
        mode = "auto" if method == "full" and args.mode == "llm" else args.mode
        cfg = FedMRGConfig(
            decoder=DecoderConfig(path=args.decoder, mode=mode, dtype=args.dtype),
            encoder=EncoderConfig(preset=args.encoder_preset),
            method=method,
        )
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = FedMRGModel(cfg)
        shared, private = get_shared_state(model), get_private_state(model)
        by_part: dict[str, int] = {}
        for key, value in shared.items():
            part = key.split(".", 1)[0]
            by_part[part] = by_part.get(part, 0) + value.numel()
        rows.append(
            (method, model.decoder_mode, state_nbytes(shared), state_nbytes(private), by_part, time.perf_counter() - t0)
        )
        del model

    full = next((r[2] for r in rows if r[0] == "full"), None)
    print(
        f"{'method':<10} {'mode':<4} {'shared MB':>10} {'private MB':>10} {'/ full':>8} {'build s':>8}  shared parameters by part"
    )
    for method, mode, shared_b, private_b, parts, secs in rows:
        ratio = f"{shared_b / full:.4f}" if full else "-"
        detail = ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in parts.items())
        print(
            f"{method:<10} {mode:<4} {shared_b / 2**20:>10.2f} {private_b / 2**20:>10.2f} {ratio:>8} {secs:>8.1f}  {detail}"
        )
    print("bytes counted as float32, the wire format of the FL layer; `private` = the specialized adapter S2 (stays)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

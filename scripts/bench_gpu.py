"""GPU benchmark: one FedMRG client step at Llama-2-7B shape, and the vision system's polyp job at SAM ViT-B shape.

Issue 16 (``report``): the packaged ``llama2-7b.yaml`` model (ResNet-101 encoder at 224 px, projector, diagnosis
head, generic + specialized LoRA r=16 on q/v) with a decoder of Llama-2-7B's architecture (the packaged
``configs/shapes/llama-2-7b/config.json``) built with random weights directly on the GPU in bfloat16; nothing is
downloaded. Steps run through :class:`fedmrg.report.trainer.LocalTrainer` (``fedmrg.training.run_round``: G phase, then
S phase, each with its backward and AdamW step; bf16 autocast). Measured per gradient-checkpointing setting:

- seconds per step: median over ``--repeats`` of (round of ``1 + steps`` steps - round of 1 step) / ``steps``, so a
  round's fixed costs (optimizer set-up, memory-bank features) cancel;
- tokens per step: batch x decoder sequence length (visual tokens + diagnosis prompt + report, padded), read from
  the decoder's inputs; tokens per second = that / seconds per step;
- model FLOPs per step: ``torch.utils.flop_counter.FlopCounterMode`` over a 2-step round minus a 1-step round,
  without checkpointing (recomputation is not model work), and the estimate ``12 * N_decoder * tokens`` (four decoder
  forwards of 2N per token: G student, G teacher, S student, S teacher; two backwards of 2N per token through the
  frozen weights; attention and the encoder not included);
- MFU = model FLOPs per step / seconds per step / peak (the datasheet's 989 TFLOP/s dense bf16 of an H100/H200 SXM,
  and the rate of an 8192^3 bf16 matmul measured in the same run);
- peak GPU memory (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``) over the setting's rounds.

Issue 15 (``vision``): :class:`fedmrg.vision.learner.VisionLearner` in-process (no FLARE: the timing is the local
round), task ``synthetic_seg`` (the vision system's synthetic polyp-like generator; no data travels to the device),
method ``prompt_gen``, on a random-init ``SamModel`` of SAM ViT-B's shape (``SamConfig()`` defaults: 768 wide,
12 layers, 1024 px, windowed + 4 global layers) saved to a folder and given as ``backbone``. Measured: seconds per
local round (median after one warm-up round) and peak GPU memory.

``--tiny`` runs both at toy shapes on the CPU (a self-test; its numbers mean nothing).

Usage::

    PYTHONPATH=app/custom python scripts/bench_gpu.py --out $OUT            # on the GPU machine
    PYTHONPATH=app/custom python scripts/bench_gpu.py --tiny --out /tmp/b    # CPU self-test
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

#: Dense bf16 peak of an H100 / H200 SXM (NVIDIA datasheet, without sparsity), FLOP/s.
DATASHEET_BF16_PEAK = 989.4e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def matmul_rate(device: torch.device, n: int, reps: int = 10) -> float:
    """FLOP/s of an ``n x n x n`` bf16 matmul on random data (mean of ``reps`` after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


# ---------------------------------------------------------------------------------------------------------- report
def _report_texts(n: int, min_words: int, seed: int) -> list[str]:
    """``n`` reports of canonical sentences, each at least ``min_words`` words (so every one hits the token cap)."""
    from fedmrg.report.builtin_corpus import neutral_reports

    pool = neutral_reports(4 * n + 40, seed=seed)
    out, i = [], 0
    for _ in range(n):
        text = ""
        while len(text.split()) < min_words:
            text = f"{text} {pool[i % len(pool)]}".strip()
            i += 1
        out.append(text)
    return out


def build_report_model(tiny: bool, device: torch.device, work: Path) -> tuple[Any, Any, Any]:
    """(FedMRGModel, TrainingConfig, dataset list) of the packaged ``llama2-7b.yaml`` (``--tiny``: toy shapes).

    The tokenizer is a byte-level BPE trained here on canonical report sentences (Llama-2's is not shipped); its
    ids are a subset of the decoder's 32,000-row vocabulary, whose size (and so the LM head's cost) is Llama-2's.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from fedmrg.config import load_yaml
    from fedmrg.observations import NUM_OBSERVATIONS, STATE_TOKENS
    from fedmrg.report.builtin_lm import train_report_tokenizer
    from fedmrg.report.decoder import _DTYPES, LoadedDecoder
    from fedmrg.report.inspect_model import shapes_dir
    from fedmrg.report.model import FedMRGModel
    from fedmrg.report.run_config import packaged_config, run_config_from_dict

    raw = load_yaml(packaged_config("llama2-7b.yaml"))
    # the decoder is built below and passed in; the config only checks that its folder exists
    (work / "decoder").mkdir(exist_ok=True)
    raw["decoder"]["path"] = str(work / "decoder")
    if tiny:
        raw["encoder"] |= {"preset": "resnet-tiny", "image_size": 64}
        raw["training"] |= {"batch_size": 2}
        raw["decoder"]["max_report_tokens"] = 24
    run = run_config_from_dict(raw, source="llama2-7b.yaml (bench_gpu)")
    cfg, training = run.model, run.training
    training = replace(training, device=str(device), log_every=1_000_000)

    texts = _report_texts(4 * training.batch_size, 120, seed=0)
    tokenizer = train_report_tokenizer(texts, vocab_size=320 if tiny else 2000, min_frequency=1)
    tokenizer.add_tokens(list(STATE_TOKENS), special_tokens=True)
    if tiny:
        hf = LlamaConfig(vocab_size=len(tokenizer) + 16, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=False)
    else:
        hf = AutoConfig.from_pretrained(str(shapes_dir() / "llama-2-7b"))
    if len(tokenizer) > hf.vocab_size:
        raise RuntimeError(f"tokenizer ({len(tokenizer)}) larger than the decoder's vocabulary ({hf.vocab_size})")
    hf.bos_token_id, hf.eos_token_id, hf.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, \
        tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(hf, dtype=_DTYPES[cfg.decoder.dtype])
    loaded = LoadedDecoder(
        model=lm,
        tokenizer=tokenizer,
        mode="llm",
        num_parameters=sum(p.numel() for p in lm.parameters()),
        bos_token_id=int(tokenizer.bos_token_id),
        state_token_ids=[int(i) for i in tokenizer.convert_tokens_to_ids(list(STATE_TOKENS))],
    )
    model = FedMRGModel(cfg, decoder=loaded)
    size = cfg.encoder.image_size
    gen = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    data = [
        {
            "image": torch.randn(3, size, size, generator=gen),
            "view": torch.randn(3, size, size, generator=gen),
            "report": texts[i],
            "states": [rng.randrange(len(STATE_TOKENS)) for _ in range(NUM_OBSERVATIONS)],
            "study_id": f"bench-{i}",
        }
        for i in range(len(texts))
    ]
    return model, training, data


def bench_report(tiny: bool, device: torch.device, steps: int, repeats: int, peak: float, work: Path) -> dict[str, Any]:
    """Measurements of issue 16 (module docstring), with and without gradient checkpointing."""
    from torch.utils.flop_counter import FlopCounterMode

    from fedmrg.report.trainer import LocalTrainer

    t0 = time.perf_counter()
    model, training, data = build_report_model(tiny, device, work)
    build_s = time.perf_counter() - t0
    seen: dict[str, Any] = {}

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        embeds, mask = kwargs.get("inputs_embeds"), kwargs.get("attention_mask")
        if embeds is not None:
            seen["shape"] = tuple(embeds.shape)
            seen["real_tokens"] = int(mask.sum()) if mask is not None else embeds.shape[0] * embeds.shape[1]
        seen["calls"] = seen.get("calls", 0) + 1

    model.lm.register_forward_pre_hook(record, with_kwargs=True)
    n_decoder = sum(p.numel() for n, p in model.lm.named_parameters() if "lora_" not in n)
    result: dict[str, Any] = {
        "what": "one FedMRG local step (G phase + S phase) through LocalTrainer.train_round",
        "decoder": "Llama-2-7B shape (packaged configs/shapes/llama-2-7b), random init, bfloat16" if not tiny
        else "tiny Llama (CPU self-test)",
        "encoder_preset": model.config.encoder.preset,
        "image_size": model.config.encoder.image_size,
        "batch_size": training.batch_size,
        "max_report_tokens": model.config.decoder.max_report_tokens,
        "adapter": {"r": model.config.adapter.r, "targets": list(model.config.adapter.target_modules)},
        "decoder_params": n_decoder,
        "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
        "model_build_s": round(build_s, 2),
        "settings": {},
    }
    round_num = 0
    for ckpt in (False, True):
        trainer = LocalTrainer(model, replace(training, gradient_checkpointing=ckpt), site="bench",
                               train_dataset=data, progress=False)  # type: ignore[arg-type]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def timed(n: int, trainer: LocalTrainer = trainer) -> float:
            nonlocal round_num
            _sync(device)
            t = time.perf_counter()
            trainer.train_round(None, None, round_num=round_num, steps=n)
            _sync(device)
            round_num += 1
            return time.perf_counter() - t

        timed(2)  # warm-up (kernels, allocator, AdamW state)
        seen["calls"] = 0
        one = [timed(1) for _ in range(repeats)]
        calls_per_step = seen["calls"] / repeats
        many = [timed(1 + steps) for _ in range(repeats)]
        # the round's fixed cost cancels in the difference; on a tiny CPU run noise can exceed the step itself, and
        # then there is no step time to report (None, with the raw times beside it), never a negative one
        step_s = (statistics.median(many) - statistics.median(one)) / steps
        step_s = step_s if step_s > 0 else None
        b, seq = seen["shape"][:2]
        row: dict[str, Any] = {
            "gradient_checkpointing": ckpt,
            "round_1_step_s": [round(x, 4) for x in one],
            f"round_{1 + steps}_steps_s": [round(x, 4) for x in many],
            "seconds_per_step": None if step_s is None else round(step_s, 4),
            "decoder_forwards_per_step": calls_per_step,
            "decoder_sequence": [b, seq],
            "tokens_per_step": b * seq,
            "tokens_per_step_unpadded": seen["real_tokens"],
            "tokens_per_s": None if step_s is None else round(b * seq / step_s, 1),
        }
        if device.type == "cuda":
            row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
        if not ckpt:
            counts = []
            for n in (1, 2):
                with FlopCounterMode(display=False) as fc:
                    trainer.train_round(None, None, round_num=round_num, steps=n)
                round_num += 1
                counts.append(fc.get_total_flops())
            result["flops_per_step_measured"] = counts[1] - counts[0]
            result["flops_per_step_estimate_12NT"] = 12 * n_decoder * b * seq
        trainer.close()
        flops = result["flops_per_step_measured"]
        for key, scale in (("model_tflops_per_s", 1e12), ("mfu_vs_datasheet", DATASHEET_BF16_PEAK),
                           ("mfu_vs_measured_matmul", peak)):  # fmt: skip
            row[key] = None if step_s is None else round(flops / step_s / scale, 2 if key == "model_tflops_per_s" else 4)
        result["settings"]["on" if ckpt else "off"] = row
        print(json.dumps({"report": row}), flush=True)
    return result


# ---------------------------------------------------------------------------------------------------------- vision
def bench_vision(tiny: bool, device: torch.device, rounds: int, local_steps: int, work: Path) -> dict[str, Any]:
    """Measurements of issue 15: seconds per local round and peak GPU memory of the polyp (segmentation) learner."""
    from transformers import SamConfig, SamModel

    from fedmrg.fl.site_config import SiteConfig
    from fedmrg.vision.backbones import tiny_sam
    from fedmrg.vision.learner import VisionLearner

    torch.manual_seed(0)
    sam = tiny_sam() if tiny else SamModel(SamConfig())
    backbone = work / "sam_backbone"
    sam.save_pretrained(str(backbone))
    n_backbone = sum(p.numel() for p in sam.parameters())
    del sam
    batch = 2 if tiny else 16
    learner = VisionLearner(task="synthetic_seg", method="prompt_gen", backbone=str(backbone), num_sites=1,
                            synthetic_samples=8 if tiny else 80, rounds=rounds + 1, local_steps=local_steps,
                            batch_size=batch, device=str(device), torch_threads=0, val_fraction=0.2)
    t0 = time.perf_counter()
    learner.setup("site-1", str(work / "site-1"), SiteConfig(site="site-1"))
    setup_s = time.perf_counter() - t0
    state = learner.initial_shared_state()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for r in range(rounds + 1):
        _sync(device)
        t = time.perf_counter()
        out = learner.train(state, round_num=r, extra={})
        _sync(device)
        times.append(time.perf_counter() - t)
        state = out.shared_state
    res: dict[str, Any] = {
        "what": "VisionLearner.train (one local round) in-process, no FLARE; task synthetic_seg, method prompt_gen",
        "backbone": "SamModel(SamConfig()) = SAM ViT-B shape, random init" if not tiny else "tiny_sam (CPU self-test)",
        "backbone_params": n_backbone,
        "image_size": int(learner.pre.image_size),
        "batch_size": batch,
        "local_steps": local_steps,
        "train_images": len(learner.data["train"]["pixel_values"]),
        "setup_s": round(setup_s, 2),
        "round_s": [round(x, 3) for x in times],
        "seconds_per_round": round(statistics.median(times[1:]), 3),
        "seconds_per_step": round(statistics.median(times[1:]) / local_steps, 4),
        "trained_share": out.metrics.get("trained_share"),
        "shared_bytes": out.metrics.get("shared_bytes"),
        "precision": "float32 (the learner runs without autocast)",
    }
    if device.type == "cuda":
        res["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        res["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    print(json.dumps({"vision": res}), flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="toy shapes on the CPU (self-test)")
    p.add_argument("--out", required=True, help="folder for results.json")
    p.add_argument("--parts", default="report,vision", help="comma-separated: report, vision")
    p.add_argument("--steps", type=int, default=3, help="extra steps of the long round (report)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per length (report)")
    p.add_argument("--vision-rounds", type=int, default=3, help="timed rounds after one warm-up (vision)")
    p.add_argument("--vision-steps", type=int, default=10, help="local steps per round (vision)")
    args = p.parse_args(argv)
    parts = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(parts) - {"report", "vision"})
    if unknown:
        p.error(f"--parts: unknown {unknown}; choose from report, vision")
    if args.tiny:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        p.error("no CUDA device: this benchmark needs a GPU (use --tiny for the CPU self-test)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    peak = matmul_rate(device, 256 if args.tiny else 8192)
    results: dict[str, Any] = {
        "command": "python scripts/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": _commit(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "peft": __import__("peft").__version__,
        "bf16_matmul_flops_measured": peak,
        "bf16_peak_datasheet": DATASHEET_BF16_PEAK,
    }
    path = out / "results.json"
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            try:
                if part == "report":
                    results["report"] = bench_report(args.tiny, device, args.steps, args.repeats, peak, Path(tmp))
                else:
                    results["vision"] = bench_vision(args.tiny, device, args.vision_rounds, args.vision_steps,
                                                     Path(tmp))
            except Exception as e:  # noqa: BLE001 - recorded and re-raised after the other part ran
                results[part] = {"error": f"{type(e).__name__}: {e}"}
                print(f"{part} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            path.write_text(json.dumps(results, indent=1) + "\n")
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(json.dumps(results, indent=1))
    return 1 if any(isinstance(results.get(k), dict) and "error" in results[k] for k in parts) else 0


if __name__ == "__main__":
    sys.exit(main())

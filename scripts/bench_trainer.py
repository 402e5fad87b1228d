"""Throughput of the FedMRG LocalTrainer against a bare Hugging Face + PEFT training loop, same model, same batches.

The bare loop is the least a training loop can do: batches collated once and kept on the device, then
``fedmrg.report.steps.train_step`` (G step + S step of the HF causal LM with PEFT adapters, AdamW, clipping) in a
``for`` loop. The trainer does everything it does in production: data loading (cached images, a freshly augmented
second view per study), collation, schedule, non-finite checks, metrics. Both are timed for the same number of
optimizer steps, alternating ``--repeats`` times; the medians give the ratio (target >= 0.9).

    python scripts/bench_trainer.py --data runs/demo/data --site site-1            # default config, CPU
    python scripts/bench_trainer.py --config my.yaml --data DIR --site site-1 --device cuda --steps 50

Prints one JSON object: samples/s and report tokens/s of both, and trainer / bare ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="run configuration (default: the packaged default.yaml)")
    parser.add_argument("--data", type=Path, required=True, help="federated dataset directory")
    parser.add_argument("--site", default="site-1", help="site whose train split is used (default site-1)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per timed run (default 12)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs of each (default 3)")
    parser.add_argument("--batch-size", type=int, help="override training.batch_size")
    parser.add_argument("--device", help="override training.device")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()

    import dataclasses

    from fedmrg.report.data_loading import open_split
    from fedmrg.report.model import FedMRGModel
    from fedmrg.report.run_config import load_run_config, packaged_config
    from fedmrg.report.steps import optimizer_groups, train_step
    from fedmrg.report.trainer import LocalTrainer, batch_to
    from fedmrg.training import autocast

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_run_config(args.config or packaged_config("default.yaml"), progress=False)
    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("device", args.device)) if v}
    training = dataclasses.replace(config.training, **overrides)
    m = config.model
    dataset = open_split(args.data, site=args.site, split="train", image_size=m.encoder.image_size,
                         views=m.uses_contrastive and training.augment, seed=training.seed)  # fmt: skip
    torch.manual_seed(training.seed)
    model = FedMRGModel(m)
    trainer = LocalTrainer(model, training, site=args.site, train_dataset=dataset, progress=False)
    device = trainer.device

    # The bare loop's batches: the same studies the trainer sees, collated once, already on the device.
    n_batches = min(args.steps, len(dataset) // training.batch_size)
    batches = [
        batch_to(
            trainer.collator([dataset[i] for i in range(k * training.batch_size, (k + 1) * training.batch_size)]),
            device,
        )  # fmt: skip
        for k in range(n_batches)
    ]
    optimizer = torch.optim.AdamW(
        optimizer_groups(model, weight_decay=training.weight_decay), lr=training.learning_rate
    )

    def bare() -> tuple[float, float]:
        samples = tokens = 0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for step in range(args.steps):
            batch = batches[step % len(batches)]
            with autocast(trainer.device, trainer.amp_dtype):
                train_step(model, batch, optimizer, max_grad_norm=training.max_grad_norm)
            samples += batch["input_ids"].shape[0]
            tokens += int(batch["attention_mask"].sum())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        return samples / dt, tokens / dt

    def ours() -> tuple[float, float]:
        metrics = trainer.train_round(None, None, steps=args.steps).metrics
        return metrics["samples_per_s"], metrics["tokens_per_s"]

    ours()  # warm-up: fills the trainer's image cache, first-call overheads of both paths
    bare()
    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "trainer": []}
    for _ in range(args.repeats):
        runs["bare"].append(bare())
        runs["trainer"].append(ours())
    med = {k: (statistics.median(s for s, _ in v), statistics.median(t for _, t in v)) for k, v in runs.items()}
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "config": str(args.config or "default.yaml"),
        "method": m.method,
        "batch_size": training.batch_size,
        "steps_per_run": args.steps,
        "repeats": args.repeats,
        "bare_samples_per_s": round(med["bare"][0], 3),
        "trainer_samples_per_s": round(med["trainer"][0], 3),
        "bare_tokens_per_s": round(med["bare"][1], 1),
        "trainer_tokens_per_s": round(med["trainer"][1], 1),
        "ratio_samples_per_s": round(med["trainer"][0] / med["bare"][0], 3),
        "ratio_tokens_per_s": round(med["trainer"][1] / med["bare"][1], 3),
        "all_runs": {k: [[round(s, 3), round(t, 1)] for s, t in v] for k, v in runs.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Does a trained FedMRG model read its diagnosis prompt, its image, or neither?

For ``--n`` in-domain test studies (a fixed random sample), the model writes reports four ways and each set is scored
(CE-F1 example-based, BLEU-4, distinct reports):

- ``oracle``: prompts carry the ground-truth states (the decoder's ceiling);
- ``oracle + blank image``: the same prompts, every image replaced by its batch's mean grey (visual tokens carry
  nothing about the study);
- ``shuffled states``: real images, each study prompted with another study's ground-truth states;
- ``head``: the model as deployed (states from its diagnosis head).

A decoder that follows its prompt scores ``oracle`` well above ``shuffled states``; one that writes the same text
whatever it is told scores them alike.

    python scripts/prompt_sensitivity.py --model RUN --data DATA [--n 96] [--threads 1]
"""

from __future__ import annotations

import argparse
import random

import torch
from torch.utils.data import Dataset

from fedmrg.report.checkpoint import load_run
from fedmrg.report.data_loading import open_split
from fedmrg.report.evaluation import STATE_NAMES, score_rows


def sensitivity(model, generic_only: bool, dataset: Dataset, n: int, batch: int = 16) -> dict[str, dict[str, float]]:
    """{setting: {"ce_f1", "bleu4", "distinct"}} over ``n`` studies of ``dataset`` drawn with ``random.Random(0)``."""
    idx = list(range(len(dataset)))  # type: ignore[arg-type]
    random.Random(0).shuffle(idx)
    samples = [dataset[i] for i in idx[:n]]
    n = len(samples)
    images = torch.stack([s["image"] for s in samples])  # (n, 3, S, S)
    states = torch.tensor([list(s["states"]) for s in samples])  # (n, 14)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    settings = {
        "oracle": (images, states),
        "oracle + blank image": (torch.zeros_like(images) + images.mean(), states),
        "shuffled states": (images, states[perm]),
        "head": (images, None),
    }
    out = {}
    for name, (x, st) in settings.items():
        reports: list[str] = []
        for a in range(0, n, batch):
            gen = model.generate(x[a : a + batch], states=None if st is None else st[a : a + batch],
                                 generic_only=generic_only)  # fmt: skip
            reports += gen.reports
        rows = [{"study_id": s["study_id"], "prediction": p, "reference": s["report"],
                 "reference_states": [STATE_NAMES[v] for v in s["states"]]} for p, s in zip(reports, samples, strict=True)]  # fmt: skip
        scored = score_rows(rows)
        out[name] = {"ce_f1": scored["clinical"]["example_based"]["f1"], "bleu4": float(scored["text"]["BLEU_4"]),
                     "distinct": len(set(reports))}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="run folder (fedmrg train, or a federated run's model folder)")
    ap.add_argument("--data", required=True, help="federated dataset directory (fedmrg data prepare)")
    ap.add_argument("--n", type=int, default=96, help="test studies to write for (default 96)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_run(args.model)
    dataset = open_split(args.data, site=None, split="test", image_size=loaded.model.config.encoder.image_size)
    result = sensitivity(loaded.model, loaded.adapter == "generic", dataset, args.n)
    print(f"| prompt / image ({args.n} studies) | CE-F1 | BLEU-4 | distinct reports |\n|---|---:|---:|---:|")
    for name, r in result.items():
        print(f"| {name} | {r['ce_f1']:.3f} | {r['bleu4']:.3f} | {r['distinct']} |")


if __name__ == "__main__":
    main()

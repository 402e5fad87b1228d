"""Does a trained FedMRG decoder read its diagnosis prompt? Teacher-forced report LM loss of a run on a split with
the true ground-truth states in the prompt, with the states of other studies (rows shuffled across the split), and
with every state [BLA].

    python scripts/prompt_sensitivity.py --checkpoint RUN --data DATA --split test

A decoder that uses the prompt has a clearly lower loss with the true states than with shuffled ones; equal losses
mean the prompt is ignored. Prints one JSON object (nats per report token) with the differences.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import Dataset


class _StatesOverride(Dataset):
    """``dataset`` with each sample's ``states`` replaced by row ``i`` of ``states`` (N, 14)."""

    def __init__(self, dataset: Dataset, states: list[list[int]]) -> None:
        self.dataset, self.states = dataset, states

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "states": self.states[index]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="run folder written by `fedmrg train`")
    parser.add_argument("--data", type=Path, required=True, help="federated dataset directory")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.report.checkpoint import load_run
    from fedmrg.report.data_loading import open_split
    from fedmrg.report.trainer import evaluate_loss

    loaded = load_run(args.checkpoint, generic_only=True)
    data = FederatedDataset.open(args.data)
    dataset = open_split(data, site=None, split=args.split, image_size=loaded.config.model.encoder.image_size)
    true_states = [list(dataset[i]["states"]) for i in range(len(dataset))]
    order = torch.randperm(len(true_states), generator=torch.Generator().manual_seed(args.seed)).tolist()
    variants = {
        "true": true_states,
        "shuffled": [true_states[j] for j in order],
        "all_blank": [[0] * len(s) for s in true_states],
    }
    losses = {
        name: evaluate_loss(loaded.model, _StatesOverride(dataset, states), adapter="generic")["lm_loss"]
        for name, states in variants.items()
    }
    changed = sum(a != b for a, b in zip(variants["true"], variants["shuffled"], strict=True))
    print(
        json.dumps(
            {
                "checkpoint": str(args.checkpoint),
                "split": args.split,
                "studies": len(dataset),
                "studies_with_changed_prompt": changed,
                "lm_loss": losses,
                "shuffled_minus_true": losses["shuffled"] - losses["true"],
                "blank_minus_true": losses["all_blank"] - losses["true"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""A tiny reference :class:`~fedmrg.fl.learner.SharedStateLearner` on synthetic numbers, for tests and smoke jobs.

Model: ``y = private(tanh(shared(x)))`` with ``shared`` a ``Linear(in_features, hidden)`` that travels (like FedMRG's
encoder and generic adapter) and ``private`` a ``Linear(hidden, 1)`` head kept at the site (like the specialized
adapter). Each site draws its own data: ``x ~ N(0, 1)`` of shape ``(n, in_features)``, and ``y`` from a feature map
common to all sites followed by a head of its own, plus noise, so that federation helps the shared part and
personalisation helps the head. Deterministic from ``seed`` and the site name.

Extra payload: ``{"bank": (bank_size, hidden) float32}``, L2-normalised hidden features of some training samples,
standing in for FedMRG's memory-bank features.

The learner appends one JSON line per event to ``<workspace_dir>/toy_learner_events.jsonl`` (setup, load_private,
train with the peer sites it received, validate), which the tests read.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmrg.errors import ConfigError, DataError
from fedmrg.fl.learner import State, TrainOutcome
from fedmrg.fl.site_config import SiteConfig
from fedmrg.fl.state_files import load_state, save_state

TRAIN_FILE = "train.npz"

_PRIVATE_FILE = "toy_private.safetensors"
EVENTS_FILE = "toy_learner_events.jsonl"


class ToyLearner:
    """Two-layer regression learner with a shared first layer and a private head.

    Args:
        in_features: input width.
        hidden: hidden width (also the bank feature width D).
        num_train: training samples per site.
        num_val: validation (and test) samples per site.
        local_steps: SGD steps per round (full-batch).
        lr: SGD learning rate.
        bank_size: rows K of the ``bank`` extra payload (0: no extra).
        seed: seed of the model initialisation and of every site's data.
        fail_sites: sites whose ``train`` raises in round ``fail_round`` (fault injection for tests).
        fail_round: the round in which ``fail_sites`` fail; -1 never.
        nan_sites: sites whose ``train`` returns a NaN shared state in round ``nan_round`` (fault injection).
        nan_round: the round in which ``nan_sites`` return NaN; -1 never.
        statistics_round: ask for the statistics round after the last FL round (:mod:`fedmrg.fl.statistics_round`):
            each site sends the sum and count of its training inputs, and the final ``shared.bias`` centres the
            first layer on the pooled input mean (``-W @ mean_x``).
        require_data_root: ``setup`` raises ConfigError when the site's data root is not an existing folder (as a
            real learner does). When the folder holds ``train.npz`` (arrays ``x`` (n, in_features) and ``y`` (n, 1),
            float32), the site trains on it instead of its generated split; a file that does not load, or holds other
            arrays, raises DataError naming the file (the corrupt-data drill).
    """

    def __init__(
        self,
        in_features: int = 8,
        hidden: int = 16,
        num_train: int = 64,
        num_val: int = 32,
        local_steps: int = 20,
        lr: float = 0.1,
        bank_size: int = 4,
        seed: int = 0,
        fail_sites: list[str] | None = None,
        fail_round: int = -1,
        nan_sites: list[str] | None = None,
        nan_round: int = -1,
        require_data_root: bool = False,
        statistics_round: bool = False,
    ) -> None:
        for name, value in (("in_features", in_features), ("hidden", hidden), ("num_train", num_train)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
        if not lr > 0:
            raise ValueError(f"`lr` must be > 0, got {lr!r}")
        self.in_features = in_features
        self.hidden = hidden
        self.num_train = num_train
        self.num_val = num_val
        self.local_steps = local_steps
        self.lr = lr
        self.bank_size = bank_size
        self.seed = seed
        self.fail_sites = fail_sites
        self.fail_round = fail_round
        self.nan_sites = nan_sites
        self.nan_round = nan_round
        self.require_data_root = require_data_root
        self.statistics_round = statistics_round
        self.runs_statistics_round = False
        self.site_name = ""
        self.rounds_trained = 0
        self._events: Path | None = None

    # -- model -------------------------------------------------------------------------------------------------
    def _build(self) -> tuple[torch.nn.Linear, torch.nn.Linear]:
        g = torch.Generator().manual_seed(self.seed)
        shared = torch.nn.Linear(self.in_features, self.hidden)
        head = torch.nn.Linear(self.hidden, 1)
        with torch.no_grad():
            for p in (*shared.parameters(), *head.parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        return shared, head

    def shared_keys(self) -> list[str]:
        return ["shared.bias", "shared.weight"]

    def initial_shared_state(self) -> State:
        shared, _ = self._build()
        return {f"shared.{k}": v.detach().numpy().astype(np.float32) for k, v in shared.state_dict().items()}

    def _load_shared(self, state: State) -> None:
        with torch.no_grad():
            self.shared.weight.copy_(torch.from_numpy(state["shared.weight"]))
            self.shared.bias.copy_(torch.from_numpy(state["shared.bias"]))

    def _shared_state(self) -> State:
        return {f"shared.{k}": v.detach().numpy().copy() for k, v in self.shared.state_dict().items()}

    # -- life cycle --------------------------------------------------------------------------------------------
    def setup(self, site_name: str, workspace_dir: str, config: SiteConfig) -> None:
        root = config.data_root
        if self.require_data_root and not Path(root).is_dir():
            raise ConfigError(f"site {site_name!r}: data root {root or '(none)'} does not exist")
        if self.statistics_round and not self.runs_statistics_round:
            raise ConfigError(f"site {site_name!r}: `statistics_round` needs a job that runs the statistics round")
        self.site_name = site_name
        self.shared, self.head = self._build()
        self.generic_head = torch.nn.Linear(self.hidden, 1)
        self.generic_head.load_state_dict(self.head.state_dict())
        self.data = {split: self._make_split(split, n) for split, n in self._splits().items()}
        if self.require_data_root and (Path(root) / TRAIN_FILE).is_file():
            self.data["train"] = self._read_train(Path(root) / TRAIN_FILE)
        self._events = Path(workspace_dir) / EVENTS_FILE
        self._log("setup", data_root=config.data_root, config_keys=list(config.explicit_keys))

    # -- the statistics round ----------------------------------------------------------------------------------
    def needs_statistics_round(self) -> bool:
        return self.statistics_round

    def round_statistics(self, global_state: State) -> dict[str, np.ndarray]:
        x = self.data["train"][0].double().numpy()
        return {"sum_x": x.sum(0), "count": np.array([x.shape[0]], dtype=np.float64)}

    def finish_state(self, global_state: State, statistics: dict[str, np.ndarray]) -> State:
        mean_x = statistics["sum_x"] / statistics["count"][0]
        bias = -(global_state["shared.weight"].astype(np.float64) @ mean_x)
        return dict(global_state) | {"shared.bias": bias.astype(np.float32)}

    def _read_train(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            with np.load(path) as arrays:
                x, y = np.asarray(arrays["x"], np.float32), np.asarray(arrays["y"], np.float32)
        except Exception as e:  # any unreadable file is the same failure for the site: name it and stop
            raise DataError(f"site {self.site_name!r}: training data {path} is not readable: {e}") from e
        if x.ndim != 2 or x.shape[1] != self.in_features or y.shape != (x.shape[0], 1):
            raise DataError(
                f"site {self.site_name!r}: {path}: expected x (n, {self.in_features}) and y (n, 1), "
                f"got {x.shape} and {y.shape}"
            )
        return torch.from_numpy(x), torch.from_numpy(y)

    def _splits(self) -> dict[str, int]:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_val}

    def _make_split(self, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        common = torch.Generator().manual_seed(self.seed + 1)
        w_true = torch.randn(self.hidden, self.in_features, generator=common)
        site = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(self.site_name.encode()))
        head_true = torch.randn(self.hidden, generator=site)
        g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{self.site_name}/{split}".encode()))
        x = torch.randn(n, self.in_features, generator=g)
        y = torch.tanh(x @ w_true.T) @ head_true + 0.05 * torch.randn(n, generator=g)
        return x, y.unsqueeze(1)

    def train(self, global_state: State, *, round_num: int, extra: dict[str, Any]) -> TrainOutcome:
        if self.fail_sites and self.site_name in self.fail_sites and round_num == self.fail_round:
            raise RuntimeError(f"injected failure at {self.site_name} in round {round_num}")
        self._load_shared(global_state)
        x, y = self.data["train"]
        params = [*self.shared.parameters(), *self.head.parameters()]
        opt = torch.optim.SGD(params, lr=self.lr)
        losses = []
        for _ in range(self.local_steps):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(self.head(torch.tanh(self.shared(x))), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        self.rounds_trained += 1
        bank = {}
        if self.bank_size:
            with torch.no_grad():
                feats = torch.nn.functional.normalize(torch.tanh(self.shared(x[: self.bank_size])), dim=1)
            bank = {"bank": feats.numpy().astype(np.float32)}
        peers = {key: sorted(by_site) for key, by_site in extra.items()}
        self._log("train", round=round_num, peer_sites=peers, rounds_trained=self.rounds_trained)
        state = self._shared_state()
        if self.nan_sites and self.site_name in self.nan_sites and round_num == self.nan_round:
            state = {k: np.full_like(v, np.nan) for k, v in state.items()}
        return TrainOutcome(
            shared_state=state,
            num_samples=int(x.shape[0]),
            metrics={"loss": float(np.mean(losses)), "final_loss": losses[-1]},
            extra=bank,
        )

    @torch.no_grad()
    def validate(self, global_state: State, *, personalized: bool, split: str) -> dict[str, float]:
        if split not in self.data:
            raise ValueError(f"unknown split {split!r}; ToyLearner has {sorted(self.data)}")
        saved = self._shared_state()
        self._load_shared(global_state)
        x, y = self.data[split]
        head = self.head if personalized else self.generic_head
        pred = head(torch.tanh(self.shared(x)))
        mse = float(torch.mean((pred - y) ** 2))
        r2 = 1.0 - mse / float(torch.var(y, unbiased=False))
        self._load_shared(saved)
        self._log("validate", split=split, personalized=personalized)
        return {"mse": mse, "r2": r2}

    def save_private(self, directory: str) -> None:
        state = {f"head.{k}": v.numpy().copy() for k, v in self.head.state_dict().items()}
        save_state(Path(directory) / _PRIVATE_FILE, state, metadata={"rounds_trained": str(self.rounds_trained)})

    def load_private(self, directory: str) -> None:
        state, meta = load_state(Path(directory) / _PRIVATE_FILE)
        self.head.load_state_dict({k.removeprefix("head."): torch.from_numpy(v) for k, v in state.items()})
        self.rounds_trained = int(meta["rounds_trained"])
        self._log("load_private", rounds_trained=self.rounds_trained)

    def _log(self, event: str, **fields: Any) -> None:
        if self._events is None:
            return
        rec = {"event": event, "site": self.site_name, "time": time.time(), **fields}
        with self._events.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

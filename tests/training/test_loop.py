"""The generic round loop on small models: it trains, follows the schedule from a round offset, skips and counts
non-finite micro-batches (restoring BatchNorm statistics) and steps, fails a round past ``max_skipped_fraction``,
runs several phases with a shared carry, and logs to TensorBoard."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedmrg.errors import FedMRGError
from fedmrg.training import AdamWStep, CosineSchedule, Phase, ScalarLog, cosine_factor, endless, run_round

CPU = torch.device("cpu")
W = torch.tensor([1.0, -2.0, 3.0, 0.5])


def regression_batches(seed: int = 0, batch: int = 8):
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(batch, 4, generator=g)
        yield {"x": x, "y": x @ W + 0.1}


def mse(model: nn.Module):
    return lambda b, carry: {"loss": nn.functional.mse_loss(model(b["x"]).squeeze(-1), b["y"])}


def test_trains_and_reports_counts():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    phase = Phase("train", mse(model), AdamWStep(model.parameters(), lr=0.1))
    batches = regression_batches()
    first = run_round(model, [phase], batches, n_steps=20, device=CPU)
    last = run_round(model, [phase], batches, n_steps=60, device=CPU, progress="round 1", progress_keys=["train/loss"])
    assert last["train/loss"] < first["train/loss"] / 10
    assert last["steps"] == 60 and last["micro_batches"] == 60 and last["samples"] == 60 * 8
    assert last["skipped_batches"] == last["skipped_steps"] == last["empty_batches"] == 0
    assert last["samples_per_s"] > 0 and last["seconds"] > 0


def test_schedule_starts_at_the_round_offset_and_gradient_accumulation_counts_micro_batches():
    model = nn.Linear(4, 1)
    step = AdamWStep(model.parameters(), lr=1e-3)
    seen = []
    sched = CosineSchedule(rounds=4, steps_per_round=2)
    metrics = run_round(
        model, [Phase("t", mse(model), step)], regression_batches(), n_steps=2, device=CPU, grad_accum_steps=3,
        schedule=sched, first_step=sched.first_step(2), before_step=lambda s: seen.append(step.optimizer.param_groups[0]["lr"]),
    )  # fmt: skip
    assert seen == pytest.approx([1e-3 * cosine_factor(s, total=8, warmup=0, min_ratio=0.0) for s in (4, 5)])
    assert metrics["lr"] == pytest.approx(1e-3 * cosine_factor(6, total=8, warmup=0, min_ratio=0.0))
    assert metrics["micro_batches"] == 6 and metrics["samples"] == 6 * 8


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.lin = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.bn(x))


def poisoned(every: int):
    """Regression batches whose every ``every``-th one holds an inf (a non-finite loss), from the first on."""
    for i, b in enumerate(regression_batches()):
        if i % every == 0:
            b = {"x": b["x"] * 1e3, "y": b["y"].clone()}
            b["y"][0] = math.inf
        yield b


def test_non_finite_micro_batches_are_skipped_counted_and_leave_no_batchnorm_trace():
    torch.manual_seed(0)
    model = BNNet().train()
    step = AdamWStep(model.parameters(), lr=1e-2, max_grad_norm=1.0)
    before = model.bn.running_mean.clone()
    m = run_round(model, [Phase("t", mse(model), step)], poisoned(every=2), n_steps=1, device=CPU,
                  grad_accum_steps=2, max_skipped_fraction=0.5)  # fmt: skip
    assert m["skipped_batches"] == 1 and m["samples"] == 8 and m["skipped_steps"] == 0
    data = regression_batches()
    next(data)
    clean = next(data)  # the second micro-batch, the only one kept
    expected = 0.9 * before + 0.1 * clean["x"].mean(0)
    torch.testing.assert_close(model.bn.running_mean, expected)  # the poisoned batch (x * 1000) left nothing
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_skipped_micro_batches_fail_the_round():
    model = nn.Linear(4, 1)
    with pytest.raises(FedMRGError, match=r"site 'x' round 3: 2 of 3 micro-batches had a non-finite loss.*lower lr"):
        run_round(model, [Phase("t", mse(model), AdamWStep(model.parameters(), lr=1e-2))], poisoned(every=2),
                  n_steps=4, device=CPU, max_skipped_fraction=0.25, who="site 'x' round 3", remedy="lower lr")  # fmt: skip


def test_a_non_finite_gradient_skips_the_step():
    model = nn.Linear(4, 1)
    step = AdamWStep(model.parameters(), lr=1e-2)
    w0 = model.weight.detach().clone()
    handle = model.weight.register_hook(lambda g: g * math.inf)
    m = run_round(model, [Phase("t", mse(model), step)], regression_batches(), n_steps=2, device=CPU)
    handle.remove()
    assert m["skipped_steps"] == 2 and m["skipped_batches"] == 0
    assert torch.equal(model.weight, w0)


def test_two_phases_share_a_carry_and_have_their_own_optimizers():
    torch.manual_seed(0)
    enc, head = nn.Linear(4, 4), nn.Linear(4, 1)
    order = []

    def first(b, carry):
        carry["h"] = enc(b["x"]).detach()
        order.append("a")
        return {"loss": nn.functional.mse_loss(head(enc(b["x"])).squeeze(-1), b["y"]), "extra": torch.tensor(2.0)}

    def second(b, carry):
        order.append("b")
        return {"loss": nn.functional.mse_loss(head(carry["h"]).squeeze(-1), b["y"])}

    a = AdamWStep([*enc.parameters(), *head.parameters()], lr=1e-2)
    b = AdamWStep(head.parameters(), lr=1e-3)
    m = run_round(enc, [Phase("a", first, a, loss_name="total"), Phase("b", second, b)], regression_batches(),
                  n_steps=3, device=CPU, grad_accum_steps=2)  # fmt: skip
    assert order == ["a", "a", "b", "b"] * 3
    assert {"a/total", "a/extra", "b/loss"} <= set(m) and m["a/extra"] == 2.0
    assert a.optimizer is not b.optimizer and len(b.optimizer.state) == 2  # head weight and bias


def test_empty_batches_are_counted_and_the_step_still_runs():
    model = nn.Linear(4, 1)
    calls = []

    class Recording(AdamWStep):
        def step(self, n_used: int, n_all: int) -> bool:
            calls.append((n_used, n_all))
            return super().step(n_used, n_all)

    batches = iter([None, next(regression_batches())])
    m = run_round(model, [Phase("t", mse(model), Recording(model.parameters(), lr=1e-2))], batches, n_steps=2,
                  device=CPU)  # fmt: skip
    assert calls == [(0, 0), (1, 1)] and m["empty_batches"] == 1 and m["samples"] == 8


def test_tensorboard_and_endless(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = nn.Linear(4, 1)
    log = ScalarLog(tmp_path / "tb", tag_prefix="site-1")
    data = [next(regression_batches(s)) for s in range(3)]
    epochs = []
    batches = endless(lambda e: epochs.append(e) or data)
    run_round(model, [Phase("t", mse(model), AdamWStep(model.parameters(), lr=1e-2))], batches, n_steps=7,
              device=CPU, scalars=log, log_every=2)  # fmt: skip
    log.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"site-1/train/t/loss", "site-1/train/lr"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("site-1/train/lr")] == [0, 2, 4, 6]
    assert epochs == [0, 1, 2]
    with pytest.raises(ValueError, match="epoch yielded no batch"):
        next(endless(lambda e: []))

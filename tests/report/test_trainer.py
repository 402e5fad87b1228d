"""LocalTrainer: the round interface FLARE calls, counted skips, determinism, schedule, memory-bank features."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedmrg.data.records import ImageRef, StudyRecord
from fedmrg.errors import FedMRGError
from fedmrg.observations import OBSERVATIONS, State, state_to_csv
from fedmrg.report.data_loading import ReportDataset
from fedmrg.report.model import FedMRGModel
from fedmrg.report.run_config import TrainingConfig
from fedmrg.report.shared_state import get_private_state, get_shared_state, shared_keys
from fedmrg.report.trainer import LocalTrainer, cosine_factor, evaluate_loss
from fedmrg.training import ScalarLog

from .conftest import IMAGE_SIZE, STUDIES


def write_records(folder: Path, n: int = 8) -> list[StudyRecord]:
    """``n`` studies (the conftest reports, cycling) with distinct random 80 px PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        text, states = STUDIES[i % len(STUDIES)]
        path = folder / f"s{i}.png"
        Image.fromarray(rng.integers(0, 256, (80, 80), dtype=np.uint8)).save(path)
        labels = {obs: state_to_csv(s) for obs, s in zip(OBSERVATIONS, states, strict=True)}
        records.append(StudyRecord(f"s{i}", f"p{i}", images=[ImageRef(str(path), "PA")], findings=text, labels=labels))
    return records


@pytest.fixture
def records(tmp_path: Path) -> list[StudyRecord]:
    return write_records(tmp_path / "images")


def make_trainer(
    make_config, records, tmp_path: Path, *, views: bool = True, seed: int = 0, mode: str = "llm", **training
) -> LocalTrainer:
    training.setdefault("batch_size", 4)
    training.setdefault("learning_rate", 1e-3)
    config = TrainingConfig(seed=seed, device="cpu", **training)
    torch.manual_seed(seed)
    model = FedMRGModel(make_config(mode=mode))
    dataset = ReportDataset(records, image_size=IMAGE_SIZE, views=views, seed=seed)
    return LocalTrainer(model, config, site="site-1", train_dataset=dataset, workspace=tmp_path / "ws", progress=False)


def test_round_returns_shared_private_metrics_and_bank_features(make_config, records, tmp_path):
    trainer = make_trainer(make_config, records, tmp_path)
    model = trainer.model
    g0, s0 = get_shared_state(model), get_private_state(model)
    out = trainer.train_round(g0, s0, round_num=0, steps=3)

    assert sorted(out.shared_state) == shared_keys(model)
    assert out.private_state.keys() == s0.keys() and out.private_state
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in out.shared_state.values())
    assert out.num_samples == 3 * 4  # 3 steps x batch 4, nothing skipped
    m = out.metrics
    assert m["skipped_batches"] == 0 and m["skipped_steps"] == 0 and m["steps"] == 3
    assert m["samples"] == out.num_samples and m["samples_per_s"] > 0 and m["tokens_per_s"] > m["samples_per_s"]
    assert {"g/lm", "g/cls", "g/con", "g/kd_cos", "s/lm", "s/kd_kl"} <= set(m)
    assert all(math.isfinite(v) for v in m.values())
    # G (and the encoder) moved, S2 moved; the frozen base decoder did not travel or change
    changed = [k for k in g0 if not torch.equal(g0[k], out.shared_state[k])]
    assert any(k.startswith("adapter.") for k in changed) and any(k.startswith("encoder.") for k in changed)
    assert any(not torch.equal(s0[k], out.private_state[k]) for k in s0)
    assert not any(k.startswith("decoder.") for k in out.shared_state)
    # memory-bank upload: config.memory_bank.upload_per_round (32) capped by the 8 studies, L2-normalised
    assert out.bank_features is not None and out.bank_features.shape == (8, model.encoder.out_dim)
    assert torch.allclose(out.bank_features.norm(dim=1), torch.ones(8), atol=1e-5)


def test_rounds_are_deterministic_from_the_seed(make_config, records, tmp_path):
    a = make_trainer(make_config, records, tmp_path / "a").train_round(None, None, round_num=1, steps=2)
    b = make_trainer(make_config, records, tmp_path / "b").train_round(None, None, round_num=1, steps=2)
    c = make_trainer(make_config, records, tmp_path / "c", seed=1).train_round(None, None, round_num=1, steps=2)
    assert all(torch.equal(a.shared_state[k], b.shared_state[k]) for k in a.shared_state)
    assert all(torch.equal(a.private_state[k], b.private_state[k]) for k in a.private_state)
    assert any(not torch.equal(a.shared_state[k], c.shared_state[k]) for k in a.shared_state)


def test_start_round_copies_the_received_generic_adapter_into_s1(make_config, records, tmp_path):
    trainer = make_trainer(make_config, records, tmp_path, views=False)
    state = get_shared_state(trainer.model)
    state = {k: (v + 0.01 if k.startswith("adapter.") else v) for k, v in state.items()}
    trainer.train_round(state, None, steps=1)
    from fedmrg.report.adapters import SPEC_GLOBAL, adapter_tensors

    s1 = adapter_tensors(trainer.model.decoder, SPEC_GLOBAL)
    # S1 is frozen during the round, so it still equals the G the round started from
    assert all(torch.allclose(s1[k[len("adapter.") :]], v) for k, v in state.items() if k.startswith("adapter."))


class _NaNAt(torch.utils.data.Dataset):
    """A dataset whose images are NaN at the given indices (a loss the trainer must skip and count)."""

    def __init__(self, base: ReportDataset, bad: set[int]) -> None:
        self.base, self.bad = base, bad

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        sample = self.base[i]
        if i in self.bad:
            sample["image"] = torch.full_like(sample["image"], float("nan"))
        return sample


def test_non_finite_batches_are_skipped_and_counted(make_config, records, tmp_path):
    torch.manual_seed(0)
    model = FedMRGModel(make_config(mode="llm"))
    base = ReportDataset(records, image_size=IMAGE_SIZE, views=False)
    trainer = LocalTrainer(
        model, TrainingConfig(batch_size=1, device="cpu"), site="s", train_dataset=_NaNAt(base, {0, 1}), progress=False
    )
    out = trainer.train_round(None, None, epochs=1.0)  # 8 micro-batches of one study, two of them NaN
    assert out.metrics["skipped_batches"] == 2
    assert out.num_samples == 6 and out.metrics["micro_batches"] == 8
    assert all(torch.isfinite(v).all() for v in out.shared_state.values())

    everything_bad = LocalTrainer(
        model, TrainingConfig(batch_size=2, device="cpu"), site="s", train_dataset=_NaNAt(base, set(range(8))),
        progress=False,
    )  # fmt: skip
    with pytest.raises(FedMRGError, match="non-finite loss"):
        everything_bad.train_round(None, None, steps=4)


def test_gradient_accumulation_counts_micro_batches(make_config, records, tmp_path):
    trainer = make_trainer(make_config, records, tmp_path, views=False, batch_size=2, grad_accum_steps=2)
    assert trainer.steps_per_round(epochs=1.0) == 2  # 8 studies / (2 x 2)
    out = trainer.train_round(None, None, epochs=1.0)
    assert out.metrics["micro_batches"] == 4 and out.num_samples == 8


def test_bank_negatives_are_checked(make_config, records, tmp_path):
    trainer = make_trainer(make_config, records, tmp_path)
    with pytest.raises(ValueError, match="bank_negatives"):
        trainer.train_round(None, None, steps=1, bank_negatives=torch.zeros(4, 3))
    dim = trainer.model.encoder.out_dim
    out = trainer.train_round(None, None, steps=1, bank_negatives=torch.nn.functional.normalize(torch.randn(6, dim)))
    assert math.isfinite(out.metrics["g/con"])


def test_cosine_schedule():
    assert cosine_factor(0, total=100, warmup=10, min_ratio=0.0) == pytest.approx(0.1)
    assert cosine_factor(9, total=100, warmup=10, min_ratio=0.0) == pytest.approx(1.0)
    assert cosine_factor(55, total=100, warmup=10, min_ratio=0.0) == pytest.approx(0.5)  # half-way after warm-up
    assert cosine_factor(100, total=100, warmup=10, min_ratio=0.1) == pytest.approx(0.1)
    assert cosine_factor(500, total=100, warmup=0, min_ratio=0.0) == pytest.approx(0.0)  # clamped past the end


def test_learning_rate_position_follows_the_round(make_config, records, tmp_path):
    trainer = make_trainer(make_config, records, tmp_path, views=False, rounds=4)
    first = trainer.train_round(None, None, round_num=0, steps=2).metrics["lr"]
    last = trainer.train_round(None, None, round_num=3, steps=2).metrics["lr"]
    assert first == pytest.approx(1e-3 * cosine_factor(2, total=8, warmup=0, min_ratio=0.0))
    assert last == pytest.approx(0.0, abs=1e-12)


def test_evaluate_loss_drops_after_training(make_config, records, tmp_path):
    trainer = make_trainer(make_config, records, tmp_path, views=False, mode="clm", batch_size=8, learning_rate=3e-3)
    dataset = trainer.dataset
    before = evaluate_loss(trainer.model, dataset)["lm_loss"]
    trainer.train_round(None, None, steps=15)
    after = evaluate_loss(trainer.model, dataset)["lm_loss"]
    assert after < before - 0.5, (before, after)


def test_tensorboard_scalars_are_written(make_config, records, tmp_path):
    trainer = make_trainer(make_config, records, tmp_path, views=False)
    trainer.scalars = ScalarLog(tmp_path / "tb", tag_prefix="site-1")
    trainer.train_round(None, None, steps=1)
    trainer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "site-1/train/g/lm" in tags and "site-1/round/samples_per_s" in tags


def test_bf16_autocast_on_cpu_trains_and_keeps_float32_weights(make_config, records, tmp_path):
    trainer = make_trainer(make_config, records, tmp_path, views=False, mixed_precision="bf16")
    assert trainer.amp_dtype == torch.bfloat16
    before = {k: v.clone() for k, v in get_shared_state(trainer.model).items()}
    out = trainer.train_round(before, None, round_num=0, steps=2)
    assert all(v.dtype == torch.float32 for v in out.shared_state.values())
    assert any(not torch.equal(before[k], out.shared_state[k]) for k in before)
    assert math.isfinite(out.metrics["g/lm"])


def test_logit_adjustment_comes_from_the_site_training_states(make_config, records, tmp_path):
    """losses.logit_adjustment = tau: loss_bias[:, POS] = tau * log((n_pos + 1) / (N + 2)) over this site's studies;
    the bias is neither shared nor saved, and tau = 0 leaves it zero."""
    import dataclasses

    from fedmrg.observations import State

    def trainer_with(tau):
        def config(**kw):
            cfg = make_config(**kw)
            return dataclasses.replace(cfg, losses=dataclasses.replace(cfg.losses, logit_adjustment=tau))

        return make_trainer(config, records, tmp_path, views=False)

    trainer = trainer_with(0.5)
    states = torch.tensor(trainer.dataset.states)
    n_pos = (states == int(State.POSITIVE)).sum(0).float()
    expected = 0.5 * torch.log((n_pos + 1) / (len(states) + 2))
    bias = trainer.model.diagnosis_head.loss_bias
    torch.testing.assert_close(bias[:, int(State.POSITIVE)], expected)
    assert bias[:, [int(State.BLANK), int(State.NEGATIVE), int(State.UNCERTAIN)]].abs().max() == 0
    assert not any("loss_bias" in k for k in get_shared_state(trainer.model))
    assert not any("loss_bias" in k for k in trainer.model.state_dict())
    assert trainer_with(0.0).model.diagnosis_head.loss_bias.abs().max() == 0


def test_head_lr_scale_multiplies_only_the_diagnosis_head_step(make_config, records, tmp_path):
    """One AdamW step moves each weight by about lr (Adam's normalised step): the head's by 10x with scale 10, every
    other shared parameter exactly as with scale 1."""
    moved = {}
    for scale in (1.0, 10.0):
        trainer = make_trainer(make_config, records, tmp_path / str(scale), head_lr_scale=scale, warmup_steps=0)
        model = trainer.model
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer.train_round(get_shared_state(model), get_private_state(model), round_num=0, steps=1)
        moved[scale] = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    head = [n for n in moved[1.0] if n.startswith("diagnosis_head.")]
    assert head and all(moved[1.0][n] > 0 for n in head)
    for n in head:
        assert moved[10.0][n] == pytest.approx(10 * moved[1.0][n], rel=0.05)
    others = [n for n in moved[1.0] if not n.startswith("diagnosis_head.") and moved[1.0][n] > 0]
    assert others and all(moved[10.0][n] == pytest.approx(moved[1.0][n], rel=1e-4) for n in others)


def test_head_lr_scale_must_be_positive():
    with pytest.raises(ValueError, match="head_lr_scale"):
        TrainingConfig(head_lr_scale=0.0)


def test_finding_balance_weights_follow_the_rarest_positive_observation():
    from fedmrg.report.data_loading import finding_balance_weights

    # observation 0 positive in study 0 only (1 of 4), observation 1 in studies 1 and 2 (2 of 4), study 3 in none
    pos, blank = int(State.POSITIVE), int(State.BLANK)
    rows = [[blank] * 14 for _ in range(4)]
    rows[0][0] = rows[1][1] = rows[2][1] = pos
    w = finding_balance_weights(rows, 1.0)
    assert w.tolist() == pytest.approx([4.0, 2.0, 2.0, 1.0])
    assert finding_balance_weights(rows, 0.5).tolist() == pytest.approx([2.0, 2**0.5, 2**0.5, 1.0])
    assert finding_balance_weights(rows, 0.0).tolist() == [1.0] * 4


def test_balance_findings_draws_rare_positive_studies_more_often(make_config, tmp_path):
    """Seven normal studies and one pneumothorax: with balance_findings 1 the pneumothorax weighs 8 / 1 and each
    normal 8 / 7, so it is about half the draws; with 0, one draw in 8 (a plain pass)."""
    recs = write_records(tmp_path / "images", n=8)
    normal_text, normal_states = STUDIES[0]
    rare = [State.BLANK] * len(OBSERVATIONS)
    rare[OBSERVATIONS.index("Pneumothorax")] = State.POSITIVE
    recs = [
        StudyRecord(r.study_id, r.patient_id, images=r.images, findings=text,
                    labels={o: state_to_csv(s) for o, s in zip(OBSERVATIONS, states, strict=True)})
        for r, (text, states) in zip(recs, [("a right pneumothorax .", rare)] + [(normal_text, normal_states)] * 7,
                                     strict=True)
    ]  # fmt: skip
    draws = {}
    for power in (0.0, 1.0):
        trainer = make_trainer(make_config, recs, tmp_path / str(power), balance_findings=power, batch_size=8)
        batches = trainer._batches(round_num=0)
        ids = [sid for _ in range(50) for sid in next(batches)["study_ids"]]
        draws[power] = ids.count(recs[0].study_id) / len(ids)
    assert draws[0.0] == pytest.approx(1 / 8)
    assert 0.4 < draws[1.0] < 0.6

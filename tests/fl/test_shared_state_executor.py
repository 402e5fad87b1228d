"""SharedStateExecutor with the ToyLearner, a minimal engine and hand-made task Shareables."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from fedmrg.fl.constants import FedMetaKey
from fedmrg.fl.shared_state_executor import SharedStateExecutor
from fedmrg.fl.toy_learner import EVENTS_FILE, ToyLearner

TOY = "fedmrg.fl.toy_learner.ToyLearner"


def _start(flare, tmp_path, toy_args, site="site-1", **kwargs):
    engine = flare.engine(tmp_path / site, site)
    ctx = flare.ctx(engine, identity=site)
    exe = SharedStateExecutor(learner_path=TOY, learner_args=toy_args, **kwargs)
    exe.handle_event(EventType.START_RUN, ctx)
    return exe, ctx, engine


def _train_task(state, round_num, peer_extra=None):
    meta = {FedMetaKey.PEER_EXTRA: peer_extra} if peer_extra else {}
    s = DXO(DataKind.WEIGHTS, data=dict(state), meta=meta).to_shareable()
    s.set_header(AppConstants.CURRENT_ROUND, round_num)
    return s


def _events(flare, engine):
    path = engine.workspace.get_app_dir(flare.job_id) + "/" + EVENTS_FILE
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_train_returns_weight_diff_with_exactly_the_shared_keys(flare, tmp_path, toy_args):
    exe, ctx, engine = _start(flare, tmp_path, toy_args)
    init = ToyLearner(**toy_args).initial_shared_state()
    peer = {"bank": {"site-2": np.ones((2, toy_args["hidden"]), np.float32)}}
    result = exe.execute("train", _train_task(init, 0, peer), ctx, Signal())

    assert result.get_return_code() == ReturnCode.OK
    dxo = from_shareable(result)
    assert dxo.data_kind == DataKind.WEIGHT_DIFF
    assert sorted(dxo.data) == ToyLearner(**toy_args).shared_keys()
    assert all(v.dtype == np.float32 for v in dxo.data.values())
    assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == toy_args["num_train"]
    assert set(dxo.get_meta_prop(MetaKey.INITIAL_METRICS)) == {"mse", "r2"}
    assert dxo.get_meta_prop(FedMetaKey.TRAIN_METRICS)["loss"] > 0
    bank = dxo.get_meta_prop(FedMetaKey.EXTRA)["bank"]
    assert bank.shape == (toy_args["bank_size"], toy_args["hidden"]) and bank.dtype == np.float32
    # the diff is new - global: the learner's current shared state equals global + diff
    now = exe.learner._shared_state()
    for k in init:
        np.testing.assert_allclose(init[k] + dxo.data[k], now[k], rtol=0, atol=1e-6)
    # the learner saw the peer extras the server sent
    train_events = [e for e in _events(flare, engine) if e["event"] == "train"]
    assert train_events[-1]["peer_sites"] == {"bank": ["site-2"]}


def test_private_state_survives_a_restart(flare, tmp_path, toy_args):
    exe, ctx, _ = _start(flare, tmp_path, toy_args)
    init = ToyLearner(**toy_args).initial_shared_state()
    exe.execute("train", _train_task(init, 0), ctx, Signal())
    head_after_round0 = exe.learner.head.weight.detach().clone()

    exe2, ctx2, engine2 = _start(flare, tmp_path, toy_args)  # a new process: new executor, same workspace
    assert exe2.learner.rounds_trained == 1
    assert np.array_equal(exe2.learner.head.weight.detach().numpy(), head_after_round0.numpy())
    assert [e["event"] for e in _events(flare, engine2)][-1] == "load_private"
    exe2.execute("train", _train_task(init, 1), ctx2, Signal())
    assert exe2.learner.rounds_trained == 2
    progress = json.loads((exe2._private_root / "progress.json").read_text())
    assert progress == {"site": "site-1", "last_round": 1}


def test_learner_exception_returns_error_code_naming_the_site(flare, tmp_path, toy_args, caplog):
    exe, ctx, _ = _start(flare, tmp_path, toy_args | {"fail_sites": ["site-1"], "fail_round": 3})
    init = ToyLearner(**toy_args).initial_shared_state()
    with caplog.at_level(logging.ERROR):
        result = exe.execute("train", _train_task(init, 3), ctx, Signal())
    assert result.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert "site site-1, task 'train', round 3: learner failed" in caplog.text
    assert "injected failure" in caplog.text


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.pop("shared.bias"), r"missing \['shared.bias'\]"),
        (lambda s: s.update({"private.head": np.zeros(1, np.float32)}), r"unknown \['private.head'\]"),
        (lambda s: s.update({"shared.bias": s["shared.bias"].astype(np.float64)}), "float64"),
    ],
)
def test_malformed_global_model_is_bad_task_data(flare, tmp_path, toy_args, caplog, mutate, message):
    exe, ctx, _ = _start(flare, tmp_path, toy_args)
    state = ToyLearner(**toy_args).initial_shared_state()
    mutate(state)
    with caplog.at_level(logging.ERROR):
        result = exe.execute("train", _train_task(state, 0), ctx, Signal())
    assert result.get_return_code() == ReturnCode.BAD_TASK_DATA
    assert "site site-1" in caplog.text
    assert message.replace("\\", "") in caplog.text.replace("\\", "")


def test_malformed_peer_extra_is_bad_task_data(flare, tmp_path, toy_args):
    exe, ctx, _ = _start(flare, tmp_path, toy_args)
    task = _train_task(ToyLearner(**toy_args).initial_shared_state(), 1, {"bank": {"site-2": [[1.0, 2.0]]}})
    assert exe.execute("train", task, ctx, Signal()).get_return_code() == ReturnCode.BAD_TASK_DATA


def test_setup_failure_makes_every_task_fail_without_hanging(flare, tmp_path, toy_args, caplog):
    with caplog.at_level(logging.ERROR):
        exe, ctx, _ = _start(flare, tmp_path, toy_args | {"hidden": 0})
    assert "site site-1: learner setup failed" in caplog.text
    result = exe.execute("train", _train_task({}, 0), ctx, Signal())
    assert result.get_return_code() == ReturnCode.EXECUTION_EXCEPTION


def test_validate_and_submit_model_tasks(flare, tmp_path, toy_args):
    exe, ctx, _ = _start(flare, tmp_path, toy_args)
    init = ToyLearner(**toy_args).initial_shared_state()
    assert exe.execute("submit_model", DXO(DataKind.WEIGHTS, {}).to_shareable(), ctx, Signal()).get_return_code() == (
        ReturnCode.EMPTY_RESULT
    )
    exe.execute("train", _train_task(init, 0), ctx, Signal())

    submitted = from_shareable(exe.execute("submit_model", DXO(DataKind.WEIGHTS, {}).to_shareable(), ctx, Signal()))
    assert submitted.data_kind == DataKind.WEIGHTS
    assert sorted(submitted.data) == sorted(init)
    assert not np.array_equal(submitted.data["shared.weight"], init["shared.weight"])

    task = DXO(DataKind.WEIGHTS, data=submitted.data).to_shareable()
    metrics = from_shareable(exe.execute("validate", task, ctx, Signal()))
    assert metrics.data_kind == DataKind.METRICS
    # a site that trained reports the generic-only metrics and the personalized ones (its own private head)
    assert set(metrics.data) == {"mse", "r2", "personalized_mse", "personalized_r2"}
    assert all(np.isfinite(list(metrics.data.values())))
    assert metrics.data["mse"] != metrics.data["personalized_mse"]
    assert exe.execute("nope", task, ctx, Signal()).get_return_code() == ReturnCode.TASK_UNKNOWN


def test_data_root_from_site_environment(flare, tmp_path, toy_args, monkeypatch):
    monkeypatch.setenv("FEDMRG_DATA_ROOT_SITE_1", str(tmp_path / "hospital" / "{site}"))
    _, _, engine = _start(flare, tmp_path, toy_args, data_root_template="/job/{site}")
    setup = [e for e in _events(flare, engine) if e["event"] == "setup"][-1]
    assert setup["data_root"] == str(tmp_path / "hospital" / "site-1")


def test_private_dir_outside_the_run(flare, tmp_path, toy_args):
    exe, ctx, _ = _start(flare, tmp_path, toy_args, private_dir=str(tmp_path / "keep" / "{site}"))
    exe.execute("train", _train_task(ToyLearner(**toy_args).initial_shared_state(), 0), ctx, Signal())
    assert (tmp_path / "keep" / "site-1" / "private" / "toy_private.safetensors").is_file()
    assert (tmp_path / "keep" / "site-1" / "local_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"learner_path": "ToyLearner"}, ValueError, "`learner_path` must be a dotted class path"),
        ({"learner_args": [1]}, TypeError, "`learner_args` must be a dict"),
        ({"personalized": "yes"}, TypeError, "`personalized` must be a bool"),
        ({"train_task": ""}, ValueError, "`train_task` must be a non-empty str"),
    ],
)
def test_constructor_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        SharedStateExecutor(**({"learner_path": TOY} | kwargs))


def test_cross_site_before_training_is_generic_only(flare, tmp_path, toy_args):
    exe, ctx, _ = _start(flare, tmp_path, toy_args)
    task = DXO(DataKind.WEIGHTS, data=ToyLearner(**toy_args).initial_shared_state()).to_shareable()
    assert set(from_shareable(exe.execute("validate", task, ctx, Signal())).data) == {"mse", "r2"}


def test_evaluation_only_site_declines_train_and_evaluates(flare, tmp_path, toy_args, caplog):
    local = tmp_path / "unseen-1" / "local"
    local.mkdir(parents=True)
    (local / "fedmrg_site.json").write_text(json.dumps({"sites": {"unseen-1": {"role": "evaluate"}}}))
    exe, ctx, engine = _start(flare, tmp_path, toy_args, site="unseen-1")
    init = ToyLearner(**toy_args).initial_shared_state()
    with caplog.at_level(logging.INFO):
        assert (
            exe.execute("train", _train_task(init, 0), ctx, Signal()).get_return_code() == ReturnCode.TASK_UNSUPPORTED
        )
    assert "unseen-1" in caplog.text and "evaluation-only" in caplog.text
    assert not any(e["event"] == "train" for e in _events(flare, engine))
    task = DXO(DataKind.WEIGHTS, data=init).to_shareable()
    assert set(from_shareable(exe.execute("validate", task, ctx, Signal())).data) == {"mse", "r2"}

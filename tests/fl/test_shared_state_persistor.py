"""SharedStatePersistor: initial model from the learner or a file, saving with the round, resume, best model."""

from __future__ import annotations

import numpy as np
import pytest
from nvflare.apis.event_type import EventType
from nvflare.app_common.abstract.model import ModelLearnableKey, make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from fedmrg.fl.shared_state_model_locator import SharedStateModelLocator
from fedmrg.fl.shared_state_persistor import SharedStatePersistor
from fedmrg.fl.state_files import load_state, save_state
from fedmrg.fl.toy_learner import ToyLearner

TOY = "fedmrg.fl.toy_learner.ToyLearner"


def _run(flare, tmp_path, **kwargs):
    engine = flare.engine(tmp_path / "server", "server")
    ctx = flare.ctx(engine, identity="server")
    p = SharedStatePersistor(**kwargs)
    p.handle_event(EventType.START_RUN, ctx)
    return p, ctx


def _weights(ml):
    return ml[ModelLearnableKey.WEIGHTS]


def test_initial_model_from_learner_holds_exactly_the_shared_keys(flare, tmp_path, toy_args):
    p, ctx = _run(flare, tmp_path, learner_path=TOY, learner_args=toy_args)
    w = _weights(p.load(ctx))
    ref = ToyLearner(**toy_args).initial_shared_state()
    assert sorted(w) == ToyLearner(**toy_args).shared_keys()
    assert all(np.array_equal(w[k], ref[k]) and w[k].dtype == np.float32 for k in ref)
    assert p.get_resume_round(ctx) is None


def test_save_then_resume_at_next_round(flare, tmp_path, toy_args):
    state_dir = tmp_path / "keep"
    p, ctx = _run(flare, tmp_path, learner_path=TOY, learner_args=toy_args, state_dir=str(state_dir))
    ml = p.load(ctx)
    _weights(ml)["shared.bias"] += 1.0
    ctx.set_prop(AppConstants.CURRENT_ROUND, 3, private=True, sticky=False)
    p.save(ml, ctx)
    state, meta = load_state(state_dir / "FL_global_model.safetensors")
    assert meta == {"round": "3"}

    p2, ctx2 = _run(flare, tmp_path / "restart", learner_path=TOY, learner_args=toy_args, state_dir=str(state_dir))
    w2 = _weights(p2.load(ctx2))
    assert np.array_equal(w2["shared.bias"], state["shared.bias"])
    assert p2.get_resume_round(ctx2) == 4

    p3, ctx3 = _run(
        flare, tmp_path / "fresh", learner_path=TOY, learner_args=toy_args, state_dir=str(state_dir), resume=False
    )
    assert not np.array_equal(_weights(p3.load(ctx3))["shared.bias"], state["shared.bias"])
    assert p3.get_resume_round(ctx3) is None


def test_initial_state_file_and_nonfinite_file_panics(flare, tmp_path):
    good = {"x": np.arange(4, dtype=np.float32)}
    save_state(tmp_path / "init.safetensors", good)
    p, ctx = _run(flare, tmp_path, initial_state_file=str(tmp_path / "init.safetensors"))
    assert np.array_equal(_weights(p.load(ctx))["x"], good["x"])

    save_state(tmp_path / "bad.safetensors", {"x": np.array([np.nan], np.float32)})
    p, ctx = _run(flare, tmp_path, initial_state_file=str(tmp_path / "bad.safetensors"))
    assert _weights(p.load(ctx)) == {}  # system_panic was called (logged); an empty model is returned


def test_best_model_and_locator(flare, tmp_path, toy_args):
    p, ctx = _run(flare, tmp_path, learner_path=TOY, learner_args=toy_args)
    ml = p.load(ctx)
    ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    p.save(ml, ctx)
    best = make_model_learnable({k: v + 2 for k, v in _weights(ml).items()}, {})
    ctx.set_prop(AppConstants.GLOBAL_MODEL, best, private=True, sticky=False)
    ctx.set_prop(AppConstants.CURRENT_ROUND, 2, private=True, sticky=False)
    p.handle_event(AppEventType.GLOBAL_BEST_MODEL_AVAILABLE, ctx)
    assert sorted(p.get_model_inventory(ctx)) == ["FL_global_model", "best_FL_global_model"]

    engine = ctx.get_engine()
    engine.components["persistor"] = p
    loc = SharedStateModelLocator(persistor_id="persistor")
    loc.handle_event(EventType.START_RUN, ctx)
    assert loc.get_model_names(ctx) == ["FL_global_model", "best_FL_global_model"]
    dxo = loc.locate_model("best_FL_global_model", ctx)
    assert np.array_equal(dxo.data["shared.bias"], _weights(best)["shared.bias"])
    assert dxo.meta["round"] == "1"  # validated in round 2 = produced by round 1
    only_latest = SharedStateModelLocator(persistor_id="persistor", models=["FL_global_model"])
    only_latest.handle_event(EventType.START_RUN, ctx)
    assert only_latest.get_model_names(ctx) == ["FL_global_model"]
    with pytest.raises(TypeError, match="list of model names"):
        SharedStateModelLocator(models="FL_global_model")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give `learner_path` or `initial_state_file`"),
        ({"learner_path": TOY, "global_model_file_name": "a/b.st"}, "plain file name"),
        ({"learner_path": TOY, "best_global_model_file_name": "FL_global_model.npz"}, "must differ"),
        ({"learner_path": TOY, "resume": 1}, "`resume` must be a bool"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        SharedStatePersistor(**kwargs)

"""The learner contract: building from a dotted path, state checks, the reference ToyLearner."""

from __future__ import annotations

import numpy as np
import pytest

from fedmrg.errors import ConfigError
from fedmrg.fl.learner import SharedStateLearner, TrainOutcome, build_learner, check_state, nonfinite_keys
from fedmrg.fl.site_config import SiteConfig
from fedmrg.fl.toy_learner import ToyLearner


@pytest.mark.parametrize(
    ("path", "args", "message"),
    [
        ("fedmrg.fl.no_such_module.X", {}, "cannot import module"),
        ("fedmrg.fl.toy_learner.NoSuchClass", {}, "has no class 'NoSuchClass'"),
        ("fedmrg.fl.toy_learner.ToyLearner", {"hiddn": 3}, "do not fit"),
        ("fedmrg.fl.learner.TrainOutcome", {"shared_state": {}, "num_samples": 1}, "missing methods"),
    ],
)
def test_build_learner_errors(path, args, message):
    with pytest.raises(ConfigError, match=message):
        build_learner(path, args)


def test_build_learner_toy(toy_args):
    learner = build_learner("fedmrg.fl.toy_learner.ToyLearner", toy_args)
    assert isinstance(learner, SharedStateLearner)
    assert learner.hidden == toy_args["hidden"]


F32 = np.zeros((2, 3), np.float32)


@pytest.mark.parametrize(
    ("state", "keys", "message"),
    [
        ({"a": F32}, ["a", "b"], r"missing \['b'\]"),
        ({"a": F32, "c": F32}, ["a"], r"unknown \['c'\]"),
        ({"a": F32.astype(np.float64)}, ["a"], "float64"),
        ({"a": [1.0]}, ["a"], "not numpy float32"),
        ({"a": np.array([1.0, np.nan], np.float32)}, ["a"], "non-finite"),
        ({"a": np.array([np.inf], np.float32)}, None, "non-finite"),
    ],
)
def test_check_state_rejects(state, keys, message):
    with pytest.raises(ValueError, match=message):
        check_state(state, keys, what="x")


def test_check_state_accepts_and_nonfinite_keys():
    state = {"a": F32, "b": np.ones(4, np.float32)}
    assert check_state(state, ["b", "a"], what="x") == state
    assert nonfinite_keys({"x": np.array([np.nan], np.float32), "y": F32, "i": np.arange(3)}) == ["x"]


def test_toy_initial_state_is_deterministic_and_matches_keys(toy_args):
    a = ToyLearner(**toy_args).initial_shared_state()
    b = ToyLearner(**toy_args).initial_shared_state()
    c = ToyLearner(**(toy_args | {"seed": 2})).initial_shared_state()
    assert sorted(a) == ToyLearner(**toy_args).shared_keys()
    assert all(v.dtype == np.float32 for v in a.values())
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["shared.weight"], c["shared.weight"])


def test_toy_train_improves_and_keeps_private(tmp_path, toy_args):
    learner = ToyLearner(**(toy_args | {"local_steps": 30}))
    learner.setup("site-1", str(tmp_path), SiteConfig(site="site-1"))
    state = learner.initial_shared_state()
    before = learner.validate(state, personalized=True, split="val")
    out = learner.train(state, round_num=0, extra={})
    assert isinstance(out, TrainOutcome)
    assert sorted(out.shared_state) == learner.shared_keys()
    assert out.num_samples == toy_args["num_train"]
    assert out.extra["bank"].shape == (toy_args["bank_size"], toy_args["hidden"])
    after = learner.validate(out.shared_state, personalized=True, split="val")
    assert after["mse"] < before["mse"]
    # the private head changed during training, the generic one did not
    generic = learner.validate(out.shared_state, personalized=False, split="val")
    assert generic["mse"] != pytest.approx(after["mse"])
    # validation leaves the training state untouched
    assert np.array_equal(learner._shared_state()["shared.weight"], out.shared_state["shared.weight"])

"""A misspelt key in a job's learner ``overrides`` is refused at START_RUN naming the overrides, not only the packaged
YAML they were merged into (the YAML itself is fine)."""

from __future__ import annotations

import pytest

from fedmrg.errors import ConfigError
from fedmrg.report.fl_learner import FedMRGLearner


def test_misspelt_override_key_names_the_overrides():
    learner = FedMRGLearner(overrides={"privcy": {"dp_sgd": {"enabled": True}}})
    with pytest.raises(ConfigError, match=r"with the job's learner `overrides`: unknown key\(s\) `privcy`"):
        learner._load_config()


def test_without_overrides_the_yaml_alone_is_named():
    learner = FedMRGLearner(config="default.yaml")
    assert learner._load_config().model.method == "fedmrg"

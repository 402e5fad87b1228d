"""The learner's former dotted path, kept so that job folders naming ``fedmrg.report.fl_job_learner.JobFedMRGLearner``
still run: ``JobFedMRGLearner`` is :class:`~fedmrg.report.fl_learner.FedMRGLearner` itself (the same class, not a
subclass). New jobs name ``fedmrg.report.fl_learner.FedMRGLearner``.
"""

from __future__ import annotations

from fedmrg.report.fl_learner import FedMRGLearner, check_model_paths, merge_overrides, model_path_keys

JobFedMRGLearner = FedMRGLearner

__all__ = ["JobFedMRGLearner", "check_model_paths", "merge_overrides", "model_path_keys"]

"""A misconfigured site is refused at START_RUN and never trains; privacy fails closed.

Each case writes a site's ``local/fedmrg_site.json``, starts a :class:`SharedStateExecutor` with the ToyLearner on a
minimal engine that knows the job's clients, and sends a train task: the site must refuse it (``EXECUTION_EXCEPTION``,
the reason in the reply's error header naming the file, the dotted key and the remedy) and its learner must never
have trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from fedmrg.fl.constants import FedHeaderKey
from fedmrg.fl.learner import TrainOutcome
from fedmrg.fl.shared_state_executor import SharedStateExecutor
from fedmrg.fl.toy_learner import EVENTS_FILE, ToyLearner

TOY = "fedmrg.fl.toy_learner.ToyLearner"
CLIENTS = ["site-1", "site-2"]
DP = {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0}


class _Client:
    def __init__(self, name: str) -> None:
        self.name = name


def _engine(flare, root: Path, site: str):
    engine = flare.engine(root, site)
    engine.get_clients = lambda: [_Client(c) for c in CLIENTS]  # what FLARE gives a client: the job's clients
    return engine


def _run_train(flare, tmp_path: Path, toy_args: dict, site_file: dict | None, site: str = "site-1"):
    """Start the site with ``site_file`` as its fedmrg_site.json and send one train task; (reply, learner events)."""
    root = tmp_path / site
    (root / "local").mkdir(parents=True)
    if site_file is not None:
        (root / "local" / "fedmrg_site.json").write_text(json.dumps(site_file))
    engine = _engine(flare, root, site)
    ctx = flare.ctx(engine, identity=site)
    exe = SharedStateExecutor(learner_path=TOY, learner_args=toy_args)
    exe.handle_event(EventType.START_RUN, ctx)
    task = DXO(DataKind.WEIGHTS, data=ToyLearner(**toy_args).initial_shared_state()).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, 0)
    reply = exe.execute("train", task, ctx, Signal())
    events_file = Path(engine.workspace.get_app_dir(flare.job_id)) / EVENTS_FILE
    events = (
        [json.loads(line)["event"] for line in events_file.read_text().splitlines()] if events_file.is_file() else []
    )
    return reply, events


@pytest.mark.parametrize(
    ("site_file", "expected"),
    [
        ({"dp-sgd": DP}, r"unknown key `dp-sgd`; did you mean `dp_sgd`"),
        ({"dp_sdg": DP}, r"unknown key `dp_sdg`; did you mean `dp_sgd`"),
        (
            {"sites": {"site-1": {"dp-sgd": DP}}},
            r"unknown key `sites.site-1.dp-sgd`; did you mean `sites.site-1.dp_sgd`",
        ),
        ({"devise": "cuda:0"}, r"unknown key `devise`; did you mean `device`"),
        ({"dp_sgd": {"enabled": True, "noise_multipler": 1.0}}, r"unknown key `dp_sgd.noise_multipler`"),
        ({"sites": {"site-l": {"role": "evaluate"}}}, r"`sites.site-l`: no participant of this job is named 'site-l'"),
        ({"torch_threads": "2"}, r"`torch_threads` must be an int"),
        ({"dp_sgd": {"noise_multiplier": 1.0}}, r"`dp_sgd` has no `enabled`"),
    ],
    ids=[
        "dp-sgd",
        "dp_sdg",
        "site-section-dp-sgd",
        "devise",
        "dp-inner-key",
        "unknown-site",
        "wrong-type",
        "dp-without-enabled",
    ],  # fmt: skip
)
def test_a_misconfigured_site_is_refused_at_start_run_and_never_trains(flare, tmp_path, toy_args, site_file, expected):
    reply, events = _run_train(flare, tmp_path, toy_args, site_file)
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    error = reply.get_header(FedHeaderKey.ERROR)
    assert "site site-1" in error and "fedmrg_site.json" in error  # names the site and the file
    assert __import__("re").search(expected, error), error
    assert "train" not in events and "setup" not in events


def test_a_typo_in_a_site_section_stops_that_site_and_no_other(flare, tmp_path, toy_args):
    """The control: the same path trains at site-1; site-2's misspelt DP key stops site-2 (its own settings)."""
    site_file = {"device": "cpu", "sites": {"site-1": {"torch_threads": 1}, "site-2": {"dp_sdg": DP}}}
    reply, events = _run_train(flare, tmp_path, toy_args, site_file)
    assert reply.get_return_code() == ReturnCode.OK
    assert events == ["setup", "validate", "train"]
    reply, events = _run_train(flare, tmp_path, toy_args, site_file, site="site-2")
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert "unknown key `sites.site-2.dp_sdg`; did you mean `sites.site-2.dp_sgd`" in reply.get_header(
        FedHeaderKey.ERROR
    )
    assert events == []


def test_dp_sgd_with_a_learner_that_cannot_honour_it_never_trains(flare, tmp_path, toy_args):
    """The ToyLearner has no DP-SGD: a site that asks for it refuses the job instead of training without it."""
    reply, events = _run_train(flare, tmp_path, toy_args, {"sites": {"site-1": {"dp_sgd": DP}}})
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    error = reply.get_header(FedHeaderKey.ERROR)
    assert "`dp_sgd.enabled` asks for DP-SGD" in error and "cannot honour" in error and "remove `dp_sgd`" in error
    assert "train" not in events


class _ClaimsDP(ToyLearner):
    """Declares DP-SGD but reports no epsilon: the executor withholds its update."""

    honours_dp_sgd = True


class _ReportsDP(_ClaimsDP):
    def train(self, global_state, *, round_num, extra) -> TrainOutcome:
        out = super().train(global_state, round_num=round_num, extra=extra)
        return TrainOutcome(out.shared_state, out.num_samples, out.metrics | {"dp/epsilon": 0.5}, out.extra)


@pytest.mark.parametrize(
    ("learner", "rc"), [("_ClaimsDP", ReturnCode.EXECUTION_RESULT_ERROR), ("_ReportsDP", ReturnCode.OK)]
)
def test_a_dp_site_never_sends_an_update_without_epsilon(flare, tmp_path, toy_args, monkeypatch, learner, rc):
    import fedmrg.fl.toy_learner as toy

    monkeypatch.setattr(toy, learner, globals()[learner], raising=False)
    root = tmp_path / "site-1"
    (root / "local").mkdir(parents=True)
    (root / "local" / "fedmrg_site.json").write_text(json.dumps({"dp_sgd": DP}))
    engine = _engine(flare, root, "site-1")
    ctx = flare.ctx(engine, identity="site-1")
    exe = SharedStateExecutor(learner_path=f"fedmrg.fl.toy_learner.{learner}", learner_args=toy_args)
    exe.handle_event(EventType.START_RUN, ctx)
    task = DXO(DataKind.WEIGHTS, data=ToyLearner(**toy_args).initial_shared_state()).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, 0)
    reply = exe.execute("train", task, ctx, Signal())
    assert reply.get_return_code() == rc
    if rc != ReturnCode.OK:
        assert "reports no `dp/epsilon`: the update is withheld" in reply.get_header(FedHeaderKey.ERROR)
        assert "DXO" not in reply  # no model in the refusal


def test_the_refusal_names_the_key_under_flares_secure_logging(flare, tmp_path, toy_args, monkeypatch):
    """FLARE's secure logging reduces exceptions to their type; a configuration refusal (no data in it) keeps its
    message, or the hospital could not tell which key to fix."""
    monkeypatch.setenv("NVFLARE_SECURE_LOGGING", "true")
    reply, events = _run_train(flare, tmp_path, toy_args, {"dp-sgd": DP})
    error = reply.get_header(FedHeaderKey.ERROR)
    assert "refused at START_RUN" in error and "unknown key `dp-sgd`; did you mean `dp_sgd`" in error
    assert events == []

"""A site's privacy policy that asks for site-level DP fails closed: a misspelt or invalid ``SiteDPFilter`` setting in
``local/privacy.json`` stops FLARE from building the policy (the site cannot start a job), never a job without DP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nvflare.apis.workspace import Workspace
from nvflare.private.fed.app.fl_conf import create_privacy_manager

POLICY = Path(__file__).resolve().parents[3] / "provisioning" / "privacy.json"


def _policy_with(tmp_path: Path, **changes) -> Workspace:
    policy = json.loads(POLICY.read_text())
    flt = policy["scopes"][0]["task_result_filters"][0]
    for key, value in changes.items():
        if value is None:
            flt["args"].pop(key)
        else:
            flt["args"][key] = value
    if "noise_multipler" in changes:  # the misspelling replaces the real key
        flt["args"].pop("noise_multiplier")
    for sub in ("local", "startup"):
        (tmp_path / sub).mkdir()
    (tmp_path / "local" / "privacy.json").write_text(json.dumps(policy))
    return Workspace(str(tmp_path), "site-1")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"noise_multipler": 1.0}, r"noise_multipler"),  # unknown argument: the filter cannot be built
        ({"enabled": "true"}, r"`enabled` must be a bool"),
        ({"clip_norm": 0.0}, r"`clip_norm` must be a number > 0"),
        ({"delta": 1.5}, r"`delta` must be in \(0, 1\)"),
    ],
    ids=["misspelt-key", "enabled-as-string", "zero-clip", "delta-above-1"],
)
def test_an_invalid_site_dp_policy_is_refused_not_skipped(tmp_path, changes, message):
    workspace = _policy_with(tmp_path, **changes)
    with pytest.raises(Exception, match=message):
        create_privacy_manager(workspace, names_only=False, is_server=False)


def test_the_shipped_policy_builds(tmp_path):
    """The control: the same path with the policy as shipped builds its filter."""
    manager = create_privacy_manager(_policy_with(tmp_path), names_only=False, is_server=False)
    assert manager.is_policy_defined()

"""The example site privacy policy (provisioning/privacy.json) loads through FLARE and builds an enabled SiteDPFilter
for every job; the FedMRG job ships the filter switched off and the learner's DP-SGD off by default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import FilterKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.workspace import Workspace
from nvflare.app_common.app_constant import AppConstants
from nvflare.private.fed.app.fl_conf import create_privacy_manager

from fedmrg.errors import ConfigError
from fedmrg.privacy.dp_config import DPSGDConfig, apply_site_dp_sgd
from fedmrg.privacy.site_dp_filter import SITE_DP_META_KEY, SiteDPFilter
from fedmrg.report.config import AblationConfig, DecoderConfig, FedMRGConfig

ROOT = Path(__file__).resolve().parents[3]
POLICY = ROOT / "provisioning" / "privacy.json"
CLIENT_CONFIG = ROOT / "jobs" / "fedmrg" / "app" / "config" / "config_fed_client.json"


def test_site_policy_forces_an_enabled_site_dp_filter_on_every_job(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "startup").mkdir()
    shutil.copy(POLICY, tmp_path / "local" / "privacy.json")
    manager = create_privacy_manager(Workspace(str(tmp_path), "site-1"), names_only=False, is_server=False)
    assert manager.is_policy_defined()
    # one scope, also the default: a job cannot pick a scope without the filter (an unknown scope is refused)
    assert set(manager.name_to_scopes) == {manager.default_scope.name}
    out_filters = manager.default_scope.task_result_filters[FilterKey.OUT]
    assert [type(f) for f in out_filters] == [SiteDPFilter]
    f = out_filters[0]
    assert f.enabled and f.clip_norm > 0 and f.noise_multiplier > 0 and f.max_epsilon is not None
    # relative ledger path: one budget under the site's workspace root, across jobs
    assert not Path(f.ledger_path).is_absolute() and "{site}" in f.ledger_path

    f.ledger_path = str(tmp_path / "{site}" / "ledger.json")  # the test has no engine to resolve a relative path
    data = {"w": np.full((10, 10), 5.0, dtype=np.float32)}
    shareable = DXO(data_kind=DataKind.WEIGHT_DIFF, data=data).to_shareable()
    shareable.set_header(AppConstants.CURRENT_ROUND, 0)
    out = from_shareable(f.process(shareable, FLContext()))
    assert out.get_meta_prop(SITE_DP_META_KEY)["epsilon"] > 0
    assert not np.array_equal(out.data["w"], data["w"])


def test_job_ships_the_site_filter_switched_off():
    cfg = json.loads(CLIENT_CONFIG.read_text())
    entries = [(chain["tasks"], flt) for chain in cfg["task_result_filters"] for flt in chain["filters"]]
    dp = [(tasks, flt) for tasks, flt in entries if flt["path"].endswith("site_dp_filter.SiteDPFilter")]
    assert len(dp) == 1
    tasks, flt = dp[0]
    assert "train" in tasks and "submit_model" in tasks
    assert flt["args"]["enabled"] is False
    built = SiteDPFilter(**flt["args"])  # the job's arguments are valid, so switching it on is a one-value change
    assert {k: getattr(built, k) for k in flt["args"]} == flt["args"]


def test_dp_sgd_is_off_by_default_and_a_site_can_switch_it_on(tmp_path):
    config = FedMRGConfig(decoder=DecoderConfig(path=str(tmp_path)))
    assert config.privacy.dp_sgd.enabled is False and DPSGDConfig().enabled is False
    with pytest.raises(ConfigError, match="site 'site-1' fedmrg_site.json.*no_contrastive"):
        apply_site_dp_sgd(config, {"enabled": True, "noise_multiplier": 1.0}, site="site-1")
    with pytest.raises(ConfigError, match="unknown key"):
        apply_site_dp_sgd(config, {"enabled": True, "noise": 1.0}, site="site-1")
    plain = FedMRGConfig(decoder=DecoderConfig(path=str(tmp_path)), ablations=AblationConfig(no_contrastive=True))
    on = apply_site_dp_sgd(plain, {"enabled": True, "noise_multiplier": 1.0, "max_epsilon": 8}, site="site-1")
    assert on.privacy.dp_sgd.enabled and on.privacy.dp_sgd.max_epsilon == 8.0 and not plain.privacy.dp_sgd.enabled

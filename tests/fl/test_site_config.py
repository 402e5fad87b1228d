"""fedmrg_site.json: typed and strict (unknown keys, types, site names, contradictions refused), data-root precedence."""

from __future__ import annotations

import json

import pytest

from fedmrg.errors import ConfigError
from fedmrg.fl.site_config import SiteConfig, load_site_config, resolve_data_root, site_env_var
from fedmrg.privacy.dp_config import DPSGDConfig


def test_site_env_var_name():
    assert site_env_var("site-1") == "FEDMRG_DATA_ROOT_SITE_1"
    assert site_env_var("Hospital A.b") == "FEDMRG_DATA_ROOT_HOSPITAL_A_B"


@pytest.mark.parametrize(
    ("environ", "site_cfg", "template", "expected", "source"),
    [
        ({}, {}, "/data/{site}", "/data/site-1", "job data_root_template"),
        ({}, {"data_root": "/local/{site}/x"}, "/data/{site}", "/local/site-1/x", "fedmrg_site.json"),
        ({"FEDMRG_DATA_ROOT": "/env/{site}"}, {"data_root": "/local"}, "/data", "/env/site-1", "$FEDMRG_DATA_ROOT"),
        (
            {"FEDMRG_DATA_ROOT": "/env", "FEDMRG_DATA_ROOT_SITE_1": "/mine"},
            {},
            "/data",
            "/mine",
            "$FEDMRG_DATA_ROOT_SITE_1",
        ),
        ({"FEDMRG_DATA_ROOT_SITE_2": "/other"}, {}, "", "", "none"),
        ({}, {}, "rel/{site}", "BASE/rel/site-1", "job data_root_template"),
    ],
)
def test_resolve_data_root_precedence(tmp_path, environ, site_cfg, template, expected, source):
    site_config = SiteConfig(site="site-1", **site_cfg)
    path, src = resolve_data_root(template, "site-1", site_config=site_config, environ=environ, base_dir=tmp_path)
    assert path == expected.replace("BASE", str(tmp_path))
    assert src == source


def test_bad_placeholder_names_source(tmp_path):
    with pytest.raises(ConfigError, match=r"from job data_root_template.*only the placeholder \{site\}"):
        resolve_data_root("/d/{hospital}", "s", site_config=SiteConfig(site="s"), environ={}, base_dir=tmp_path)


def _write(tmp_path, cfg) -> None:
    (tmp_path / "fedmrg_site.json").write_text(json.dumps(cfg))


def test_load_site_config(tmp_path):
    assert load_site_config(tmp_path, "s") == SiteConfig(site="s")  # no file: every default
    _write(tmp_path, {"data_root": "/x", "device": "cuda:1"})
    cfg = load_site_config(tmp_path, "s")
    assert (cfg.data_root, cfg.device, cfg.role, cfg.explicit_keys) == (
        "/x",
        "cuda:1",
        "train",
        ("data_root", "device"),
    )
    assert cfg.source == str(tmp_path / "fedmrg_site.json")
    (tmp_path / "fedmrg_site.json").write_text("{not json")
    with pytest.raises(ConfigError, match="fedmrg_site.json: not readable as JSON"):
        load_site_config(tmp_path, "s")
    _write(tmp_path, {"data_root": 3})
    with pytest.raises(
        ConfigError, match=r"fedmrg_site.json: `data_root` must be a str.*fix it in .*docs/configuration.md"
    ):
        load_site_config(tmp_path, "s")


def test_site_sections_win_over_the_top_level(tmp_path):
    _write(tmp_path, {"device": "cpu", "sites": {"unseen-1": {"role": "evaluate", "device": "cuda:0"}}})
    unseen = load_site_config(tmp_path, "unseen-1")
    assert (unseen.device, unseen.role) == ("cuda:0", "evaluate")
    site = load_site_config(tmp_path, "site-1")
    assert (site.device, site.role) == ("cpu", "train")
    _write(tmp_path, {"sites": {"s": {"role": "observer"}}})
    with pytest.raises(ConfigError, match=r"`sites.s.role` must be one of \['train', 'evaluate'\], got 'observer'"):
        load_site_config(tmp_path, "s")
    _write(tmp_path, {"sites": ["s"]})
    with pytest.raises(ConfigError, match="`sites` must map a site name"):
        load_site_config(tmp_path, "s")


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"dp-sgd": {"enabled": True}}, r"unknown key `dp-sgd`; did you mean `dp_sgd`\? correct or remove it"),
        ({"dp_sdg": {"enabled": True}}, r"unknown key `dp_sdg`; did you mean `dp_sgd`"),
        (
            {"sites": {"site-1": {"dp-sgd": {}}}},
            r"unknown key `sites.site-1.dp-sgd`; did you mean `sites.site-1.dp_sgd`",
        ),
        ({"sites": {"site-1": {"dp_sdg": {}}}}, r"unknown key `sites.site-1.dp_sdg`"),
        ({"devise": "cuda:0"}, r"unknown key `devise`; did you mean `device`"),
        ({"sites": {"site-1": {"sites": {}}}}, r"unknown key `sites.site-1.sites`"),
        ({"dp_sgd": {"enabled": True, "sigma": 1.0}}, r"unknown key `dp_sgd.sigma`"),
        (
            {"sites": {"site-l": {"device": "cpu"}}},
            r"`sites.site-l`: no participant of this job is named 'site-l' "
            r"\(participants: site-1, site-2\); did you mean",
        ),
        ({"torch_threads": "2"}, r"`torch_threads` must be an int, got str '2'"),
        ({"torch_threads": -1}, r"`torch_threads` must be >= 0"),
        ({"device": "gpu"}, r"`device` must be cpu, cuda, cuda:N"),
        ({"test_split": ""}, r"`test_split` must be a non-empty str"),
        ({"model_paths": {"decoder.path": 3}}, r"`model_paths.decoder.path` must be a str"),
        ({"dp_sgd": {"noise_multiplier": 1.0}}, r"`dp_sgd` has no `enabled`"),
        ({"dp_sgd": {"enabled": True}}, r"`dp_sgd`: give exactly one of `noise_multiplier` and `target_epsilon`"),
        (
            {"sites": {"site-1": {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0, "delta": 2.0}}}},
            r"`sites.site-1.dp_sgd.delta` must be in \(0, 1\)",
        ),
        # contradiction only after merging: the top level's sigma plus the section's target epsilon
        (
            {
                "dp_sgd": {"enabled": True, "noise_multiplier": 1.0},
                "sites": {"site-1": {"dp_sgd": {"target_epsilon": 3.0}}},
            },
            r"give exactly one of `noise_multiplier` and `target_epsilon`",
        ),
    ],
)
def test_refusals_name_the_file_the_key_and_the_remedy(tmp_path, cfg, message):
    """site-1 reads the file: the top level and its own section are checked, and every section name."""
    _write(tmp_path, cfg)
    with pytest.raises(ConfigError, match=message) as info:
        load_site_config(tmp_path, "site-1", participants=["site-1", "site-2"])
    assert str(tmp_path / "fedmrg_site.json") in str(info.value)


def test_a_typo_in_another_sites_section_stops_that_site_only(tmp_path):
    """As in a provisioned federation, where hospital B's typo is in hospital B's own file."""
    _write(tmp_path, {"device": "cpu", "sites": {"site-2": {"dp_sdg": {"enabled": True}}}})
    assert load_site_config(tmp_path, "site-1", participants=["site-1", "site-2"]).device == "cpu"
    with pytest.raises(ConfigError, match=r"unknown key `sites.site-2.dp_sdg`; did you mean `sites.site-2.dp_sgd`"):
        load_site_config(tmp_path, "site-2", participants=["site-1", "site-2"])


def test_site_names_are_checked_only_against_a_known_list(tmp_path):
    _write(tmp_path, {"sites": {"hospital-b": {"device": "cpu"}}})
    # the server's persistor reads its own section only and passes no list: not checked there
    assert load_site_config(tmp_path, "server").device is None
    with pytest.raises(ConfigError, match="no participant of this job is named 'hospital-b'"):
        load_site_config(tmp_path, "hospital-a", participants=["hospital-a"])
    assert load_site_config(tmp_path, "hospital-b", participants=["hospital-a", "hospital-b"]).device == "cpu"


def test_dp_sgd_sections_merge_key_by_key(tmp_path):
    """A section that tunes one DP value keeps the top level's `enabled`: it can never read as "DP off"."""
    _write(
        tmp_path,
        {
            "dp_sgd": {"enabled": True, "noise_multiplier": 1.0},
            "sites": {"site-2": {"dp_sgd": {"max_epsilon": 4.0}}, "site-3": {"dp_sgd": {"enabled": False}}},
        },
    )
    two = load_site_config(tmp_path, "site-2")
    assert two.requires_dp_sgd and two.dp_sgd == DPSGDConfig(enabled=True, noise_multiplier=1.0, max_epsilon=4.0)
    assert load_site_config(tmp_path, "site-1").requires_dp_sgd
    assert not load_site_config(tmp_path, "site-3").requires_dp_sgd  # said explicitly, for that section

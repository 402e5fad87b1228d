"""Data-root resolution: environment > site file > job template, with {site} and relative paths."""

from __future__ import annotations

import json

import pytest

from fedmrg.errors import ConfigError
from fedmrg.fl.site_config import load_site_config, resolve_data_root, site_env_var


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
    path, src = resolve_data_root(template, "site-1", site_config=site_cfg, environ=environ, base_dir=tmp_path)
    assert path == expected.replace("BASE", str(tmp_path))
    assert src == source


def test_bad_placeholder_names_source(tmp_path):
    with pytest.raises(ConfigError, match=r"from job data_root_template.*only the placeholder \{site\}"):
        resolve_data_root("/d/{hospital}", "s", site_config={}, environ={}, base_dir=tmp_path)


def test_load_site_config(tmp_path):
    assert load_site_config(tmp_path) == {}
    (tmp_path / "fedmrg_site.json").write_text(json.dumps({"data_root": "/x", "device": "cuda:1"}))
    assert load_site_config(tmp_path) == {"data_root": "/x", "device": "cuda:1"}
    (tmp_path / "fedmrg_site.json").write_text("{not json")
    with pytest.raises(ConfigError, match="fedmrg_site.json: not readable as JSON"):
        load_site_config(tmp_path)
    (tmp_path / "fedmrg_site.json").write_text(json.dumps({"data_root": 3}))
    with pytest.raises(ConfigError, match="`data_root` must be a str"):
        load_site_config(tmp_path)


def test_site_sections_win_over_the_top_level(tmp_path):
    cfg = {"device": "cpu", "sites": {"unseen-1": {"role": "evaluate", "device": "cuda:0"}}}
    (tmp_path / "fedmrg_site.json").write_text(json.dumps(cfg))
    assert load_site_config(tmp_path, "unseen-1") == {"device": "cuda:0", "role": "evaluate"}
    assert load_site_config(tmp_path, "site-1") == {"device": "cpu"}
    (tmp_path / "fedmrg_site.json").write_text(json.dumps({"sites": {"s": {"role": "observer"}}}))
    with pytest.raises(ConfigError, match="`role` must be one of"):
        load_site_config(tmp_path, "s")
    (tmp_path / "fedmrg_site.json").write_text(json.dumps({"sites": ["s"]}))
    with pytest.raises(ConfigError, match="`sites` must map a site name"):
        load_site_config(tmp_path, "s")

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from fedmrg.config import from_dict, load_config
from fedmrg.errors import ConfigError


@dataclass
class Inner:
    r: int = 16
    targets: list[str] = field(default_factory=lambda: ["q_proj"])


@dataclass
class Outer:
    name: str = "x"
    lr: float = 1e-4
    mode: Literal["llm", "clm"] = "llm"
    model_dir: str | None = field(default=None, metadata={"path": "dir"})
    inner: Inner = field(default_factory=Inner)


def test_valid_config_with_nested_and_int_to_float(tmp_path):
    (tmp_path / "m").mkdir()
    p = tmp_path / "c.yaml"
    p.write_text("lr: 1\nmode: clm\nmodel_dir: m\ninner:\n  r: 8\n  targets: [a, b]\n")
    cfg = load_config(p, Outer)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.inner == Inner(8, ["a", "b"])
    assert cfg.model_dir == str(tmp_path / "m")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lrr": 1}, r"unknown key\(s\) `lrr`"),
        ({"inner": {"rank": 1}}, r"`inner.rank`"),
        ({"lr": "fast"}, r"`lr` must be a number"),
        ({"inner": {"r": 1.5}}, r"`inner.r` must be an int"),
        ({"mode": "big"}, r"`mode` must be one of"),
        ({"inner": {"targets": "q"}}, r"`inner.targets` must be a list"),
        ({"model_dir": "nowhere"}, r"`model_dir`: dir not found"),
    ],
)
def test_errors_name_the_key(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data, source="c.yaml", base_dir=tmp_path)


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", Outer)
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p, Outer)

from __future__ import annotations

import pytest

from fedmrg.config import from_dict, load_config
from fedmrg.errors import ConfigError
from fedmrg.report.config import AblationConfig, DecoderConfig, FedMRGConfig


def _write(tmp_path, text: str):
    p = tmp_path / "fedmrg.yaml"
    p.write_text(text)
    return p


def test_yaml_loads_with_defaults_and_relative_decoder_path(tmp_path):
    (tmp_path / "lm").mkdir()
    cfg = load_config(_write(tmp_path, "decoder: {path: lm}\nlosses: {lambda_cls: 2}\n"), FedMRGConfig)
    assert cfg.decoder.path == str(tmp_path / "lm")
    assert cfg.losses.lambda_cls == 2.0 and cfg.losses.temperature == 0.07
    assert (cfg.adapter.r, cfg.adapter.alpha, cfg.adapter.dropout) == (16, 16, 0.1)
    assert cfg.adapter.target_modules == ["q_proj", "v_proj"]
    assert cfg.method == "fedmrg" and cfg.alpha_mix == 0.5 and cfg.generation.num_beams == 3
    assert cfg.uses_specialized and cfg.uses_prompts and cfg.uses_contrastive
    assert cfg.kd_specialized_to_generic and cfg.kd_generic_to_specialized


def test_missing_model_directory_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"decoder\.path.*nope"):
        load_config(_write(tmp_path, "decoder: {path: nope}\n"), FedMRGConfig)
    with pytest.raises(ConfigError, match=r"encoder\.path.*gone"):
        (tmp_path / "lm").mkdir()
        load_config(_write(tmp_path, "decoder: {path: lm}\nencoder: {path: gone}\n"), FedMRGConfig)


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("method: fedlora\nablations: {no_prompts: true}\n", "ablations.no_prompts"),
        ("method: full\ndecoder: {path: lm, mode: llm}\n", "decoder.mode"),
        ("alpha_mix: 1.5\n", "alpha_mix"),
        ("losses: {temperature: 0}\n", "losses.temperature"),
        ("losses: {finding_weight: 0}\n", "losses.finding_weight"),
        ("adapter: {dropout: 1.0}\n", "adapter.dropout"),
        ("adapter: {target_modules: []}\n", "adapter.target_modules"),
        ("encoder: {image_size: 16}\n", "encoder.image_size"),
        ("method: fedfoo\n", "method"),
        ("encoder: {preset: resnet-7}\n", "encoder.preset"),
    ],
)
def test_bad_values_name_their_key(tmp_path, yaml_text, key):
    (tmp_path / "lm").mkdir()
    text = yaml_text if "decoder:" in yaml_text else "decoder: {path: lm}\n" + yaml_text
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(_write(tmp_path, text), FedMRGConfig)


def test_decoder_path_is_required():
    with pytest.raises(ConfigError, match=r"decoder\.path.*required"):
        from_dict(FedMRGConfig, {"decoder": {"mode": "llm"}})


def test_ablations_switch_components_off():
    cfg = FedMRGConfig(
        decoder=DecoderConfig(path="x"), ablations=AblationConfig(no_specialized=True, no_contrastive=True)
    )
    assert not cfg.uses_specialized and not cfg.uses_contrastive and cfg.uses_prompts
    assert not cfg.kd_specialized_to_generic and not cfg.kd_generic_to_specialized
    cfg = FedMRGConfig(decoder=DecoderConfig(path="x"), ablations=AblationConfig(no_kd_g2s=True))
    assert cfg.kd_specialized_to_generic and not cfg.kd_generic_to_specialized
    assert FedMRGConfig(decoder=DecoderConfig(path="x"), method="fedprefix").peft_type == "prefix"
    assert not FedMRGConfig(decoder=DecoderConfig(path="x"), method="fedlora").uses_prompts

"""`model_paths` in a participant's own fedmrg_site.json: its model directories, at the sites and on the server.

The tests write small Hugging Face model folders (a tiny Llama with a word-level tokenizer, a tiny ResNet) standing
for a hospital's model files: the job's, a hospital's copy of them, and two of another architecture (one more decoder
layer: other shared keys; a wider encoder: same keys, other shapes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.event_type import EventType
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, ResNetConfig, ResNetModel

from fedmrg.errors import ConfigError
from fedmrg.fl.learner import check_state
from fedmrg.fl.shared_state_persistor import SharedStatePersistor
from fedmrg.fl.site_config import SiteConfig
from fedmrg.report.diagnosis_prompt import PROMPT_VOCABULARY
from fedmrg.report.encoder import ENCODER_PRESETS
from fedmrg.report.fl_learner import FedMRGLearner, check_model_paths, model_path_keys
from fedmrg.report.shared_state import load_shared_state

LEARNER = "fedmrg.report.fl_learner.FedMRGLearner"


def _save_decoder(path: Path, num_layers: int) -> str:
    words = sorted({*PROMPT_VOCABULARY.split(), "the", "heart", "is", "normal", ".", "lungs", "clear", "effusion"})
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _save_encoder(path: Path, hidden_sizes: list[int]) -> str:
    preset = dict(ENCODER_PRESETS["resnet-tiny"], hidden_sizes=hidden_sizes)
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(num_channels=3, **preset)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Model folders by role: ``{"job": {...}, "copy": {...}, "deeper": {...}, "wider": {...}}`` (dotted keys)."""
    tmp = tmp_path_factory.mktemp("models")
    sizes = ENCODER_PRESETS["resnet-tiny"]["hidden_sizes"]
    job = {
        "decoder.path": _save_decoder(tmp / "job" / "decoder", 2),
        "encoder.path": _save_encoder(tmp / "job" / "encoder", sizes),
    }
    copy = {k: str(tmp / "hospital" / Path(v).name) for k, v in job.items()}
    for k, v in job.items():
        shutil.copytree(v, copy[k])
    return {
        "job": job,
        "copy": copy,
        "deeper": {"decoder.path": _save_decoder(tmp / "deeper", 3)},
        "wider": {"encoder.path": _save_encoder(tmp / "wider", [8, 24, 24, 48])},  # same blocks, wider
    }


def _overrides(dirs) -> dict:
    """What a job would say: its own model folders (the tests' stand-in for ``builtin``)."""
    return {"encoder": {"path": dirs["job"]["encoder.path"], "image_size": 32},
            "decoder": {"path": dirs["job"]["decoder.path"]}}  # fmt: skip


def _learner(dirs, model_paths: dict[str, str] | None = None) -> FedMRGLearner:
    learner = FedMRGLearner(overrides=_overrides(dirs))
    if model_paths is not None:
        learner.apply_site_config(SiteConfig(site="hospital-a", model_paths=model_paths, device="cpu"))
    return learner


def test_model_path_keys_are_the_model_directories():
    assert model_path_keys() == ["decoder.path", "encoder.path"]


def test_bad_model_paths_name_the_site_file_and_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"fedmrg_site.json `model_paths`: unknown key 'decoder.pth'.*decoder.path"):
        check_model_paths({"decoder.pth": str(tmp_path)})
    with pytest.raises(ConfigError, match=rf"fedmrg_site.json .*`encoder.path`: directory not found: {tmp_path}/nope"):
        check_model_paths({"encoder.path": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="absolute path"):
        check_model_paths({"decoder.path": "models/llama"})
    with pytest.raises(ConfigError, match="must map"):
        check_model_paths(["decoder.path"])
    assert check_model_paths({"decoder.path": "builtin-tiny", "encoder.path": str(tmp_path)}) == {
        "decoder.path": "builtin-tiny",
        "encoder.path": str(tmp_path),
    }


def test_setup_refuses_a_bad_key_before_anything_else(tmp_path):
    learner = FedMRGLearner(overrides={"decoder": {"path": "builtin-tiny"}})  # never resolved: nothing is built
    site = SiteConfig(site="hospital-a", source="/kit/local/fedmrg_site.json", data_root=str(tmp_path),
                      model_paths={"model.path": "/"})  # fmt: skip
    with pytest.raises(ConfigError, match=r"/kit/local/fedmrg_site.json `model_paths`: unknown key 'model.path'"):
        learner.setup("hospital-a", str(tmp_path), site)


def test_site_directories_replace_the_jobs_and_give_the_same_model(dirs):
    job_learner = _learner(dirs)
    job_cfg = job_learner._load_config()
    site = _learner(dirs, dirs["copy"])
    cfg = site._load_config()
    assert cfg.model.decoder.path == dirs["copy"]["decoder.path"] != job_cfg.model.decoder.path
    assert cfg.model.encoder.path == dirs["copy"]["encoder.path"] != job_cfg.model.encoder.path
    # the same model files in another folder: the same initial model, key for key
    a, b = job_learner.initial_shared_state(), site.initial_shared_state()
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_server_persistor_builds_the_initial_model_from_its_own_site_file(flare, tmp_path, dirs):
    engine = flare.engine(tmp_path / "server", "fedmrg-server")
    site_file = tmp_path / "server" / "local" / "fedmrg_site.json"
    site_file.write_text(json.dumps({"model_paths": dirs["deeper"]}))
    ctx = flare.ctx(engine, identity="fedmrg-server")
    p = SharedStatePersistor(learner_path=LEARNER, learner_args={"overrides": _overrides(dirs)})
    p.handle_event(EventType.START_RUN, ctx)
    state, source = p._initial_state(ctx)
    assert "model_paths of fedmrg_site.json" in source and dirs["deeper"]["decoder.path"] in source  # in the log
    assert sorted(state) == sorted(_learner(dirs, dirs["deeper"]).shared_keys())
    assert sorted(state) != sorted(_learner(dirs).shared_keys())  # the job's folders alone: a 2-layer decoder

    site_file.write_text(json.dumps({"model_paths": {"decoder": "/"}}))
    with pytest.raises(ConfigError, match="fedmrg_site.json `model_paths`: unknown key 'decoder'"):
        p._initial_state(ctx)


def test_a_site_with_another_architecture_refuses_the_global_model(dirs):
    server_state = _learner(dirs).initial_shared_state()
    # one more decoder layer: the executor's key check on the received model names the missing keys
    deeper = _learner(dirs, dirs["deeper"])
    with pytest.raises(ValueError, match=r"model received \(site hospital-b\).*missing \[?\S*layers\.2\."):
        check_state(server_state, sorted(deeper.shared_keys()), what="model received (site hospital-b)")
    # a wider encoder: the same keys, other shapes; loading into the site's model names a key and both shapes
    wider = _learner(dirs, dirs["wider"])
    assert sorted(wider.shared_keys()) == sorted(server_state)
    with pytest.raises(ValueError, match=r"shape mismatch for \d+ key\(s\), e.g. `encoder\..*got \(.*expected \("):
        load_shared_state(wider._build_model(), {k: torch.from_numpy(v) for k, v in server_state.items()})

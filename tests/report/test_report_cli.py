"""``fedmrg train / evaluate / generate / inspect-model`` end to end on a tiny synthetic federation."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from fedmrg.cli import main


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir):
    """A 2-site synthetic dataset (64 px) and a config with the tiny test Llama and ResNet (built-in keywords are
    tested in test_trainer_data.py)."""
    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDMRG_CACHE", str(root / "cache"))
        data = root / "data"
        rc = main(["data", "prepare", "--source", "synthetic", "--num-studies", "40", "--sites", "2",
                   "--unseen-sites", "1", "--image-size", "64", "--seed", "0", "--out", str(data)])  # fmt: skip
        assert rc == 0
        config = root / "tiny.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "encoder": {"preset": "resnet-tiny", "image_size": 64},
                    "decoder": {"path": str(tiny_llama_dir), "mode": "llm", "max_report_tokens": 48},
                    "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
                    "memory_bank": {"upload_per_round": 4},
                    "generation": {"num_beams": 1, "max_new_tokens": 16},
                    "training": {"batch_size": 4, "learning_rate": 3e-3, "rounds": 2, "local_steps": 2},
                }
            )
        )
        run = root / "run"
        rc = main(["train", "--config", str(config), "--data", str(data), "--centralized", "--out", str(run),
                   "--no-progress"])  # fmt: skip
        assert rc == 0
        yield {"root": root, "data": data, "config": config, "run": run, "mp": mp}


def test_train_writes_a_run_folder(env):
    run = env["run"]
    for name in ("config.yaml", "shared_state.safetensors", "private/centralized.safetensors", "checkpoint.json",
                 "peft/generic/adapter_config.json", "peft/centralized/spec_local/adapter_model.safetensors"):  # fmt: skip
        assert (run / name).is_file(), name
    history = [json.loads(line) for line in (run / "train_metrics.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == [0, 1]
    assert all(h["num_samples"] == 8 and h["skipped_batches"] == 0 and h["val/lm_loss"] > 0 for h in history)
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["rounds"] == 2
    assert list((run / "tb").glob("events.out.tfevents.*"))


def test_evaluate_writes_metrics_and_predictions(env, capsys):
    out = env["root"] / "eval"
    rc = main(["evaluate", "--checkpoint", str(env["run"]), "--data", str(env["data"]), "--split", "test",
               "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert summary["n_studies"] == len(rows) > 0 and summary["adapter"] == "mixed"
    assert {"BLEU_4", "CE_F1"} <= set(summary["headline"]) and "report" in summary["baseline_most_frequent_report"]
    assert summary["metrics"]["n_reports"] == len(rows)
    assert all(len(r["states"]) == 14 for r in rows)
    assert "BLEU_4" in capsys.readouterr().out


def test_evaluate_an_unseen_site_with_the_generic_adapter(env):
    out = env["root"] / "eval-unseen"
    rc = main(["evaluate", "--checkpoint", str(env["run"]), "--data", str(env["data"]), "--site", "unseen-1",
               "--split", "test", "--generic-only", "--limit", "3", "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["adapter"] == "generic" and summary["n_studies"] == 3


def test_evaluate_with_reranking_never_lowers_agreement_with_the_head(env):
    from fedmrg.observations import OBSERVATIONS, State
    from fedmrg.report.rerank import positive_agreement

    def agreement(out):
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        names = {s.name.lower(): int(s) for s in State}
        return [positive_agreement([names[r["states"][o]["state"]] for o in OBSERVATIONS], r["prediction"])
                for r in rows]  # fmt: skip

    scores = {}
    for k in (0, 6):
        out = env["root"] / f"eval-rerank{k}"
        rc = main(["evaluate", "--checkpoint", str(env["run"]), "--data", str(env["data"]), "--split", "train",
                   "--limit", "6", "--rerank-samples", str(k), "--out", str(out), "--no-progress"])  # fmt: skip
        assert rc == 0
        scores[k] = agreement(out)
    assert len(scores[6]) == 6 and all(b >= a for a, b in zip(scores[0], scores[6], strict=True))
    with pytest.raises(SystemExit):
        main(["evaluate", "--checkpoint", str(env["run"]), "--data", str(env["data"]), "--rerank-samples", "-1"])


def test_generate_prints_report_and_states(env, capsys):
    image = next((env["data"] / "images").glob("*.png"))
    rc = main(["generate", "--checkpoint", str(env["run"]), "--json", str(image), str(image)])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and lines[0]["report"] == lines[1]["report"]
    observations = lines[0]["observations"]
    assert len(observations) == 14 and all(
        o["state"] in ("blank", "positive", "negative", "uncertain")
        and o["probability"] == o["probabilities"][o["state"]]
        for o in observations
    )
    assert lines[0]["adapter"] == "mixed" and lines[0]["site"] == "centralized"


def test_bad_inputs_give_clear_errors(env, capsys, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    assert main(["generate", "--checkpoint", str(env["run"]), str(broken)]) == 1
    assert "broken.png" in capsys.readouterr().err

    missing = tmp_path / "no-such-llama"
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text(yaml.safe_dump({"decoder": {"path": str(missing)}}))
    assert main(["train", "--config", str(bad_config), "--data", str(env["data"]), "--site", "site-1",
                 "--out", str(tmp_path / "r")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "`decoder.path`" in err and str(missing) in err

    data = tmp_path / "data"
    shutil.copytree(env["data"], data)
    train = data / "sites" / "site-1" / "train.jsonl"
    lines = train.read_text().splitlines()
    first = json.loads(lines[0])
    first["findings"] = first["impression"] = ""
    train.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    assert main(["train", "--config", str(env["config"]), "--data", str(data), "--site", "site-1",
                 "--out", str(tmp_path / "r2"), "--no-progress"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "empty report" in err and first["study_id"] in err

    assert main(["evaluate", "--checkpoint", str(tmp_path), "--data", str(env["data"])]) == 1
    assert f"{tmp_path}: no FedMRG model found" in capsys.readouterr().err


def test_inspect_model_counts_llama2_7b_without_weights(capsys):
    assert main(["inspect-model", "--config", "llama2-7b.yaml", "--meta", "--decoder-shape", "llama-2-7b"]) == 0
    out = capsys.readouterr().out
    assert "59,420,792" in out and "meta device" in out
    assert main(["inspect-model", "--config", "llama2-7b.yaml", "--meta"]) == 1  # placeholder path, no shape
    assert "--decoder-shape" in capsys.readouterr().err


def test_inspect_model_json_on_a_real_config(env, capsys):
    assert main(["inspect-model", "--config", str(env["config"]), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["decoder_mode"] == "llm" and counts["private"]["parameters"] > 0
    assert counts["trainable"]["parameters"] == counts["shared"]["parameters"] + counts["private"]["parameters"]
    assert counts["shared_share_of_total"] < 1.0


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("train", "evaluate", "generate", "inspect-model"))


def test_train_calibrates_the_head_when_asked(env, capsys):
    from safetensors.torch import load_file

    from fedmrg.report.head_calibration import ABSENT_STATE_BIAS

    config = yaml.safe_load(env["config"].read_text())
    config["training"] |= {"head_calibration": "lda", "rounds": 1, "local_steps": 1}
    path = env["root"] / "lda.yaml"
    path.write_text(yaml.safe_dump(config))
    run = env["root"] / "run-lda"
    assert main(["train", "--config", str(path), "--data", str(env["data"]), "--site", "site-1", "--out", str(run),
                 "--no-progress"]) == 0  # fmt: skip
    assert "diagnosis head calibrated (LDA) on the pooled features of" in capsys.readouterr().err
    bias = load_file(str(run / "shared_state.safetensors"))["diagnosis_head.linear.bias"]
    assert (bias == ABSENT_STATE_BIAS).any()  # fitted from statistics: a state no study had is never predicted
    before = load_file(str(env["run"] / "shared_state.safetensors"))["diagnosis_head.linear.bias"]
    assert not (before == ABSENT_STATE_BIAS).any()  # a trained head has no such bias

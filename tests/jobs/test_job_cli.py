"""`fedmrg job`: allow-list from a job's components, variants by overrides, learner override merging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmrg.cli import main
from fedmrg.errors import ConfigError
from fedmrg.job import allow_list, job_class_paths, write_variant
from fedmrg.paths import REPO_ROOT
from fedmrg.report.fl_job_learner import merge_overrides

JOB = Path(REPO_ROOT) / "jobs" / "fedmrg"


def _cfg(job: Path, side: str) -> dict:
    return json.loads((job / "app" / "config" / f"config_fed_{side}.json").read_text())


def test_allow_list_names_component_classes_not_data_paths():
    paths = job_class_paths(JOB)
    assert "fedmrg.fl.shared_state_executor.SharedStateExecutor" in paths
    assert all("." in p and not p.startswith(("builtin", "/")) for p in paths)
    allowed = allow_list(JOB, extra=["wire_recorder.WireRecorder"])
    assert allowed[0] == "fedmrg." and "wire_recorder.WireRecorder" in allowed
    assert not any(p.startswith("fedmrg.") and p != "fedmrg." for p in allowed)
    assert "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval" in allowed


def test_workspace_command_writes_and_extends_resources(tmp_path):
    ws = tmp_path / "ws"
    (ws / "local").mkdir(parents=True)
    (ws / "local" / "resources.json").write_text(json.dumps({"class_allow_list": ["mine.Filter"], "x": 1}))
    assert main(["job", "workspace", str(JOB), "-w", str(ws)]) == 0
    res = json.loads((ws / "local" / "resources.json").read_text())
    assert res["x"] == 1 and res["class_allow_list"][:2] == ["mine.Filter", "fedmrg."]


def test_variant_applies_overrides_on_both_sides(tmp_path):
    out = write_variant(JOB, tmp_path / "v", ["rounds=3", "min_clients=3", "learner.overrides.method=fedlora",
                                             "learner.local_steps=5", "server.model_selector.key_metric=ce_f1"])  # fmt: skip
    server, client = _cfg(out, "server"), _cfg(out, "client")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["name"] == "v" and meta["min_clients"] == 3
    sag = server["workflows"][0]["args"]
    assert sag["num_rounds"] == 3 and sag["min_clients"] == 3
    persistor = next(c for c in server["components"] if c["id"] == "persistor")["args"]["learner_args"]
    learner = client["executors"][0]["executor"]["args"]["learner_args"]
    for args in (persistor, learner):
        assert args["overrides"]["method"] == "fedlora" and args["overrides"]["training"]["rounds"] == 3
    assert learner["local_steps"] == 5 and "local_steps" not in persistor
    assert next(c for c in server["components"] if c["id"] == "model_selector")["args"]["key_metric"] == "ce_f1"
    # the base job is untouched
    assert _cfg(JOB, "server")["workflows"][0]["args"]["num_rounds"] != 3


@pytest.mark.parametrize("bad", ["nokey", "unknown.x=1", "server.nosuch.x=1"])
def test_variant_rejects_bad_overrides(tmp_path, bad):
    with pytest.raises(ConfigError):
        write_variant(JOB, tmp_path / "v", [bad])


def test_merge_overrides_is_recursive_and_copies():
    base = {"training": {"batch_size": 8, "lr": 1.0}, "method": "fedmrg"}
    merged = merge_overrides(base, {"training": {"batch_size": 2}, "method": "fedlora"})
    assert merged == {"training": {"batch_size": 2, "lr": 1.0}, "method": "fedlora"}
    assert base["training"]["batch_size"] == 8


def test_variant_switches_secure_aggregation_on(tmp_path):
    out = write_variant(JOB, tmp_path / "v", ["secure_aggregation=true", "secure_aggregation.clip_norm=2.0"])
    server, client = _cfg(out, "server"), _cfg(out, "client")
    workflow = server["workflows"][0]
    assert workflow["path"].endswith("SecureScatterAndGather") and workflow["args"]["clip_norm"] == 2.0
    assert next(c for c in server["components"] if c["id"] == "aggregator")["path"].endswith("SecureAggregator")
    filters = [f["path"] for g in server["task_data_filters"] for f in g["filters"]]
    assert not [f for f in filters if f.endswith("ExtraPayloadRelay")]  # patient-derived features stay home
    learner = client["executors"][0]["executor"]["args"]["learner_args"]
    assert learner["overrides"]["memory_bank"]["upload_per_round"] == 0
    # off unless asked for
    plain = _cfg(write_variant(JOB, tmp_path / "p", ["rounds=2"]), "server")
    assert not plain["workflows"][0]["path"].endswith("SecureScatterAndGather")


def test_variant_switches_the_site_dp_filter_on(tmp_path):
    out = write_variant(JOB, tmp_path / "v", ["site_dp=true", "site_dp.noise_multiplier=0.5"])
    filters = [f for g in _cfg(out, "client")["task_result_filters"] for f in g["filters"]]
    dp = [f["args"] for f in filters if f["path"].endswith("SiteDPFilter")]
    assert dp and all(a["enabled"] is True and a["noise_multiplier"] == 0.5 for a in dp)
    base = [f for g in _cfg(JOB, "client")["task_result_filters"] for f in g["filters"]]
    assert all(f["args"]["enabled"] is False for f in base if f["path"].endswith("SiteDPFilter"))  # off by default


def test_simulator_command_names_sites_by_count_or_by_name():
    import sys

    from fedmrg.job import simulator_command

    head = [sys.executable, "-m", "nvflare.cli", "simulator", "J", "-w", "W"]
    assert simulator_command("J", "W", sites=3) == [*head, "-n", "3", "-t", "3"]
    assert simulator_command("J", "W", sites=["site-1", "unseen-1"], threads=1) == [
        *head, "-c", "site-1,unseen-1", "-t", "1"
    ]  # fmt: skip


TINY_OVERRIDES = json.dumps({"training": {"batch_size": 2}, "encoder": {"image_size": 32}})


def _learner_args(job: Path) -> tuple[dict, dict]:
    server, client = _cfg(job, "server"), _cfg(job, "client")
    persistor = next(c for c in server["components"] if c["id"] == "persistor")["args"]["learner_args"]
    return client["executors"][0]["executor"]["args"]["learner_args"], persistor


def test_variant_is_independent_of_set_order(tmp_path):
    """`--set rounds=2` before `--set learner.overrides=...` once dropped training.rounds (lr 0 after round 1)."""
    sets = ["rounds=2", f"learner.overrides={TINY_OVERRIDES}", "learner.overrides.training.eval_batch_size=4"]
    a = write_variant(JOB, tmp_path / "v", sets)
    b = write_variant(JOB, tmp_path / "w", list(reversed(sets)))
    for side in ("server", "client"):
        assert _cfg(a, side) == _cfg(b, side)
    for args in _learner_args(a):
        assert args["overrides"]["training"] == {"batch_size": 2, "eval_batch_size": 4, "rounds": 2}
        assert args["overrides"]["encoder"] == {"image_size": 32}  # replaced as a whole, then edited
    assert _cfg(a, "server")["workflows"][0]["args"]["num_rounds"] == 2


def test_variant_schedule_follows_the_workflow_rounds(tmp_path):
    # new overrides without training.rounds: the schedule still spans the job's rounds
    client, server = _learner_args(write_variant(JOB, tmp_path / "v", [f"learner.overrides={TINY_OVERRIDES}"]))
    rounds = _cfg(JOB, "server")["workflows"][0]["args"]["num_rounds"]
    assert client["overrides"]["training"]["rounds"] == server["overrides"]["training"]["rounds"] == rounds
    with pytest.raises(ConfigError, match=r"training.rounds=3 contradicts the workflow's num_rounds=2.*--set rounds"):
        write_variant(JOB, tmp_path / "w", ["rounds=2", "learner.overrides.training.rounds=3"])


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ("learner.local_step=3", "`learner.local_step`"),
        ("server.scatter_and_gather.min_client=2", "`server.scatter_and_gather.min_client`"),
        ("client.privat_dir=/x", "`client.privat_dir`"),
        ("site_dp.noise=1.0", "`site_dp.noise`"),
        ("learner.synthetic.num_studys=3", "`learner.synthetic.num_studys`"),
        ('learner.overrides.privcy={"dp_sgd": {"enabled": true}}', "`learner.overrides.privcy`"),
        ('learner.overrides.training.batch_size="8"', "`learner.overrides.training.batch_size` must be an int"),
        ("learner.local_steps=ten", "`learner.local_steps` must be an int"),
        ("server.scatter_and_gather.num_rounds=2.5", "`server.scatter_and_gather.num_rounds` must be an int"),
    ],
)
def test_variant_refuses_misspelt_keys_and_wrong_types_naming_the_key(tmp_path, bad, named):
    with pytest.raises(ConfigError) as e:
        write_variant(JOB, tmp_path / "v", [bad])
    assert named in str(e.value)
    assert "configs/default.yaml:" not in str(e.value)  # the user's key is at fault, not the packaged YAML
    assert not (tmp_path / "v").exists()  # nothing written


def test_variant_refuses_a_key_given_twice_and_lists_allowed_keys(tmp_path):
    with pytest.raises(ConfigError, match="given twice"):
        write_variant(JOB, tmp_path / "v", ["rounds=2", "rounds=3"])
    with pytest.raises(ConfigError, match="allowed: .*local_steps"):
        write_variant(JOB, tmp_path / "v", ["learner.local_step=3"])
    with pytest.raises(ConfigError, match="must be an int >= 1"):
        write_variant(JOB, tmp_path / "v", ["rounds=0"])
    with pytest.raises(ConfigError, match="must be true or false"):
        write_variant(JOB, tmp_path / "v", ["secure_aggregation=yes"])


ENCODE, DECODE = "fedmrg.fl.wire_codec.WireEncodeFilter", "fedmrg.fl.wire_codec.WireDecodeFilter"


def _wire(job: Path) -> dict[str, list]:
    """(side, chain key, tasks, filter path, codec) of every codec filter of a job."""
    out = []
    for side in ("server", "client"):
        for key in ("task_data_filters", "task_result_filters"):
            for chain in _cfg(job, side).get(key, []):
                for f in chain["filters"]:
                    if f["path"] in (ENCODE, DECODE):
                        out.append((side, key, tuple(sorted(chain["tasks"])), f["path"], f["args"].get("codec")))
    return out


def test_variant_sets_the_wire_codecs_and_replaces_the_jobs_own(tmp_path):
    v = write_variant(JOB, tmp_path / "v", ["wire.up=int8-row", "wire.down=bfloat16"])
    wire = _wire(v)
    assert ("client", "task_result_filters", ("statistics", "submit_model", "train"), ENCODE, "int8-row") in wire
    assert ("server", "task_data_filters", ("train",), ENCODE, "bfloat16") in wire
    assert ("client", "task_data_filters", ("statistics", "submit_model", "train", "validate"), DECODE, None) in wire
    # decoded on the server right after the byte meter (it counts the encoded bytes), before the aggregator
    (chain,) = [c for c in _cfg(v, "server")["task_result_filters"] if "train" in c["tasks"]]
    paths = [f["path"] for f in chain["filters"]]
    assert paths.index(DECODE) == paths.index("fedmrg.fl.wire_bytes_meter.WireBytesMeter") + 1
    # a variant of the variant replaces the codecs (one encoder per chain), keeps the other direction
    w = write_variant(v, tmp_path / "w", ["wire.up=float32"])
    assert not [x for x in _wire(w) if x[1] == "task_result_filters"]
    assert ("server", "task_data_filters", ("train",), ENCODE, "bfloat16") in _wire(w)
    # float32 both ways: no codec filter and no empty chain left behind
    f32 = write_variant(v, tmp_path / "f32", ["wire.up=float32", "wire.down=float32"])
    assert _wire(f32) == []
    for side in ("server", "client"):
        for key in ("task_data_filters", "task_result_filters"):
            assert all(c["filters"] for c in _cfg(f32, side).get(key, []))


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (
            "wire.up=int4",
            "`--set wire.up` must be one of ['float32', 'bfloat16', 'float16', 'int8-tensor', 'int8-row']",
        ),
        ("wire.up=16", "`--set wire.up` must be one of"),
        ("wire.down=int8-row", "`wire.down` 'int8-row': the model sent down is the whole global model"),
        ("wire.side=bfloat16", "use wire.up or wire.down"),
        ("wire=bfloat16", "use wire.up or wire.down"),
    ],
)
def test_variant_refuses_bad_wire_codecs_naming_the_key(tmp_path, bad, named):
    with pytest.raises(ConfigError) as e:
        write_variant(JOB, tmp_path / "v", [bad])
    assert named in str(e.value)
    assert not (tmp_path / "v").exists()


def test_variant_refuses_an_encoded_upload_with_secure_aggregation(tmp_path):
    for sets in (["secure_aggregation=true", "wire.up=bfloat16"], ["wire.up=int8-row", "secure_aggregation=true"]):
        with pytest.raises(ConfigError, match=r"wire.up.*secure aggregation.*masked.*only sum"):
            write_variant(JOB, tmp_path / "v", sets)
    # the protocol's own tasks share the model's filter chains: a 16-bit model sent down is refused too
    with pytest.raises(ConfigError, match=r"wire.down.*'bfloat16'.*secure aggregation"):
        write_variant(JOB, tmp_path / "d", ["secure_aggregation=true", "wire.down=bfloat16"])
    # float32 named beside it is what secure aggregation sets anyway
    s = write_variant(JOB, tmp_path / "s2", ["secure_aggregation=true", "wire.up=float32"])
    assert _wire(s) == []
    # and a job with secure aggregation on refuses a codec later
    with pytest.raises(ConfigError, match=r"wire.up=float32 --set wire.down=float32"):
        write_variant(s, tmp_path / "s3", ["wire.down=bfloat16"])


def test_the_job_sends_8_bit_deltas_up_and_a_16_bit_model_down_unless_secure_aggregation_is_on(tmp_path, capsys):
    assert ("client", "task_result_filters", ("statistics", "submit_model", "train"), ENCODE, "int8-row") in _wire(JOB)
    assert ("server", "task_data_filters", ("train",), ENCODE, "bfloat16") in _wire(JOB)
    # the client encodes after the DP filter (clip and noise act on float32 values)
    (chain,) = [c for c in _cfg(JOB, "client")["task_result_filters"] if "train" in c["tasks"]]
    assert [f["path"].rsplit(".", 1)[-1] for f in chain["filters"]] == ["SiteDPFilter", "WireEncodeFilter"]
    # secure aggregation puts both directions back to float32 (masked values cannot be encoded) and says so
    assert main(["job", "variant", str(JOB), "--out", str(tmp_path / "s"), "--set", "secure_aggregation=true"]) == 0
    assert _wire(tmp_path / "s") == []
    assert "SecureAggregationMaskFilter" in json.dumps(_cfg(tmp_path / "s", "client"))
    assert "on the wire: results up float32, model down float32" in capsys.readouterr().out
    # a variant with codecs of its own is put back the same way
    v = write_variant(JOB, tmp_path / "v", ["wire.up=bfloat16"])
    assert _wire(write_variant(v, tmp_path / "v-sa", ["secure_aggregation=true"])) == []


@pytest.mark.parametrize(
    ("protection", "message"),
    [("site_dp=true", "which site_dp=true"), ("secure_aggregation=true", "which secure_aggregation=true")],
)
def test_a_variant_refuses_head_calibration_with_site_dp_or_secure_aggregation(tmp_path, protection, message):
    lda = "learner.overrides.training.head_calibration=lda"
    with pytest.raises(ConfigError, match=rf"head_calibration needs the statistics round after training, {message}"):
        write_variant(JOB, tmp_path / "v", [protection, lda])
    assert not (tmp_path / "v").exists()  # nothing written
    v = write_variant(JOB, tmp_path / "ok", [lda])  # alone it is a valid job: the statistics task is in it
    assert "statistics" in _cfg(v, "client")["executors"][0]["tasks"]

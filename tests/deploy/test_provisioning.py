"""`nvflare provision -p provisioning/project.yml`: a startup kit for every participant, ready for FedMRG jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedmrg.deploy.kit_builder import FedMRGKitBuilder, extend_allow_list
from fedmrg.job import job_class_paths, prepare_workspace
from fedmrg.paths import REPO_ROOT

from .conftest import PROJECT

JOB = Path(REPO_ROOT) / "jobs" / "fedmrg"


def _allowed(path: str, allow_list: list[str]) -> bool:
    """FLARE's rule: an entry ending in `.` is a package prefix, any other must match the class path exactly."""
    return any(path.startswith(e) if e.endswith(".") else path == e for e in allow_list)


@pytest.fixture(scope="module")
def kits(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("prov")
    env = dict(os.environ, HOME=str(tmp))  # nvflare keeps a registry in ~/.nvflare
    cmd = [sys.executable, "-m", "nvflare.cli", "provision", "-p", str(PROJECT), "-w", str(tmp / "ws")]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return tmp / "ws" / "fedmrg" / "prod_00"


def test_every_participant_gets_a_signed_kit(kits):
    project = yaml.safe_load(PROJECT.read_text())
    names = {p["name"]: p["type"] for p in project["participants"]}
    assert {p.name for p in kits.iterdir()} == set(names)
    cert = {"server": "server.crt", "client": "client.crt", "admin": "client.crt"}
    for name, kind in names.items():
        startup = kits / name / "startup"
        assert (startup / "rootCA.pem").is_file() and (startup / cert[kind]).is_file(), name
    assert sorted(n for n, k in names.items() if k == "client") == ["hospital-a", "hospital-b", "hospital-c"]
    roles = sorted(p["role"] for p in project["participants"] if p["type"] == "admin")
    assert roles.count("member") == 3 and roles.count("org_admin") == 3 and "lead" in roles and "project_admin" in roles


def test_kits_allow_every_class_of_the_fedmrg_job(kits):
    job_classes = job_class_paths(JOB)
    assert any(p.startswith("nvflare.") for p in job_classes) and any(p.startswith("fedmrg.") for p in job_classes)
    for site in ("fedmrg-server", "hospital-a", "hospital-b", "hospital-c"):
        allow = json.loads((kits / site / "local" / "resources.json.default").read_text())["class_allow_list"]
        missing = [p for p in job_classes if not _allowed(p, allow)]
        assert not missing, f"{site}: not allow-listed: {missing}"
        assert "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather" in allow  # FLARE's defaults kept


def test_kits_carry_the_policy_only_leads_submit(kits):
    for site in ("fedmrg-server", "hospital-a", "hospital-c"):
        perms = json.loads((kits / site / "local" / "authorization.json.default").read_text())["permissions"]
        assert perms["lead"]["submit_job"] == "any" and perms["project_admin"] == "any"
        assert perms["org_admin"]["submit_job"] == "none"
        assert "submit_job" not in perms["member"] and perms["member"] == {"view": "any"}
        assert all(p["byoc"] == "none" for p in perms.values() if isinstance(p, dict) and "byoc" in p)


def test_builder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="class_allow_list"):
        FedMRGKitBuilder(class_allow_list="fedmrg.")
    with pytest.raises(ValueError, match="permissions"):
        FedMRGKitBuilder(class_allow_list=["fedmrg."], authorization={"format_version": "1.0"})


def test_extend_allow_list_keeps_order_and_skips_duplicates(tmp_path):
    f = tmp_path / "resources.json"
    f.write_text(json.dumps({"format_version": 2, "class_allow_list": ["a.B", "c."], "components": [1]}))
    assert extend_allow_list(f, ["c.", "fedmrg.", "a.B"]) == ["a.B", "c.", "fedmrg."]
    assert json.loads(f.read_text())["components"] == [1]
    f.write_text("{broken")
    with pytest.raises(ValueError, match="resources.json"):
        extend_allow_list(f, ["x."])


def test_job_workspace_on_a_kit_keeps_the_provisioned_resources(kits, tmp_path):
    # `fedmrg job workspace` on a kit provisioned without our builder: resources.json starts from the default
    site = tmp_path / "hospital-a"
    (site / "local").mkdir(parents=True)
    default = json.loads((kits / "hospital-a" / "local" / "resources.json.default").read_text())
    default["class_allow_list"] = [p for p in default["class_allow_list"] if not p.startswith("fedmrg")]
    (site / "local" / "resources.json.default").write_text(json.dumps(default))
    written = json.loads(prepare_workspace(JOB, site).read_text())
    assert [c["id"] for c in written["components"]] == [c["id"] for c in default["components"]]
    assert "fedmrg." in written["class_allow_list"]
    assert set(default["class_allow_list"]) <= set(written["class_allow_list"])


def test_kits_use_flare_http_driver_with_mutual_tls(kits):
    """What docs/deployment.md and poc/README.md name: scheme ``http`` (FLARE's AioHttpDriver), mutual TLS."""
    server = json.loads((kits / "fedmrg-server" / "startup" / "fed_server.json").read_text())["servers"][0]
    assert (server["service"]["scheme"], server["connection_security"]) == ("http", "mtls")
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        client = json.loads((kits / site / "startup" / "fed_client.json").read_text())
        assert client["servers"][0]["service"]["scheme"] == "http", site

"""``fedmrg serve``: the JSON API (Flask test client) and the page in a real headless browser (Debian's chromium
driven by Selenium through the system chromedriver), with a screenshot kept under tests/artifacts/; bad uploads get
a clear message and the server keeps serving."""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fedmrg.inference.predict import Predictor
from fedmrg.report.export import export_model, load_model
from fedmrg.serve.app import create_app

_spec = importlib.util.spec_from_file_location("_tiny_model", Path(__file__).parents[1] / "inference" / "tiny_model.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("serve")
    model = export_model(tiny.make_tiny_run(root), site="site-1", out=root / "model")
    predictor = Predictor(load_model(model))
    files = {
        "png": tiny.write_png(root / "chest.png", tiny.radiograph(96, seed=3)),
        "dicom": tiny.write_dicom(root / "chest.dcm", tiny.radiograph(80, seed=4), photometric="MONOCHROME1"),
    }
    dcm = files["dicom"].read_bytes()
    (root / "truncated.dcm").write_bytes(dcm[: len(dcm) // 2])
    (root / "notes.txt").write_text("not an image\n" * 20)
    (root / "noise.bin").write_bytes(np.random.default_rng(0).bytes(50 * 1024 * 1024))
    files |= {k: root / n for k, n in (("truncated", "truncated.dcm"), ("text", "notes.txt"), ("noise", "noise.bin"))}
    return {"root": root, "model": model, "predictor": predictor, "files": files}


def _post(client, path: Path):
    with path.open("rb") as f:
        return client.post("/api/predict", data={"file": (f, path.name)}, content_type="multipart/form-data")


def test_api_predicts_generic_and_personalized(env):
    client = create_app(env["predictor"], source="tiny").test_client()
    info = client.get("/api/model").get_json()
    assert info == {"site": "site-1", "personalized": True, "method": "fedmrg", "image_size": 32, "source": "tiny",
                    "max_upload_mb": 64.0}  # fmt: skip
    page = client.get("/")
    assert page.status_code == 200 and b'id="drop"' in page.data
    for kind in ("png", "dicom"):
        r = _post(client, env["files"][kind])
        assert r.status_code == 200, r.get_json()
        res = r.get_json()
        assert res["generic"]["adapter"] == "generic" and res["personalized"]["site"] == "site-1"
        assert res["generic"]["report"] != res["personalized"]["report"]  # the adapters differ
        assert len(res["generic"]["observations"]) == 14
        assert res["preview_png"] and (res["width"], res["height"]) == ((96, 96) if kind == "png" else (80, 80))
    expected = env["predictor"].predict_files([env["files"]["dicom"]])[0].report
    assert res["personalized"]["report"] == expected  # the same answer as `fedmrg generate`


def test_bad_uploads_get_a_message_and_the_server_keeps_serving(env):
    client = create_app(env["predictor"], max_upload_mb=64).test_client()
    cases = {"text": "notes.txt: not a PNG, JPEG, BMP or DICOM", "noise": "noise.bin: not a PNG, JPEG, BMP or DICOM",
             "truncated": "truncated.dcm: "}  # fmt: skip
    for kind, message in cases.items():
        r = _post(client, env["files"][kind])
        assert r.status_code == 400 and r.get_json()["error"].startswith(message), (kind, r.get_json())
    assert client.post("/api/predict", data={}).get_json()["error"].startswith("no file in the request")
    small = create_app(env["predictor"], max_upload_mb=1).test_client()
    r = _post(small, env["files"]["noise"])
    assert r.status_code == 413 and "file too large: the limit is 1 MB" in r.get_json()["error"]
    assert _post(client, env["files"]["png"]).status_code == 200  # still serving


@pytest.mark.slow
def test_page_in_a_headless_browser(env):
    """Drop files on the page in Chromium: the report, observations and image show; bad files show a message."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from werkzeug.serving import make_server

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if browser is None or driver_bin is None:
        if os.environ.get("FEDMRG_SKIP_BROWSER"):
            pytest.skip("FEDMRG_SKIP_BROWSER is set and chromium / chromedriver are not installed")
        pytest.fail("chromium and chromedriver are needed: apt-get install -y chromium chromium-driver")

    server = make_server("127.0.0.1", 0, create_app(env["predictor"], source=str(env["model"])), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    try:
        driver.get(f"http://127.0.0.1:{server.server_port}/")
        wait = WebDriverWait(driver, 240)
        wait.until(lambda d: "personalized for site-1" in d.find_element(By.ID, "model").text)
        upload = driver.find_element(By.ID, "file")

        def send(path: Path) -> None:
            driver.execute_script("document.getElementById('status').textContent = '';"
                                  "document.getElementById('error').textContent = '';")  # fmt: skip
            upload.send_keys(str(path))

        send(env["files"]["text"])
        wait.until(lambda d: d.find_element(By.ID, "error").text)
        assert "notes.txt: not a PNG, JPEG, BMP or DICOM" in driver.find_element(By.ID, "error").text
        send(env["files"]["truncated"])
        wait.until(lambda d: d.find_element(By.ID, "error").text)
        assert driver.find_element(By.ID, "error").text.startswith("truncated.dcm: ")

        send(env["files"]["dicom"])
        wait.until(lambda d: "chest.dcm: 80 x 80 px" in d.find_element(By.ID, "status").text)
        assert driver.find_element(By.ID, "error").text == ""
        generic = driver.find_element(By.ID, "report-generic").text
        personal = driver.find_element(By.ID, "report-personalized").text
        assert generic and personal and generic != personal
        rows = driver.find_elements(By.CSS_SELECTOR, "#observations tbody tr")
        assert len(rows) == 14 and "Cardiomegaly" in rows[1].text and "%" in rows[1].text
        assert driver.execute_script("const i = document.getElementById('preview'); return i.complete && "
                                     "i.naturalWidth") == 80  # fmt: skip
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "viewer.png"
        driver.save_screenshot(str(shot))
        print(f"\nviewer screenshot: {shot}")
        assert shot.stat().st_size > 10_000

        start = time.perf_counter()  # 50 MB of noise: refused with a message, then the page still works
        send(env["files"]["noise"])
        wait.until(lambda d: d.find_element(By.ID, "error").text)
        assert "noise.bin: not a PNG, JPEG, BMP or DICOM" in driver.find_element(By.ID, "error").text
        assert time.perf_counter() - start < 120
        send(env["files"]["png"])
        wait.until(lambda d: "chest.png: 96 x 96 px" in d.find_element(By.ID, "status").text)
        assert driver.find_element(By.ID, "report-generic").text
    finally:
        driver.quit()
        server.shutdown()
        thread.join(timeout=10)


def test_cli_binds_loopback_by_default_and_warns_otherwise(env, monkeypatch, capsys):
    """`fedmrg serve` loads the model, binds 127.0.0.1:8765 unless told otherwise, warns on a public address."""
    import werkzeug.serving

    from fedmrg.cli import main

    bound = []

    class Stub:
        server_port = 8765

        def __init__(self, host, port, app, threaded):
            bound.append((host, port, app))

        def serve_forever(self):
            raise KeyboardInterrupt  # Ctrl-C

        def server_close(self):
            bound.append("closed")

    monkeypatch.setattr(werkzeug.serving, "make_server", Stub)
    assert main(["serve", "--model", str(env["model"])]) == 0
    host, port, app = bound[0]
    assert (host, port, bound[1]) == ("127.0.0.1", 8765, "closed")
    assert app.test_client().get("/api/model").get_json()["site"] == "site-1"
    captured = capsys.readouterr()
    assert "FedMRG viewer (personalized for site-1) on http://127.0.0.1:8765/" in captured.out
    assert "WARNING" not in captured.err
    assert main(["serve", "--model", str(env["model"]), "--host", "0.0.0.0", "--site", "site-1"]) == 0
    assert "WARNING: binding 0.0.0.0: other machines can reach this viewer" in capsys.readouterr().err
    assert main(["serve", "--model", str(env["model"]), "--max-upload-mb", "0"]) == 1
    assert "--max-upload-mb must be > 0" in capsys.readouterr().err

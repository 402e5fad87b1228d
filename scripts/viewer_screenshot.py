"""Screenshot of `fedmrg serve` for docs/using-a-model.md: start the viewer on MODEL, drop IMAGE in headless Chromium.

    python scripts/viewer_screenshot.py MODEL IMAGE OUT.png

Needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver) and selenium (dev extra).
The PNG is written with a 128-colour palette to stay small.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

PORT = 8799


def main(model: str, image: str, out: str) -> int:
    fedmrg = Path(sys.executable).with_name("fedmrg")
    server = subprocess.Popen([str(fedmrg), "serve", "--model", model, "--port", str(PORT)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    start = time.time()
    assert server.stdout is not None
    for line in server.stdout:
        if "FedMRG viewer" in line:
            break
    else:
        raise SystemExit(f"the viewer did not start (exit code {server.wait()})")
    print(f"viewer up after {time.time() - start:.1f} s")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,760"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"http://127.0.0.1:{PORT}/")
        wait = WebDriverWait(driver, 600)
        wait.until(lambda d: "loading model" not in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(Path(image).resolve()))
        name = Path(image).name
        wait.until(lambda d: f"{name}:" in (t := d.find_element(By.ID, "status").text) and "px" in t)
        for element in ("status", "report-generic", "report-personalized"):
            print(f"{element}: {driver.find_element(By.ID, element).text}")
        driver.save_screenshot(out)
    finally:
        driver.quit()
        server.terminate()
        server.wait(30)
    Image.open(out).convert("RGB").quantize(128).save(out, optimize=True)
    print(f"{out}: {Path(out).stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))

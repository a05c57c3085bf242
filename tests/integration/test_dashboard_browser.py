"""The page in a real browser: headless Chromium, driven by selenium, against `edgeai dashboard`.

Skips, saying why, where Chromium, its driver or selenium is missing
(`apt-get install chromium chromium-driver`, `pip install selenium`). Set
EDGEAI_DASHBOARD_SCREENSHOT=path to keep the screenshot (docs/dashboard.png is one).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard_state import PROFILES, RUN_ID, populate

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _needs() -> None:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip(
            "Chromium or chromedriver not installed (apt-get install chromium chromium-driver)"
        )
    pytest.importorskip("selenium", reason="selenium not installed (pip install selenium)")


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[str]:
    """`edgeai dashboard` over a populated state dir (3 nodes, a run, a release); its URL."""
    _needs()
    state = populate(tmp_path / "fleet", nodes=3, rounds=5)
    log = tmp_path / "dashboard.log"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    argv = [sys.executable, "-m", "edgeai.cli", "dashboard", "--config", str(state.config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--port", "0"], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            found = re.search(r"http://127\.0\.0\.1:\d+/", log.read_text(errors="replace"))
            url = found.group(0) if found else None
            if url is None:
                assert proc.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, "edgeai dashboard printed no URL in 60 s"
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, log.read_text(errors="replace")


def chrome(profile: Path) -> Any:
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver: selenium-manager would otherwise try to download one.
    return webdriver.Chrome(options=options, service=Service(executable_path=str(DRIVER)))


def test_the_page_shows_the_nodes_and_the_accuracy_plot(dashboard: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support import expected_conditions as ec  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    driver = chrome(tmp_path / "chromium-profile")
    try:
        driver.get(dashboard)
        wait = WebDriverWait(driver, 30)
        # uPlot draws into a <canvas> once the script ran: the plot is really there.
        accuracy = f"#chart-accuracy-{RUN_ID} canvas"
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, accuracy)))
        assert driver.find_elements(By.CSS_SELECTOR, f"#chart-epsilon-{RUN_ID} canvas")
        title = driver.find_element(By.CSS_SELECTOR, f"#chart-accuracy-{RUN_ID} .u-title").text
        assert title == "accuracy per round"

        rows = driver.find_elements(By.CSS_SELECTOR, "#node-table tbody tr.node")
        assert len(rows) == 3
        table = driver.find_element(By.ID, "node-table").text
        for profile in PROFILES:
            assert profile in table
        assert "20250101-r1" in table
        assert "seed" in table
        assert "promoted" in driver.find_element(By.ID, "release-table").text

        # The whole page in one picture: a viewport as tall as the document.
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        metrics = {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
        keep = os.environ.get("EDGEAI_DASHBOARD_SCREENSHOT")
        if keep:
            shutil.copyfile(shot, keep)

        # No script error, no blocked resource (the CSP allows only our own files).
        problems = [
            e["message"]
            for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "favicon" not in e["message"]
        ]
        assert problems == []

        # The filter is a plain GET form: the server pages and filters.
        box = driver.find_element(By.NAME, "q")
        box.send_keys("rpi5")
        box.submit()
        wait.until(ec.url_contains("q=rpi5"))
        rows = driver.find_elements(By.CSS_SELECTOR, "#node-table tbody tr.node")
        assert [r.find_element(By.CSS_SELECTOR, "td.name").text for r in rows] == ["node-0001"]
    finally:
        driver.quit()

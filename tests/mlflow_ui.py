"""The MLflow UI of a test home, served on loopback and driven by Debian's headless Chromium through Selenium.

The browser and its driver are the system ones (``make test`` installs them with apt), so nothing is downloaded;
the flags keep Chromium from reaching out (the machine's closed network refuses it) and from reusing any profile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1200",
]
# kept after the run (git-ignored) so a failing page can be looked at
ARTIFACTS = REPO / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def wait_ready(self, timeout: float = 120) -> str:
        """The base URL once ``/health`` answers (the server starts while the browser does)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return self.url
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not come up: {self.log.read_text()[-2000:]}")
                time.sleep(0.3)


@contextlib.contextmanager
def mlflow_ui(backend_store_uri: str, env: dict[str, str], log: Path):
    """``mlflow server`` over ``backend_store_uri`` on 127.0.0.1 and a free port, started; stopped afterwards."""
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow), "server", "--backend-store-uri", backend_store_uri, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]  # fmt: skip
    with log.open("wb") as out:
        # no job executor: its consumer processes would only slow the start (the UI pages here run no jobs)
        env = env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield Server(f"http://127.0.0.1:{port}", server, log)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the launcher and its uvicorn worker
        server.wait(timeout=30)


@contextlib.contextmanager
def headless_chromium():
    """A Selenium driver of the system Chromium with a fresh, empty profile."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("Debian's chromium and chromium-driver are needed: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for_text(driver, texts: list[str], timeout: float = 90) -> str:
    """The page's visible text once every one of ``texts`` is on it (the UI is a React app that renders late)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def body() -> str:
        return driver.find_element(By.TAG_NAME, "body").text

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda _: all(t in body() for t in texts))
    except TimeoutException:
        missing = [t for t in texts if t not in body()]
        pytest.fail(f"not shown after {timeout}s: {missing}; page text: {body()[:1500]!r}")
    return body()


def scroll_to(driver, text: str) -> None:
    """Scroll the element whose own text is ``text`` to the middle of its scrolling box (the tag table scrolls
    inside the page), so a screenshot shows it."""
    from selenium.webdriver.common.by import By

    for element in driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']")[:1]:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)


def save_screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path

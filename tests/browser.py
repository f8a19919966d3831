"""A headless Chromium through Selenium for the browser tests (Debian's chromium and chromedriver; a test
skips only where those binaries are missing), and where their screenshots go."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def binaries() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def artifacts_dir(name: str) -> Path:
    """Where a test keeps its screenshots: $CDP_TEST_ARTIFACTS/<name> (default var/test-artifacts)."""
    path = Path(os.environ.get("CDP_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts")) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def chrome(*, width: int = 1280, height: int = 900, offline_except: str | None = None) -> Any:
    """A headless Chromium. ``offline_except="127.0.0.1"``: every other host name fails to resolve, so a page
    that needs the internet (a CDN script) cannot load it."""
    found = binaries()
    if found is None:
        pytest.skip("no chromium/chromedriver binary on PATH (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver  # a dev dependency: missing it is a failure, not a skip
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--hide-scrollbars", "--no-proxy-server"):  # fmt: skip
        options.add_argument(arg)
    if offline_except:
        options.add_argument(f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {offline_except}")
    # the system chromedriver: Selenium Manager is never asked to download one
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def full_screenshot(driver: Any, path: Path, *, width: int | None = None) -> Path:
    """A screenshot of the whole page (the window grown to the document's height, at most 4000 px)."""
    width = width or driver.get_window_size()["width"]
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(int(height) + 20, 600), 4000))
    assert driver.save_screenshot(str(path))
    return path

"""Debian's chromium, headless, driven by Playwright (no `playwright install` download), for the
tests that check what the MLflow UI shows; and the MLflow UI's artifact browser, clicked through."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# What this machine needs: no sandbox (containers), no GPU, and nothing that phones home.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The React app builds its pages lazily; on two busy cores the first paint can take a while.
LOAD_MS = 120_000


@contextmanager
def chromium_page(profile: Path, width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A page in headless Chromium with an empty profile (skips when Playwright or chromium is missing)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: run `bash scripts/setup.sh test` (installs Debian's chromium)")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),  # an empty --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height},
        )
        context.set_default_timeout(LOAD_MS)
        try:
            yield context.new_page()
        finally:
            context.close()


def open_artifact(page: Any, tracking_uri: str, experiment_id: str, run_id: str, artifact: str) -> None:
    """Open a run's artifacts tab in the MLflow UI and click through the tree to artifact
    ('folder/file'), as a user would."""
    page.goto(f"{tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}/artifacts")
    folder, name = artifact.rsplit("/", 1)
    page.get_by_text(folder, exact=True).first.click()
    assistant = page.get_by_role("button", name="Close")  # MLflow's assistant panel takes room
    if assistant.is_visible():
        assistant.click()
    page.get_by_text(name, exact=True).first.click()


def html_artifact_frame(page: Any, timeout: float = 60.0) -> Any:
    """The frame the artifact viewer renders an HTML artifact in (a blob: URL inside its sandboxed
    iframe), once it exists: the iframe element appears before its document is loaded."""
    page.locator("iframe.mlflow-html-iframe").wait_for(timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            if frame.url.startswith("blob:"):
                return frame
        page.wait_for_timeout(200)
    raise AssertionError(f"no HTML artifact frame within {timeout:g} s")


def keep_screenshot(page: Any, path: Path, tmp_path: Path) -> bytes:
    """A PNG of the page; it replaces the README's copy at path only with UMX_TUNE_UPDATE_SCREENSHOT=1
    (run colours and times differ on every run)."""
    page.evaluate("document.activeElement && document.activeElement.blur()")  # no focus frame
    page.mouse.move(0, 0)  # no hover highlight
    shot = page.screenshot(type="png", path=tmp_path / path.name)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) < 500_000
    if os.environ.get("UMX_TUNE_UPDATE_SCREENSHOT") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(shot)
    return shot

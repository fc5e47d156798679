"""A real headless Chromium (Debian's package) for the page tests: the DOM it built,
its console messages, every network request it made (from its net log), a screenshot."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--enable-logging=stderr", "--v=0",
]


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does it)")


@dataclass
class Rendered:
    dom: str
    console: list[str]  # console messages (errors, CSP violations …)
    page_requests: list[str]  # URLs the page itself asked the network for


def render(page: Path, work: Path, *, screenshot: Path | None = None) -> Rendered:
    """Open ``page`` in a fresh profile; dump its DOM (and a screenshot)."""
    require_chromium()
    work.mkdir(parents=True, exist_ok=True)
    netlog = work / "netlog.json"
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={work / 'profile'}", f"--log-net-log={netlog}"]
    if screenshot is not None:
        shot = subprocess.run([*args, f"--screenshot={screenshot}", "--window-size=1280,5200", page.as_uri()],
                              capture_output=True, text=True, timeout=120)
        assert screenshot.exists(), shot.stderr[-2000:]
    proc = subprocess.run([*args, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return Rendered(dom=proc.stdout, console=console, page_requests=_page_requests(netlog))


def _page_requests(netlog: Path) -> list[str]:
    # The browser's own traffic (update and account checks) has no page in its
    # network isolation key; what a file:// page loads carries "file://" there.
    events = json.loads(netlog.read_text())["events"]
    urls = []
    for event in events:
        params = event.get("params") or {}
        if "url" in params and "file://" in str(params.get("network_isolation_key", "")) \
                and not str(params["url"]).startswith(("file:", "data:")):
            urls.append(str(params["url"]))
    return urls

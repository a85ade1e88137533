"""The report in a real headless Chromium with the network disabled (Chrome DevTools protocol over a pipe).

Why a real browser: the promise is "one file that opens anywhere offline". Only a browser can
show that the embedded plotly.js parses, every figure renders, nothing is fetched from the
network and nothing logs an error. The page is driven through ``--remote-debugging-pipe``
(JSON messages separated by NUL on fds 3/4), so no extra Python package is needed.
A screenshot is kept in ``test-artifacts/report.png`` for a human to look at; a second test takes
one with Chromium's own ``--screenshot`` (the command a person would type) and checks its pixels.
.ci/run installs Debian's ``chromium`` package when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from store_builder import build_store

from study.report import write_report

# slow: on a fresh machine the fixture may apt-get install Debian chromium (minutes); .ci/run runs it
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
NO_NETWORK = ["--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1400,1000"]


def _install_chromium() -> str | None:
    """Debian's chromium, installed on first use; None (with the reason printed) if that is impossible."""
    found = shutil.which("chromium") or (Path("/usr/bin/chromium").exists() and "/usr/bin/chromium")
    if found:
        return str(found)
    if not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode != 0:
            return None
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _install_chromium()
    if path is None:
        pytest.skip("chromium is not installed and `apt-get install -y chromium` failed (no root or no network?)")
    return path


class DevTools:
    """A minimal CDP client over ``--remote-debugging-pipe``: send commands, collect events."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        # In the child Chromium reads commands on fd 3 and writes replies on fd 4. After two os.pipe()
        # calls fds 3 and 4 are certainly open here (lowest free fds are handed out first), so
        # pass_fds=(3, 4) is valid; dup first so wiring one fd cannot clobber the other's source.
        def wire_fds() -> None:
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [chromium, *FLAGS, *NO_NETWORK, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire_fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._inbox: queue.Queue[dict | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._from_chrome, 1 << 16):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for m in messages:
                self._inbox.put(json.loads(m))
        self._inbox.put(None)

    def _pump(self, timeout: float) -> None:
        msg = self._inbox.get(timeout=timeout)
        if msg is None:
            raise RuntimeError("chromium closed the DevTools pipe")
        if "id" in msg:
            self._replies[msg["id"]] = msg
        else:
            self.events.append(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while self._next_id not in self._replies:
            self._pump(max(0.01, deadline - time.monotonic()))
        reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == method for e in self.events):
            self._pump(max(0.01, deadline - time.monotonic()))
        return next(e for e in self.events if e["method"] == method)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, queue.Empty, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_chrome)
        self._reader.join(timeout=5)
        if not self._reader.is_alive():
            os.close(self._from_chrome)


def _problems(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions, error log entries and any non-file request: all must be absent."""
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e["method"] == "Runtime.exceptionThrown":
            out.append("exception: " + json.dumps(p["exceptionDetails"])[:400])
        elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append("log: " + p["entry"]["text"])
        elif e["method"] == "Network.requestWillBeSent" and not p["request"]["url"].startswith(("file:", "data:")):
            out.append("network request: " + p["request"]["url"])
    return out


def test_report_renders_offline_in_chromium(chromium: str, tmp_path: Path) -> None:
    report, _ = write_report(build_store(tmp_path / "store"), tmp_path / "report.html")
    cdp = DevTools(chromium, tmp_path / "profile")
    try:
        target = next(t for t in cdp.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        sid = cdp.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            cdp.send(f"{domain}.enable", session=sid)
        cdp.send("Emulation.setDeviceMetricsOverride",
                 {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session=sid)
        cdp.send("Page.navigate", {"url": report.resolve().as_uri()}, session=sid)
        cdp.wait_event("Page.loadEventFired", timeout=60)

        def js(expr: str) -> Any:
            res = cdp.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True},
                           session=sid)
            return res["result"].get("value")

        rendered = "[...document.querySelectorAll('.plotly-graph-div')].every(d => d._fullLayout && d.data)"
        deadline = time.monotonic() + 30
        while not js(rendered) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert js(rendered), "not every figure rendered within 30 s"
        assert js("document.querySelectorAll('.plotly-graph-div').length") >= 6
        curves = js("document.getElementById('curves-hyko2').data.filter(t => t.meta === 'strategy-curve')"
                    ".map(t => t.name)")
        assert sorted(curves) == ["crossdomain", "indomain"], curves  # one trace per strategy, bands not counted
        assert js("document.getElementById('curves-hyko2')._fullLayout.xaxis.type") == "log"
        assert js("document.querySelectorAll('#curves-hyko2 .scatterlayer .trace').length") == 4  # 2 lines + 2 bands
        assert "reaches indomain" in js("document.querySelector('.headlines').innerText")
        # the summary table holds every cell, and none is clipped: each row has a height and lies inside the table
        rows = js("[...document.querySelectorAll('#summary-table tbody tr')].map(r => r.getBoundingClientRect())"
                  ".map(b => [b.top, b.bottom, b.height])")
        table = js("(() => { const b = document.getElementById('summary-table').getBoundingClientRect();"
                   " return [b.top, b.bottom]; })()")
        assert len(rows) == 6 and all(h > 10 for _, _, h in rows), rows
        assert table[0] <= rows[0][0] and rows[-1][1] <= table[1] + 0.5, (table, rows[-1])
        assert js("document.querySelector('#summary-table tbody tr:last-child').innerText").startswith("hyko2")
        assert js("document.getElementById('compute-table').tBodies[0].rows.length") == 6
        time.sleep(0.3)  # let late console messages arrive before judging
        while not cdp._inbox.empty():
            cdp._pump(0.1)
        assert _problems(cdp.events) == []

        shot = cdp.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": 1400, "height": 2400,
                                                             "scale": 1}}, session=sid, timeout=60)
        ARTIFACTS.mkdir(exist_ok=True)
        png = base64.b64decode(shot["data"])
        (ARTIFACTS / "report.png").write_bytes(png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    finally:
        cdp.close()


def test_screenshot_from_the_command_line_shows_the_plots(chromium: str, tmp_path: Path) -> None:
    """``chromium --headless --screenshot``: the first screen shows drawn curves, not a blank or error page."""
    from PIL import Image

    report, _ = write_report(build_store(tmp_path / "store"), tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", *NO_NETWORK, f"--user-data-dir={tmp_path / 'p'}",
           "--window-size=1400,1800", "--virtual-time-budget=15000", f"--screenshot={shot}", report.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=180, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report-cli.png")
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 1800)
    colours = img.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 200, "the page looks blank"  # text, lines, bands and markers give many colours
    # the strategy colours of the two curves are drawn somewhere on the first screen
    from study.report import strategy_color

    drawn = {c for _, c in colours}
    for strategy in ("indomain", "crossdomain"):
        rgb = tuple(int(strategy_color(strategy)[i:i + 2], 16) for i in (1, 3, 5))
        assert any(sum(abs(a - b) for a, b in zip(rgb, c, strict=True)) < 24 for c in drawn), strategy

"""The dashboard live, end to end: one page loaded in a real headless browser (Debian's
chromium, driven over its DevTools protocol) sees task counts change and a lost node's
reason appear without reloading; the reason in `clusterctl history --nodes`; and the
dashboard of an `api.init()` local cluster, whose URL init() prints and returns and
`clusterctl dashboard --cluster ID` finds."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from typing import Any

import pytest

import api
from tests.helpers import head_and_second_daemon

pytestmark = pytest.mark.timeout(240)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium: scripts/setup.sh installs Debian's chromium when "
                             "run as root (apt-get install chromium)")


@api.python_app
def triple(x):
    return 3 * x


class Page:
    """One page of a headless chromium, read through the DevTools protocol (CDP) over
    aiohttp's websocket client: Runtime.evaluate returns what the page's DOM shows now."""

    def __init__(self, url: str, tmp: Any) -> None:
        profile = tmp / "profile"
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "--window-size=1280,900", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.loop = asyncio.new_event_loop()
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            assert self.proc.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium wrote no DevToolsActivePort"
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        self.loop.run_until_complete(self._connect())
        self._id = 0

    async def _connect(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession()
        deadline = time.monotonic() + 60
        while True:
            async with self.session.get(f"http://127.0.0.1:{self.port}/json/list") as r:
                pages = [t for t in await r.json() if t.get("type") == "page"]
            if pages:
                break
            assert time.monotonic() < deadline, "chromium opened no page"
            await asyncio.sleep(0.1)
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"],
                                                max_msg_size=0)

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return msg["result"]

    def eval(self, expression: str) -> Any:
        """The value of `expression` in the page."""
        result = self.loop.run_until_complete(
            self._call("Runtime.evaluate", expression=expression, returnByValue=True))
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 60) -> Any:
        """Poll `expression` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                print("DEBUG", self.eval("document.body.innerText.slice(0, 600)"))
                print("DEBUG", self.eval("location.href"))
            assert time.monotonic() < deadline, f"the page never showed {what}"
            time.sleep(0.2)

    def screenshot(self, path: Any) -> None:
        import base64

        data = self.loop.run_until_complete(self._call("Page.captureScreenshot"))["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.session.close())
        finally:
            self.loop.close()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def pair(clusterctl, no_session):
    with head_and_second_daemon(clusterctl, "dash-live") as (cf, daemon):
        out = clusterctl("dashboard", "--cluster", "dash-live")
        assert out.returncode == 0, out.stderr
        yield cf, daemon, out.stdout.strip().splitlines()[0]


def _done_count(page: Page) -> int:
    return int(page.eval("(document.querySelector('#count-done b') || {}).textContent "
                         "|| '-1'"))


@needs_browser
def test_one_loaded_page_follows_the_cluster(pair, clusterctl, tmp_path):
    """The issue's "live updates without reloading": the page's task counts grow as tasks
    finish, and a node killed meanwhile shows as lost with its reason, in the same
    document (a marker set in it survives; it was never navigated)."""
    cf, daemon, url = pair
    # A driver of a `clusterctl up` cluster is told the same address init() returns.
    assert api.init(ignore_reinit_error=True).dashboard_url == url
    page = Page(url, tmp_path)
    try:
        page.wait_for("document.querySelector('#count-done') !== null", "the overview")
        page.wait_for("document.querySelectorAll('tr.node').length === 2", "both nodes")
        page.eval("window.__shoalMarker = 'same document'; 1")
        before = _done_count(page)
        assert before >= 0
        futs = [triple(i) for i in range(25)]
        assert api.get(futs) == [3 * i for i in range(25)]
        page.wait_for(f"Number(document.querySelector('#count-done b').textContent) >= "
                      f"{before + 25}", "the new tasks done")
        assert _done_count(page) >= before + 25

        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        reason = page.wait_for(
            "[...document.querySelectorAll('tr.node')].filter(r => r.querySelector("
            "'.name').textContent === 'second').map(r => (r.querySelector('.reason') || "
            "{}).textContent).join('')", "the lost node's reason", timeout=90)
        assert page.eval("window.__shoalMarker") == "same document"
        assert page.eval("document.querySelector('tr.node.lost .name').textContent") == \
            "second"
        page.screenshot(tmp_path / "live.png")
        assert (tmp_path / "live.png").stat().st_size > 1000
    finally:
        page.close()

    # The same reason in the history (the head sent it with the node's loss).
    deadline = time.monotonic() + 30
    while True:
        nodes = json.loads(clusterctl("history", "--nodes", "--json", "--cluster",
                                      "dash-live").stdout)
        second = [n for n in nodes if n["name"] == "second"]
        if second and second[0]["state"] == "lost":
            break
        assert time.monotonic() < deadline, nodes
        time.sleep(0.3)
    assert second[0]["reason"] == reason and second[0]["left"] >= second[0]["joined"]
    table = clusterctl("history", "--nodes", "--cluster", "dash-live").stdout
    assert any(line.startswith("second") and "lost" in line and reason in line
               for line in table.splitlines()), table


def _get(url: str, opener: Any = None) -> tuple[int, str]:
    opener = opener or urllib.request.build_opener()
    try:
        with opener.open(url, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def test_api_init_serves_a_dashboard_and_says_where(no_session, capfd, clusterctl):
    """Ray prints its dashboard's address at init() and returns it; so does api.init() for
    the local cluster it starts: the URL (with its token) answers, without it: 401."""
    info = api.init(num_cpus=1)
    try:
        url = info.dashboard_url
        assert url.startswith("http://127.0.0.1:") and "?token=" in url
        assert url in capfd.readouterr().err
        assert triple(5).result() == 15
        base, token = url.split("?token=")
        assert _get(base + "api/overview")[0] == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        status, body = _get(url, opener)            # the token once: then the cookie
        assert status == 200 and "shoal" in body.lower()
        deadline = time.monotonic() + 30
        while True:
            overview = json.loads(_get(base + "api/overview", opener)[1])
            if overview["counts"].get("done", 0) >= 1:
                break
            assert time.monotonic() < deadline, overview
            time.sleep(0.2)
        assert overview["live"] and overview["cluster_id"] == info.cluster_id
        assert [n["state"] for n in overview["nodes"]] == ["alive"]
        assert info.log_dir and os.path.exists(os.path.join(info.log_dir, "history.sqlite"))
        # `clusterctl dashboard` finds it too (it has no cluster file: its head's note).
        found = clusterctl("dashboard", "--cluster", info.cluster_id)
        assert found.returncode == 0 and found.stdout.strip() == url, found.stderr
    finally:
        api.shutdown()
    note = os.path.join(info.log_dir, "dashboard.json")
    deadline = time.monotonic() + 30
    while os.path.exists(note):                  # removed when the cluster stops
        assert time.monotonic() < deadline
        time.sleep(0.1)

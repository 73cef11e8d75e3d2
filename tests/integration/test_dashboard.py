"""The dashboard end to end: a cluster started by `clusterctl up`, its token and cookie
(urllib), its pages in a real headless browser (Debian's chromium; skipped, saying why,
where there is none), /metrics, and a finished run's pages after `down`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest

import api
from cluster.common import auth, clusterfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.timeout(180)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium: scripts/setup.sh installs Debian's chromium when "
                             "run as root (apt-get install chromium)")


def ctl(*args, timeout=60, env=None):
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


@api.python_app
def square(x):
    print(f"squaring {x}")
    return x * x


@api.python_app
def broken():
    raise KeyError("missing-key")


@api.actor
class Keeper:
    def __init__(self):
        self.items = []

    def keep(self, x):
        self.items.append(x)
        return len(self.items)


@pytest.fixture(scope="module")
def dash(tmp_path_factory):
    api.shutdown()
    up = ctl("up", "--num-cpus", "2", "--cluster-id", "dash-a")
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for("dash-a"))
    api.init(cf.path, run_dir=str(tmp_path_factory.mktemp("runinfo")))
    try:
        keeper = Keeper.options(name="the-keeper")()
        assert keeper.keep(1).result() == 1
        futs = [square(i) for i in range(12)]
        api.get(futs)
        bad = broken()
        with pytest.raises(KeyError):
            bad.result()
        out = ctl("dashboard", "--cluster", "dash-a")
        assert out.returncode == 0, out.stderr
        url = out.stdout.strip().splitlines()[0]
        # The history is sent every 0.1 s, actors snapshotted every 1 s, and the writer
        # may keep what it read up to 2 s while the CPUs are busy: wait until it is there.
        from cluster.common import historydb, paths

        deadline = time.monotonic() + 60
        while True:
            try:
                db = historydb.connect(paths.history_file(cf.log_dir))
                counts = historydb.counts_by_state(db)
                if counts["done"] >= 12 and counts["failed"] == 1 and historydb.actors(db):
                    break
            except historydb.HistoryError:
                pass
            assert time.monotonic() < deadline, "the history never had the run"
            time.sleep(0.2)
        yield {"cf": cf, "url": url, "base": url.split("?")[0], "bad": bad, "keeper": keeper,
               "tmp": tmp_path_factory.mktemp("browser")}
    finally:
        api.shutdown()
        ctl("down", "--cluster", "dash-a")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _status(url, opener=None):
    try:
        with (opener or urllib.request.build_opener(_NoRedirect)).open(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def test_url_token_and_cookie(dash):
    cf, url, base = dash["cf"], dash["url"], dash["base"]
    parsed = urllib.parse.urlparse(url)
    assert parsed.hostname == "127.0.0.1" and parsed.port > 0   # loopback, a port it picked
    token = urllib.parse.parse_qs(parsed.query)["token"][0]
    assert token == auth.dashboard_token(cf.secret) and cf.secret not in url
    for path in ("", "tasks", "api/overview", "metrics", "static/app.js"):
        code, _, body = _status(base + path)
        assert code == 401, path
        assert "clusterctl dashboard" in body
    assert _status(base + "?token=wrong")[0] == 401
    code, headers, _ = _status(url)
    assert code == 302 and headers["Location"] == "/"          # the token leaves the URL
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    code, _, page = _status(url, opener)
    assert code == 200 and "shoal" in page
    code, _, body = _status(base + "api/overview", opener)    # the cookie alone is enough
    assert code == 200
    data = json.loads(body)
    assert data["live"] and data["nodes"][0]["name"]
    assert data["counts"]["done"] >= 12 and data["counts"]["failed"] == 1
    assert any(a["name"] == "the-keeper" for a in data["actors"])
    code, headers, metrics = _status(base + "metrics", opener)
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'shoal_up{cluster="dash-a"} 1' in metrics
    assert 'shoal_history_tasks{state="failed"} 1' in metrics
    for line in metrics.splitlines():
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2
    # Scrapers keep no cookies: the token on each request, or as a bearer header.
    plain = urllib.request.build_opener(_NoRedirect)
    assert _status(base + "metrics?token=" + token, plain)[0] == 200
    request = urllib.request.Request(base + "metrics", headers={"Authorization":
                                                                 f"Bearer {token}"})
    assert _status(request, plain)[0] == 200
    wrong = urllib.request.Request(base + "metrics", headers={"Authorization": "Bearer x"})
    assert _status(wrong, plain)[0] == 401


def test_inside_slurm_it_prints_the_tunnel(dash):
    out = ctl("dashboard", "--cluster", "dash-a", env={"SLURM_JOB_ID": "4242"})
    assert out.returncode == 0, out.stderr
    port = urllib.parse.urlparse(dash["url"]).port
    assert out.stdout.strip() == dash["url"]
    assert f"ssh -N -L {port}:127.0.0.1:{port} {dash['cf'].host}" in out.stderr


def _browser(url, tmp, name, dump=True):
    """The page after its scripts ran (--dump-dom), or a screenshot."""
    profile = tmp / f"profile-{name}"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={profile}", "--virtual-time-budget=3000"]
    if dump:
        args += ["--dump-dom", url]
    else:
        args += [f"--screenshot={tmp / (name + '.png')}", "--window-size=1280,900", url]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@needs_browser
def test_pages_in_a_browser(dash):
    url, base, tmp = dash["url"], dash["base"], dash["tmp"]
    token = url.split("token=")[1]
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    # The chart needs two of the history's once-a-second samples, which the writer (paced:
    # it may hold frames for a few seconds on a busy machine) must have stored first.
    deadline = time.monotonic() + 60
    while True:
        data = json.loads(_status(base + "api/overview?token=" + token, opener)[2])
        if len(data["samples"]) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    node = data["nodes"][0]["name"]
    overview = _browser(url, tmp, "overview")
    assert f'<td class="name">{node}</td>' in overview
    assert '<div class="count failed" id="count-failed"><b>1</b> failed</div>' in overview
    assert '<td class="actor-class">Keeper</td>' in overview and "the-keeper" in overview
    assert '<svg id="chart"' in overview
    failed = _browser(f"{base}tasks?state=failed&token={token}", tmp, "tasks")
    bad = f"{dash['bad'].task_id:#x}"
    assert f'<a href="/task/{bad}">{bad}</a>' in failed and "KeyError" in failed
    assert '<tr class="task done">' not in failed
    one = _browser(f"{base}task/{bad}?token={token}", tmp, "task")
    assert f'<span id="task-id">{bad}</span>' in one
    assert '<pre id="traceback">' in one and "missing-key" in one
    actors = _browser(f"{base}actors?token={token}", tmp, "actors")
    assert "the-keeper" in actors and '<tr class="actor alive">' in actors
    timeline = _browser(f"{base}timeline?token={token}", tmp, "timeline")
    assert '<svg id="timeline"' in timeline and "<rect" in timeline
    objects = _browser(f"{base}objects?token={token}", tmp, "objects")
    assert 'id="objects-total"' in objects
    blocks = _browser(f"{base}blocks?token={token}", tmp, "blocks")
    assert "does not autoscale" in blocks
    _browser(url, tmp, "overview", dump=False)
    shot = tmp / "overview.png"
    assert shot.exists() and shot.stat().st_size > 5000
    print(f"screenshot: {shot}")


def test_finished_run_is_served_read_only(dash):
    api.shutdown()
    assert ctl("down", "--cluster", "dash-a").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "dashboard", "--cluster",
                             "dash-a"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "token=" in url
        base = url.split("?")[0]
        assert _status(base + "api/tasks")[0] == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        assert _status(url, opener)[0] == 200
        data = json.loads(_status(base + "api/tasks?state=failed", opener)[2])
        assert not data["live"] and data["total"] == 1
        assert data["rows"][0]["task_id"] == dash["bad"].task_id
        overview = json.loads(_status(base + "api/overview", opener)[2])
        assert overview["nodes"] and overview["nodes"][0]["state"] == "stopped"
        assert any(a["name"] == "the-keeper" for a in overview["actors"])
        if CHROMIUM is not None:
            page = _browser(url, dash["tmp"], "finished")
            assert "(finished run, read-only)" in page
            assert '<div class="count done" id="count-done"><b>12</b> done</div>' in page
    finally:
        proc.terminate()
        proc.wait(10)

"""The HTTP gateway (python -m gateway): token, loopback-only binding, the JSON
API against a real running unit, the frame thumbnail, refusals."""
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest

from gateway.cli import is_loopback, read_token
from gateway.thumbnail import downsample, encode_png, stretch
from tests.unit_runner import ROOT, RunningUnit

DARK = "2026-11-24T08:00:00"
TOKEN = "test-token-0123456789abcdef"


class GatewayProcess:
    """python -m gateway on a free loopback port, for one test."""

    def __init__(self, pandir, *args, token=TOKEN, env=None):
        environ = {**os.environ, **(env or {})}
        environ.pop("PANOPTES_TOKEN", None)
        if token is not None:
            environ["PANOPTES_TOKEN"] = token
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--pandir", str(pandir), "--port", "0",
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                                     env=environ, start_new_session=True)
        line = b""
        deadline = time.time() + 20
        while time.time() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    break
                line += chunk
        text = line.decode()
        if "serving http://" not in text:
            self.kill()
            raise AssertionError(f"the gateway did not start: {text!r} {self.proc.stderr.read().decode()}")
        self.url = text.split("serving ")[1].split()[0].rstrip("/")

    def request(self, path, token=TOKEN, method="GET", body=None, headers=None):
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, headers=h, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, path, **kw):
        status, headers, body = self.request(path, **kw)
        return status, json.loads(body)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.stderr = self.proc.stderr.read().decode()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


def png_size_and_pixels(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        assert zlib.crc32(kind + chunk) & 0xFFFFFFFF == struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        if kind == b"IHDR":
            size = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    w, h = size
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, w + 1)
    assert (raw[:, 0] == 0).all()
    return (w, h), raw[:, 1:]


# ------------------------------------------------------------ on its own

def test_token_sources_and_rules(tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    f.chmod(0o600)
    assert read_token(str(f), environ={}) == TOKEN
    assert read_token(None, environ={"PANOPTES_TOKEN": TOKEN}) == TOKEN
    with pytest.raises(Exception, match="no token: give --token-file FILE or set PANOPTES_TOKEN"):
        read_token(None, environ={})
    with pytest.raises(Exception, match="at least 16 characters"):
        read_token(None, environ={"PANOPTES_TOKEN": "short"})
    with pytest.raises(Exception, match="No such file"):
        read_token(str(tmp_path / "missing"), environ={})


def test_loopback_only_unless_allowed(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.10")
    r = subprocess.run([sys.executable, "-m", "gateway", "--pandir", str(tmp_path), "--bind", "0.0.0.0"],
                       capture_output=True, text=True, cwd=ROOT, timeout=30,
                       env={**os.environ, "PANOPTES_TOKEN": TOKEN})
    assert r.returncode == 2 and "--bind 0.0.0.0: not a loopback address" in r.stderr
    assert "--allow-remote" in r.stderr
    r = subprocess.run([sys.executable, "-m", "gateway", "--pandir", str(tmp_path)], capture_output=True,
                       text=True, cwd=ROOT, timeout=30, env={k: v for k, v in os.environ.items()
                                                             if k != "PANOPTES_TOKEN"})
    assert r.returncode == 2 and "no token" in r.stderr


def test_remote_bind_with_allow_remote_warns(tmp_path):
    gw = GatewayProcess(tmp_path, "--bind", "0.0.0.0", "--allow-remote", "--quiet")
    try:
        gw.url = gw.url.replace("0.0.0.0", "127.0.0.1")
        assert gw.request("/api/status")[0] == 503
    finally:
        gw.kill()
    assert "listening on 0.0.0.0, beyond this computer: use TLS" in gw.stderr


def test_thumbnail_png_is_a_valid_greyscale_image():
    image = np.random.default_rng(1).normal(1000, 10, (869, 1302)).astype(np.float32)
    image[100:103, 200:203] = 60000
    small = downsample(image, 480)
    assert small.shape == (289, 434)
    grey = stretch(small)
    (w, h), pixels = png_size_and_pixels(encode_png(grey))
    assert (w, h) == (434, 289)
    assert (pixels == grey).all()
    assert pixels[33, 66] == 255 and np.median(pixels) < 200
    assert stretch(np.full((4, 4), np.nan)).max() == 0


def test_without_a_unit_the_api_says_so(tmp_path):
    gw = GatewayProcess(tmp_path / "pandir", "--quiet")
    try:
        status, body = gw.json("/api/status")
        assert status == 503 and body["error"] == f"no unit running under PANDIR: {tmp_path / 'pandir'}"
    finally:
        gw.kill()


# ------------------------------------------------------------ with a unit

def test_api_against_a_running_unit(tmp_path):
    unit = RunningUnit(tmp_path, start=DARK, speed=60)
    gw = None
    try:
        unit.wait_for(lambda: unit.query("SELECT 1 FROM exposures WHERE image_type='science' LIMIT 1"), 90,
                      "a science frame")
        gw = GatewayProcess(unit.pandir)

        # The token: missing, wrong, right.
        status, headers, body = gw.request("/api/status", token=None)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert json.loads(body)["error"].startswith("missing or wrong token")
        assert gw.request("/api/status", token=TOKEN + "x")[0] == 401
        assert gw.request("/api/status", headers={"Authorization": f"Basic {TOKEN}"}, token=None)[0] == 401
        status, s = gw.json("/api/status")
        assert status == 200 and s["unit"] == "Generic PANOPTES Unit" and s["safety"]["safe"] is True

        status, headers, body = gw.request("/api/status")
        assert headers["Cache-Control"] == "no-store" and headers["X-Content-Type-Options"] == "nosniff"

        status, ev = gw.json("/api/events?limit=3")
        assert status == 200 and len(ev["events"]) == 3
        status, ev2 = gw.json(f"/api/events?since={ev['events'][0]['id']}&limit=1")
        assert [e["id"] for e in ev2["events"]] == [ev["events"][1]["id"]]
        status, bad = gw.json("/api/events?since=yesterday")
        assert status == 400 and bad["error"] == "since must be a whole number, got 'yesterday'"
        status, why = gw.json("/api/why")
        assert status == 200 and why["decision"]["winner"] and why["decision"]["candidates"]
        status, f = gw.json("/api/fields")
        assert status == 200 and "HD 209458" in [x["name"] for x in f["fields"]]
        status, tl = gw.json("/api/timeline")
        assert status == 200 and tl["dark_start_unix"] < tl["now_unix"] < tl["dark_end_unix"]
        states = [seg["state"] for seg in tl["segments"]]
        assert "sleeping" in states and "slewing" in states and "observing" in states, states

        # The latest frame.
        status, frame = gw.json("/api/frame/latest")
        assert status == 200 and frame["path"].endswith(".fits") and frame["camera"] in ("cam00", "cam01")
        status, headers, png = gw.request("/api/frame/latest.png")
        assert status == 200 and headers["Content-Type"] == "image/png"
        (w, h), pixels = png_size_and_pixels(png)
        assert w <= 480 and h > 100 and pixels.std() > 5

        # Commands: validated like the console's, then forwarded.
        for body, problem in (({"command": "picture", "args": {"exptime": "x"}},
                               "picture: exptime must be a number, got 'x'"),
                              ({"command": "launch"}, "unknown command 'launch'"),
                              ({"command": "park", "args": {"force": True}}, "park: unknown argument(s) force"),
                              ([1, 2], "a request must be a JSON object")):
            status, r = gw.json("/api/command", method="POST", body=body)
            assert status == 400 and problem in r["error"], (body, r)
        status, r = gw.json("/api/command", method="POST", body=b"{nope")
        assert status == 400 and r["error"].startswith("the body is not JSON")
        status, r = gw.json("/api/command", method="POST", body=b"{}", headers={"Content-Type": "text/plain"})
        assert status == 415
        status, r = gw.json("/api/command", method="POST", body=b"x" * 70000)
        assert status == 413
        status, r = gw.json("/api/command", method="POST",
                            body={"command": "config-set", "args": {"key": "location.latitude", "value": 3}})
        assert status == 409 and "restart needed" in r["error"]
        status, r = gw.json("/api/command", method="POST",
                            body={"command": "config-get", "args": {"key": "safety.max_wind"}})
        assert status == 200 and r == {"ok": True, "command": "config-get",
                                       "result": {"key": "safety.max_wind", "value": 50.0, "live": True}}
        status, r = gw.json("/api/command", method="POST", body={"command": "pause"})
        assert status == 200 and r["ok"] and r["command"] == "pause", r
        status, r = gw.json("/api/command", method="POST", body={"command": "resume"})
        assert status == 200 and r["ok"], r

        # Anything else is refused with a JSON error and the right status.
        status, headers, body = gw.request("/api/command")
        assert status == 405 and headers["Allow"] == "POST"
        assert gw.json("/api/status", method="POST", body={})[0] == 405
        status, r = gw.json("/api/shutdown")
        assert status == 404 and r["error"] == "no such endpoint: GET /api/shutdown"
        status, headers, body = gw.request("/api/status", method="DELETE")
        assert status == 405 and headers["Allow"] == "GET"

        # The page itself needs no token and holds no data; nothing else is served.
        status, headers, page = gw.request("/", token=None)
        assert status == 200 and b"/static/app.js" in page and b"Generic PANOPTES Unit" not in page
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert gw.request("/static/app.js", token=None)[0] == 200
        for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/server.py", "/static/"):
            assert gw.request(path, token=None)[0] == 404, path
    finally:
        if gw is not None:
            gw.kill()
        unit.kill()

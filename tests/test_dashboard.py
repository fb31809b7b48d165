"""The web dashboard in a real browser: headless Chromium loads the page from
a gateway in front of a running unit (speed 60, the default simulators) and
we read what a person would see from the DOM it ends with."""
import os
import shutil
import signal
import subprocess
from html.parser import HTMLParser

import pytest

from tests.test_gateway import TOKEN, GatewayProcess
from tests.unit_runner import RunningUnit

DARK = "2026-11-24T08:00:00"
STATES = {"sleeping", "ready", "scheduling", "slewing", "pointing", "tracking", "observing", "analyzing",
          "parking", "parked", "housekeeping"}


def chromium_binary():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (scripts/bootstrap installs the Debian package 'chromium')")
        pytest.skip("chromium is not installed (apt-get install chromium); CI never skips this test")
    return found


class Page(HTMLParser):
    """Elements by id: their attributes and their text (with the text of what they hold)."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, html: str):
        super().__init__()
        self.by_id: dict[str, dict] = {}
        self.elements: list[tuple[str, dict]] = []
        self.stack: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        node = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append((tag, node))
        if "id" in node["attrs"]:
            self.by_id[node["attrs"]["id"]] = node
        if tag not in self.VOID:
            self.stack.append((tag, node))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID and self.stack and self.stack[-1][0] == tag:
            self.stack.pop()

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        for _, node in self.stack:
            node["text"] += data

    def text(self, element_id: str) -> str:
        return " ".join(self.by_id[element_id]["text"].split())

    def attrs(self, element_id: str) -> dict:
        return self.by_id[element_id]["attrs"]

    def find(self, tag: str, **attrs) -> list[dict]:
        return [n for t, n in self.elements if t == tag
                and all(n["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items())]


def dump_dom(chromium: str, url: str, profile, budget_ms: int = 10000) -> Page:
    proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
                             f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "HOME": str(profile)})
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return Page(out.decode())


def test_dashboard_shows_the_running_unit(tmp_path):
    chromium = chromium_binary()
    unit = RunningUnit(tmp_path, start=DARK, speed=60)
    gw = None
    try:
        unit.wait_for(lambda: unit.query("SELECT 1 FROM exposures WHERE image_type='science' LIMIT 1"), 90,
                      "a science frame")
        gw = GatewayProcess(unit.pandir, "--quiet")
        target = unit.status()["target"]
        assert target

        page = dump_dom(chromium, f"{gw.url}/#token={TOKEN}", tmp_path / "profile")
        assert "hidden" in page.attrs("login")
        assert "hidden" not in page.attrs("dashboard")
        assert page.text("unit-name") == "Generic PANOPTES Unit"
        assert page.text("state") in STATES
        assert page.text("connection") == "connected"
        assert page.text("target") == target
        assert page.text("safety") == "SAFE"
        assert page.text("sun").startswith("sun at -")
        assert "tracking" in page.text("mount") or "slewing" in page.text("mount")
        frame = page.attrs("frame")
        assert frame["src"].startswith("blob:") and frame.get("data-loaded") == "1", frame
        assert page.text("frame-caption").startswith(target)
        current = page.find("circle", data_field=target)
        assert current and "current" in current[0]["attrs"]["class"], "the field is not marked on the sky plot"
        assert target in page.text("sky-caption")
        drawn = {r["attrs"]["data-state"] for r in page.find("rect") if "data-state" in r["attrs"]}
        assert {"sleeping", "observing"} <= drawn, drawn
        assert "observing" in page.text("timeline-legend")
        rows = page.by_id["events"]["text"]
        assert "observing -> analyzing" in rows
        assert "cam00 ready" in page.text("cameras") and "cam01 ready" in page.text("cameras")
        assert page.text("decision").startswith(target)

        # Without the token the page asks for it; with a wrong one it says so.
        page = dump_dom(chromium, f"{gw.url}/", tmp_path / "profile2", budget_ms=3000)
        assert "hidden" not in page.attrs("login") and "hidden" in page.attrs("dashboard")
        assert page.text("state") == "…"
        page = dump_dom(chromium, f"{gw.url}/#token=wrong-token-0123456789", tmp_path / "profile3",
                        budget_ms=3000)
        assert "hidden" not in page.attrs("login")
        assert page.text("login-error") == "The token was refused; enter it again."
        assert "Generic PANOPTES Unit" not in page.text("dashboard")
    finally:
        if gw is not None:
            gw.kill()
        unit.kill()

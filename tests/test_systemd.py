"""run_unit.py under systemd: sd_notify messages on a fake NOTIFY_SOCKET, and
the shipped unit file conf/panoptes-unit.service."""
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

import run_unit
from tests.unit_runner import ROOT, RunningUnit, own_processes

DARK = "2026-11-24T08:00:00"
UNIT_FILE = ROOT / "conf" / "panoptes-unit.service"


# ------------------------------------------------------------ the notifier

def test_notifier_reads_and_removes_the_systemd_variables(tmp_path):
    env = {"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid()),
           "OTHER": "x"}
    n = run_unit.SystemdNotifier(env)
    assert env == {"OTHER": "x"}, "children must not inherit NOTIFY_SOCKET or the watchdog"
    assert n.address == str(tmp_path / "n.sock") and n.watchdog_interval == 15.0
    assert run_unit.SystemdNotifier({"NOTIFY_SOCKET": "@abstract"}).address == "\0abstract"
    assert run_unit.SystemdNotifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert run_unit.SystemdNotifier({"NOTIFY_SOCKET": "relative"}).address is None
    silent = run_unit.SystemdNotifier({})
    assert silent.address is None and silent.watchdog_interval is None
    silent.notify("READY=1")                  # nothing to send to: no error

    # A datagram, including to a path too long for sun_path, and to an abstract socket.
    deep = tmp_path / ("x" * 70) / ("y" * 40)
    deep.mkdir(parents=True)
    for address, bind in ((str(deep / "notify.sock"), None), (f"@panoptes-test-{os.getpid()}",
                                                               f"\0panoptes-test-{os.getpid()}")):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            if bind:
                s.bind(bind)
            else:
                os.chdir(deep)
                try:
                    s.bind("notify.sock")
                finally:
                    os.chdir(ROOT)
            s.settimeout(2)
            run_unit.SystemdNotifier({"NOTIFY_SOCKET": address}).notify("READY=1", "STATUS=hello")
            assert s.recv(1024) == b"READY=1\nSTATUS=hello"
    # Nobody listening: ignored.
    run_unit.SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).notify("WATCHDOG=1")


class FakeSystemd:
    """The listening end of NOTIFY_SOCKET: records every datagram with its arrival time."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.time(), line))

    def lines(self, prefix=""):
        return [(t, m) for t, m in list(self.messages) if m.startswith(prefix)]

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def test_ready_watchdog_and_stopping_reach_systemd(tmp_path, monkeypatch):
    fake = FakeSystemd(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")          # pings every 0.5 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    unit = RunningUnit(tmp_path, start=DARK, speed=60)
    try:
        unit.wait_for(lambda: fake.lines("READY=1"), 60, "READY=1")
        ready_at = fake.lines("READY=1")[0][0]
        assert unit.status().get("state") not in (None, "starting"), "READY=1 before start-up was complete"
        statuses = [m for _, m in fake.lines("STATUS=")]
        assert any(m.startswith("STATUS=sleeping") or m.startswith("STATUS=ready") for m in statuses), statuses
        unit.wait_for(lambda: len([t for t, _ in fake.lines("WATCHDOG=1") if t > ready_at]) >= 4, 20,
                      "watchdog pings")
        unit.wait_for(lambda: any(m.startswith("STATUS=observing") for _, m in fake.lines("STATUS=")), 90,
                      "observing")

        # The simulators were started by run_unit.py: they must not have inherited NOTIFY_SOCKET.
        simulators = [p for p in own_processes(str(unit.pandir))
                      if b"simulators." in open(f"/proc/{p}/cmdline", "rb").read()]
        assert simulators
        for pid in simulators:
            assert b"NOTIFY_SOCKET" not in open(f"/proc/{pid}/environ", "rb").read()

        # No pings while the supervisor cannot answer.
        sup = unit.status()["supervisor"]["pid"]
        os.kill(sup, signal.SIGSTOP)
        try:
            time.sleep(0.7)
            stopped_at = time.time()
            time.sleep(2.0)
            assert not [t for t, _ in fake.lines("WATCHDOG=1") if t > stopped_at], \
                "WATCHDOG=1 sent while the supervisor was stopped"
        finally:
            os.kill(sup, signal.SIGCONT)
        resumed = time.time()
        unit.wait_for(lambda: [t for t, _ in fake.lines("WATCHDOG=1") if t > resumed], 20, "pings again")

        assert unit.terminate(90) == 0
        stopping = fake.lines("STOPPING=1")
        assert len(stopping) == 1 and stopping[0][0] > ready_at
        assert any(m.startswith("STATUS=stopping (SIGTERM)") for _, m in fake.lines("STATUS="))
        assert len(fake.lines("READY=1")) == 1
    finally:
        unit.kill()
        fake.close()


# ------------------------------------------------------------ the unit file

def parse_unit_file(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            current = sections.setdefault(m.group(1), {})
            continue
        assert current is not None and "=" in line, f"not a unit file line: {raw!r}"
        key, value = (part.strip() for part in line.split("=", 1))
        current.setdefault(key, []).append(value)
    return sections


def seconds(value: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(min|ms|s|h)?", value):
        total += float(number) * {"min": 60, "ms": 0.001, "h": 3600, "s": 1, "": 1}[unit]
    return total


def test_unit_file_says_what_the_service_needs():
    unit = parse_unit_file(UNIT_FILE.read_text())
    service = {k: v[-1] for k, v in unit["Service"].items()}
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["User"] == "panoptes" and service["Group"] == "panoptes"
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    # run_unit.py waits up to 120 s for the park, then 5 s for the actors to exit.
    assert seconds(service["TimeoutStopSec"]) >= 150
    assert seconds(service["WatchdogSec"]) >= 10
    assert "run_unit.py" in service["ExecStart"] and "--pandir" in service["ExecStart"]
    assert "PANDIR=/var/lib/panoptes" in unit["Service"]["Environment"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; test_unit_file_says_what_the_service_needs parsed it")
    # The paths of an installation (/opt/panoptes-unit) replaced by this checkout's, so that
    # verify can check that the command exists.
    text = UNIT_FILE.read_text().replace("/opt/panoptes-unit/.venv/bin/python", shutil.which("python3") or
                                         "/usr/bin/python3").replace("/opt/panoptes-unit", str(ROOT))
    copy = tmp_path / "panoptes-unit.service"
    copy.write_text(text)
    r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    problems = [line for line in (r.stdout + r.stderr).splitlines() if "panoptes-unit.service" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr

"""run_unit.py as a service process: stopping, dying, and refusing to run twice."""
import os
import signal
import socket
import subprocess
import sys
import time

from tests.unit_runner import ROOT, RunningUnit, own_processes

DARK = "2026-11-24T08:00:00"


def observing(unit) -> bool:
    return unit.status().get("state") in ("observing", "analyzing", "tracking")


def test_sigterm_parks_and_leaves_nothing_behind(tmp_path):
    unit = RunningUnit(tmp_path, start=DARK, speed=300)
    try:
        unit.wait_for(lambda: observing(unit), 60, "observing")
        assert unit.terminate() == 0
        assert "unit stopped (parked)" in unit.output()
        assert unit.status()["mount"]["parked"] is True
        time.sleep(0.5)
        assert own_processes(str(unit.pandir)) == []
    finally:
        unit.kill()


def test_when_run_unit_is_killed_the_unit_parks_and_ends_itself(tmp_path):
    unit = RunningUnit(tmp_path, start=DARK, speed=300)
    try:
        unit.wait_for(lambda: observing(unit), 60, "observing")
        port = int(unit.config.read_text().split("admin_port:")[1].split()[0])
        os.kill(unit.proc.pid, signal.SIGKILL)
        unit.proc.wait(10)
        killed = time.time()
        deadline = killed + 20
        while own_processes(str(unit.pandir)) and time.time() < deadline:
            time.sleep(0.2)
        assert own_processes(str(unit.pandir)) == [], "the actor system outlived its owner"
        parked = unit.query("SELECT wall_unix FROM events WHERE kind='mount' AND message='mount parked'"
                            " AND wall_unix > ?", (killed,))
        assert parked, "the mount was not parked before the actor system ended"
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "the admin port is still taken"
    finally:
        unit.kill()


def test_a_second_unit_on_the_same_pandir_or_port_is_refused(tmp_path):
    unit = RunningUnit(tmp_path, start=DARK, speed=60)
    try:
        unit.wait_for(lambda: unit.status().get("state") not in (None, "starting"), 60, "start-up")
        second = subprocess.run([sys.executable, str(ROOT / "run_unit.py"), "--config", str(unit.config),
                                 "--pandir", str(tmp_path / "other"), "--nights", "1"],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert "admin port" in second.stderr and "already in use" in second.stderr
        assert unit.proc.poll() is None, "the running unit must not be disturbed"
    finally:
        unit.kill()

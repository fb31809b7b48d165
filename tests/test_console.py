"""The console (python -m console): no unit, bad commands, cheap imports, text
rendering, and against a real running unit: status (text and JSON, cold
start under 0.5 s), events --follow, the shell on a pipe and on a terminal
(tab completion, readline history)."""
import json
import os
import pty
import select
import signal
import socket
import statistics
import subprocess
import sys
import time

import pytest

from console.render import progress_bar, render_status, render_why
from observatory import control
from tests.unit_runner import ROOT, RunningUnit

DARK = "2026-11-24T08:00:00"


def console(*args, pandir=None, input=None, env=None, timeout=30):
    cmd = [sys.executable, "-m", "console"] + (["--pandir", str(pandir)] if pandir else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


# ------------------------------------------------------------ without a unit

def test_no_unit_is_a_clear_message_and_status_1(tmp_path):
    r = console("status", pandir=tmp_path / "nothing")
    assert r.returncode == 1
    assert r.stderr.strip() == f"no unit running under PANDIR: {tmp_path / 'nothing'} (no such directory)"
    (tmp_path / "pandir" / "run").mkdir(parents=True)
    r = console("status", pandir=tmp_path / "pandir")
    assert r.returncode == 1
    assert r.stderr.startswith(f"no unit running under PANDIR: {tmp_path / 'pandir'} (no control socket ")
    # A socket file left by a unit that was killed: nothing listens.
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(control.socket_path(tmp_path / "pandir")))
    s.close()
    r = console("--json", "status", pandir=tmp_path / "pandir")
    assert r.returncode == 1 and "nothing listens" in r.stderr and r.stdout == ""
    # PANDIR from the environment.
    r = console("status", env={"PANDIR": str(tmp_path / "pandir")})
    assert r.returncode == 1 and str(tmp_path / "pandir") in r.stderr
    for out in (r.stdout, r.stderr):
        assert "Traceback" not in out


def test_bad_command_lines_are_refused_before_looking_for_a_unit(tmp_path):
    for args, problem in ((["picture", "--exptime", "soon"], "picture: --exptime must be a number, got 'soon'"),
                          (["parq"], "unknown command 'parq'; did you mean park?"),
                          (["config", "set", "safety.max_wind"], "config-set: missing argument value"),
                          (["--timeout", "0", "status"], "--timeout must be greater than 0"),
                          (["--bogus"], "unknown option --bogus"),
                          (["status", "--follow"], "--follow goes with the events command")):
        r = console(*args, pandir=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert problem in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    r = console("--help")
    assert r.returncode == 0 and "config set KEY VALUE" in r.stdout and "picture --exptime SECONDS" in r.stdout


def test_the_console_imports_nothing_heavy(tmp_path):
    code = ("import sys; from console.cli import main; import console.shell, console.render;"
            f" main(['--pandir', {str(tmp_path)!r}, 'status']);"
            " heavy = sorted(m for m in sys.modules if m.split('.')[0] in"
            " ('thespian', 'astropy', 'numpy', 'yaml', 'pydantic', 'structlog', 'sqlite3'));"
            " print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


# ------------------------------------------------------------ rendering

STATUS = {
    "unit": "Test Unit", "state": "observing", "since": "2026-11-24T08:10:00.000", "time": "2026-11-24T08:12:30.000",
    "speed": 60.0, "target": "HD 209458",
    "observation": {"id": "abc", "field": "HD 209458", "frames": 3, "set": 0, "min_nexp": 60},
    "safety": {"safe": False, "reasons": ["cloudy (sky-ambient -14.8 C > -25.0 C)", "wind 60 km/h > 50 km/h"],
               "sun_alt_deg": -40.2},
    "mount": {"state": "tracking", "ra_deg": 330.794875, "dec_deg": 18.8843, "tracking": True, "parked": False},
    "cameras": {"cam00": {"exposure_id": "e1", "exptime": 120.0, "started": "2026-11-24T08:11:30.000",
                          "image_type": "science"}},
    "last_decision": {"reason": "HD 209458 best of 18 candidates (merit 176.9)", "time": "2026-11-24T08:00:00"},
    "hold": "pause",
    "actors": [{"name": "mount", "role": "mount", "ready": True, "failed": False, "restarts": 2},
               {"name": "cam00", "role": "camera", "ready": True, "failed": False, "restarts": 0},
               {"name": "cam01", "role": "camera", "ready": False, "failed": True, "restarts": 6}],
}


def test_status_text_shows_what_an_operator_needs():
    text = render_status(STATUS)
    assert text.splitlines()[0] == "Test Unit: OBSERVING since 2026-11-24 08:10:00 (2 min)"
    assert "target    HD 209458  observation abc: 3 of 60 rounds, set 0" in text
    assert "RA 22h03m10.8s  Dec +18d53m03s  (tracking, not parked)" in text
    assert "cam00    ready    [############------------]  50%  science 60/120 s" in text
    assert "cam01    FAILED" in text
    assert "safety    UNSAFE  (sun -40.2 deg)" in text
    assert "- cloudy (sky-ambient -14.8 C > -25.0 C)" in text and "- wind 60 km/h > 50 km/h" in text
    assert "restarts  mount 2, cam01 6 (FAILED)" in text
    assert "hold      pause  (resume to lift)" in text
    calm = render_status({**STATUS, "safety": {"safe": True, "reasons": [], "sun_alt_deg": -40.0},
                          "actors": [dict(a, restarts=0, failed=False) for a in STATUS["actors"]],
                          "cameras": None, "hold": None})
    assert "safety    SAFE" in calm and "restarts  none (3 actors)" in calm and "cam00    ready    idle" in calm
    assert progress_bar(1.5, 4) == "[####] 100%"


def test_why_lists_candidates_best_first_with_vetoes():
    text = render_why({"decision": {"id": "d1", "time": "2026-11-24T08:00:00", "winner": "B", "reason": "B best",
                                    "candidates": [
                                        {"name": "A", "merit": 0, "altitude_deg": 12.0, "vetoes": ["below 30 deg"],
                                         "notes": []},
                                        {"name": "B", "merit": 150.2, "altitude_deg": 70.1, "vetoes": [],
                                         "notes": ["flip needed"]}]}})
    lines = text.splitlines()
    assert lines[0] == "decision d1 at 2026-11-24 08:00:00: B"
    assert lines[3].startswith("* B") and "(flip needed)" in lines[3]
    assert lines[4].startswith("  A") and "below 30 deg" in lines[4]
    assert render_why({"decision": None}) == "no scheduling decision yet"


# ------------------------------------------------------------ with a unit

def _read_until(fd, text: str, timeout: float) -> str:
    buf = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            if text.encode() in buf:
                return buf.decode(errors="replace")
    raise AssertionError(f"{text!r} not seen within {timeout} s; got:\n{buf.decode(errors='replace')[-3000:]}")


def test_console_against_a_running_unit(tmp_path):
    unit = RunningUnit(tmp_path, start=DARK, speed=60)
    follower = shell = None
    try:
        unit.wait_for(lambda: unit.status().get("state") in ("observing", "analyzing", "tracking"), 90,
                      "observing")
        # status as text
        r = console("status", pandir=unit.pandir)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("Generic PANOPTES Unit: ")
        for part in ("target    ", "mount     ", "camera    cam00", "camera    cam01", "safety    SAFE",
                     "restarts  none (8 actors)"):
            assert part in r.stdout, r.stdout

        # status --json, cold: a new process each time, under half a second.
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            r = console("status", "--json", pandir=unit.pandir)
            times.append(time.perf_counter() - t0)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["unit"] == "Generic PANOPTES Unit"
        assert statistics.median(times) < 0.5, times

        r = console("why", pandir=unit.pandir)
        assert r.returncode == 0 and r.stdout.startswith("decision ") and "merit" in r.stdout
        r = console("config", "get", "safety.max_wind", pandir=unit.pandir)
        assert r.stdout.strip() == "safety.max_wind = 50.0  (live)"
        r = console("config", "set", "location.latitude", "10", pandir=unit.pandir)
        assert r.returncode == 1 and "restart needed" in r.stderr
        r = console("observe", "No Such Field", pandir=unit.pandir)
        assert r.returncode == 2 and "no field named 'No Such Field'" in r.stderr

        # events --follow prints the last events, then the new ones as they come.
        last = control.request(unit.pandir, "events", {"limit": 1})["result"]["last_id"]
        follower = subprocess.Popen([sys.executable, "-m", "console", "--pandir", str(unit.pandir), "events",
                                     "--follow", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=ROOT)
        seen = []
        buf = b""
        deadline = time.time() + 30
        while time.time() < deadline and not any(e["id"] > last + 3 for e in seen):
            ready, _, _ = select.select([follower.stdout], [], [], 0.5)
            if ready:
                buf += os.read(follower.stdout.fileno(), 65536)
                *lines, buf = buf.split(b"\n")
                seen += [json.loads(line) for line in lines if line.strip()]
        ids = [e["id"] for e in seen]
        assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
        assert any(i > last + 3 for i in ids), f"no new events followed: {ids}"
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
        follower.stdout.close()
        follower.stderr.close()

        # The shell, reading commands from a pipe.
        r = console(pandir=unit.pandir, input="status\nconfig get scheduler.hysteresis\nbogus\nwhy --json\nquit\n",
                    env={"HOME": str(tmp_path)})
        assert r.returncode == 0, r.stderr
        assert "safety    SAFE" in r.stdout and "scheduler.hysteresis = 0.1  (live)" in r.stdout
        assert '"candidates"' in r.stdout
        assert "unknown command 'bogus'" in r.stderr

        # The shell on a terminal: tab completion of commands and field names, readline history.
        master, slave = pty.openpty()
        shell = subprocess.Popen([sys.executable, "-m", "console", "--pandir", str(unit.pandir)], stdin=slave,
                                 stdout=slave, stderr=slave, cwd=ROOT, start_new_session=True,
                                 env={**os.environ, "HOME": str(tmp_path), "TERM": "xterm"})
        os.close(slave)
        _read_until(master, "panoptes> ", 20)
        os.write(master, b"obs\t")
        _read_until(master, "observe ", 10)
        os.write(master, b"HD 20\t")
        _read_until(master, "209458", 10)
        os.write(master, b"\r")
        out = _read_until(master, "panoptes> ", 20)
        assert "observe: ok" in out, out
        os.write(master, b"config set safety.max_g\t")
        _read_until(master, "max_gust ", 10)
        os.write(master, b"65\r")
        out = _read_until(master, "panoptes> ", 20)
        assert "safety.max_gust: 70.0 -> 65.0" in out, out
        os.write(master, b"quit\r")
        assert shell.wait(10) == 0
        os.close(master)
        history = (tmp_path / ".panoptes_console_history").read_text().splitlines()
        assert "observe HD 209458" in history and "config set safety.max_gust 65" in history, history
    finally:
        for p in (follower, shell):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)
        unit.kill()

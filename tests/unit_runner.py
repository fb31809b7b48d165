"""Run a real unit (run_unit.py in its own process) for integration tests, and
read what it leaves under $PANDIR."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, overrides: dict | None = None, weather: list | None = None) -> Path:
    """A copy of conf/unit.yaml with a free admin port, absolute paths and overrides."""
    cfg = yaml.safe_load((ROOT / "conf" / "unit.yaml").read_text())
    cfg["actor_system"] = {"admin_port": free_port()}
    cfg["states"] = str(ROOT / "conf" / "states.yaml")
    cfg["scheduler"]["fields_file"] = str(ROOT / "conf" / "fields.yaml")
    cfg["focusers"] = []     # the demo's autofocus costs a minute of a test's night: only where a test asks
    cfg.setdefault("calibration", {})["flats"] = False    # twilight flats too: only where a test asks
    if weather is not None:
        timeline = tmp_path / "weather.yaml"
        timeline.write_text(yaml.safe_dump(weather))
        cfg["weather"]["timeline"] = str(timeline)
    else:
        cfg["weather"]["timeline"] = str(ROOT / "conf" / "weather" / "clear.yaml")
    for key, value in (overrides or {}).items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "unit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class RunningUnit:
    def __init__(self, tmp_path: Path, *, start: str, speed: float, nights: int | None = None,
                 overrides: dict | None = None, weather: list | None = None, config: Path | None = None,
                 pandir: Path | None = None):
        self.pandir = pandir or tmp_path / "pandir"
        self.config = config or write_config(tmp_path, overrides, weather)
        self.speed = speed
        args = [sys.executable, str(ROOT / "run_unit.py"), "--config", str(self.config), "--start", start,
                "--speed", str(speed), "--pandir", str(self.pandir)]
        if nights:
            args += ["--nights", str(nights)]
        self.log_path = tmp_path / "run_unit.out"
        self._out = open(self.log_path, "w")
        self.started_wall = time.time()
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True)

    # -- reading what the unit writes --------------------------------------

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log_path.read_text()

    def status(self) -> dict:
        try:
            return json.loads((self.pandir / "run" / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def query(self, sql: str, args=()) -> list[tuple]:
        db = self.pandir / "db" / "unit.sqlite"
        if not db.exists():
            return []
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    def actor_pid(self, name: str) -> int | None:
        for a in self.status().get("actors", []):
            if a["name"] == name:
                return a["pid"]
        return None

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"unit exited ({self.proc.returncode}) while waiting for {what}:\n"
                                     + self.output()[-4000:])
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; state "
                             f"{self.status().get('state')}\n" + self.output()[-4000:])

    # -- stopping ------------------------------------------------------------

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if not self._out.closed:
                self._out.flush()

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """Stop the unit whatever state it is in: a graceful SIGTERM first, then
        SIGKILL for every process of this unit (Thespian's admin and the actors
        live in a session of their own, so a process group kill would miss them)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        marker = str(self.pandir)
        for pid in own_processes(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not self._out.closed:
            self._out.close()


def own_processes(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (actors are forks of
    run_unit.py and keep its command line)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids

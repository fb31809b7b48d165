"""Test helper: a private ``indiserver`` with simulator drivers.

    with IndiServer(["indi_simulator_telescope"], tmp_dir) as server:
        server.port, server.socket_path, server.driver_pids()

The server gets a free loopback port, its own Unix socket path and its own
HOME (drivers keep settings in $HOME/.indi), so parallel servers and the
user's own configuration never mix. It is started in a new session and the
whole process group (server and driver children) is killed on exit, whatever
happened inside the block.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SIMULATORS = {
    "mount": ("indi_simulator_telescope", "Telescope Simulator"),
    "camera": ("indi_simulator_ccd", "CCD Simulator"),
    "focuser": ("indi_simulator_focus", "Focuser Simulator"),
    "wheel": ("indi_simulator_wheel", "Filter Simulator"),
    "dome": ("indi_simulator_dome", "Dome Simulator"),
    "weather": ("indi_simulator_weather", "Weather Simulator"),
}


def indiserver_path() -> str | None:
    return shutil.which("indiserver")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class IndiServer:
    def __init__(self, drivers: list[str], workdir: str | os.PathLike | None = None,
                 start_timeout_s: float = 10.0, verbose: bool = False, port: int | None = None):
        self.drivers = list(drivers)
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="indi-test-"))
        self.start_timeout_s = start_timeout_s
        self.verbose = verbose
        self.fixed_port = port
        self.port: int | None = None
        self.socket_path: str | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "indiserver.log"

    def __enter__(self) -> "IndiServer":
        exe = indiserver_path()
        if exe is None:
            raise FileNotFoundError("indiserver not found (Debian package indi-bin)")
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to ~107 bytes: keep it short if needed.
        sock = self.workdir / "indi.sock"
        if len(str(sock)) > 100:
            sock = Path(tempfile.mkdtemp(prefix="indi-")) / "s"
        self.socket_path = str(sock)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)       # a stale socket from an earlier server
        env = dict(os.environ, HOME=str(home))
        last_error = None
        for _ in range(3):          # the free port can be taken between probe and bind
            self.port = self.fixed_port or free_port()
            args = [exe, "-p", str(self.port), "-u", self.socket_path]
            if self.verbose:
                args.append("-v")
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(args + self.drivers, env=env, cwd=str(self.workdir),
                                         stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            try:
                self._wait_listening()
                return self
            except RuntimeError as exc:
                last_error = exc
                self.stop()
        raise RuntimeError(f"indiserver did not start: {last_error}")

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"indiserver exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            # Listening; give the drivers a moment to have started.
            if len(self.driver_pids()) >= len(self.drivers):
                return
            time.sleep(0.05)
        raise RuntimeError(f"indiserver not ready on port {self.port} within {self.start_timeout_s} s: "
                           f"{self.log_tail()}")

    def log_tail(self, n: int = 20) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def driver_pids(self, name: str | None = None) -> list[int]:
        """PIDs of the server's driver children (optionally only ``name``)."""
        if self.proc is None:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] == "Z" or int(fields[1]) != self.proc.pid:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")[0].decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            if name is None or os.path.basename(cmd) == name:
                pids.append(int(entry))
        return pids

    def kill_driver(self, name: str, timeout_s: float = 5.0) -> int:
        """SIGKILL one driver; returns the pid of its replacement once
        indiserver has restarted it."""
        old = self.driver_pids(name)
        if not old:
            raise RuntimeError(f"driver {name} is not running")
        os.kill(old[0], signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            new = [p for p in self.driver_pids(name) if p not in old]
            if new:
                return new[0]
            time.sleep(0.02)
        raise RuntimeError(f"indiserver did not restart {name} within {timeout_s} s: {self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            # Drivers are in the same process group; wait until none is left.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _group_alive(proc.pid):
                time.sleep(0.02)
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()
            self._log = None

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
        except (OSError, IndexError, ValueError):
            continue
    return False

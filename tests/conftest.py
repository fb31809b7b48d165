import os
import signal
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class FakeWall:
    """Stands in for the ``time`` module inside observatory.clock only, so a
    test moves simulated time by hand (``wall.t += 60``)."""

    def __init__(self):
        self.t = 0.0

    def time(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def wall(monkeypatch):
    from observatory import clock as clock_module
    fake = FakeWall()
    monkeypatch.setattr(clock_module, "time", fake)
    return fake


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every live, non-zombie process."""
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            procs[int(entry)] = (int(fields[1]), cmd)
        except (OSError, IndexError, ValueError):
            continue
    return procs


def _leaked(before: set[int], marker: str | None) -> dict[int, str]:
    procs = _processes()
    me = os.getpid()

    def descends_from_me(pid):
        seen = set()
        while pid in procs and pid not in seen:
            seen.add(pid)
            pid = procs[pid][0]
            if pid == me:
                return True
        return False

    return {pid: cmd for pid, (ppid, cmd) in procs.items()
            if pid not in before and pid != me
            and (descends_from_me(pid) or (marker and marker in cmd))}


@pytest.fixture(autouse=True)
def no_leaked_processes(request):
    """Fails the test that leaves a process behind (and kills what it left)."""
    before = set(_processes())
    marker = str(request.getfixturevalue("tmp_path")) if "tmp_path" in request.fixturenames else None
    yield
    deadline = time.time() + 10
    leaked = _leaked(before, marker)
    while leaked and time.time() < deadline:
        time.sleep(0.2)
        leaked = _leaked(before, marker)
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if leaked:
        pytest.fail("test left processes behind: " + "; ".join(f"{p}: {c[:120]}" for p, c in leaked.items()))

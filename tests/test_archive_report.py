"""The archive actor's nightly report: made in a process of its own
(``python -m observatory.report``), inside a real multiprocTCPBase actor
system. The long-lived archive process never loads matplotlib; a report that
hangs or crashes is killed or reported as an event, and the archive goes on;
the report process ends with the archive."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from thespian.actors import ActorExitRequest

from actors.archive import ArchiveActor
from messages import GetStatus, NightSummaryWritten, RecordEvent, WriteNightSummary
from observatory.processes import pid_alive
from tests.test_actors import ask, asys, query, start_actor, warm_astropy  # noqa: F401 - fixtures
from tests.test_report import END, NIGHT, T0, realistic_night

STATS = {"dark_seconds": 21600.0, "safe_seconds": 19000.0, "restarts": {}, "unsafe_periods": 0}

# Stand-ins for the report process (``python -c CODE PARENT_PID ...``): they follow
# their parent as the real one does (observatory.report.follow_parent).
FOLLOW = ("import os, sys, time\n"
          "from observatory.report import follow_parent\n"
          "if not follow_parent(int(sys.argv[1])):\n"
          "    sys.exit(3)\n")
HANG = FOLLOW + ("out = sys.argv[2]\n"
                 "os.makedirs(out, exist_ok=True)\n"
                 "open(os.path.join(out, f'.report.html.{os.getpid()}.tmp'), 'w').write('half')\n"
                 "time.sleep(600)\n")
CRASH = FOLLOW + ("sys.stderr.write('Fatal Python error: Segmentation fault (simulated)\\n')\n"
                  "sys.stderr.flush()\n"
                  "os.abort()\n")


class _StandIn(ArchiveActor):
    code = HANG

    def report_command(self, night, start_unix, end_unix):
        out = str(Path(self.pandir) / "reports" / night)
        return [sys.executable, "-c", self.code, str(os.getpid()), out, "--pandir", str(self.pandir)]


class HangingReport(_StandIn):
    report_timeout_s = 1.5


class SlowReport(_StandIn):
    """Hangs longer than any test waits; a stop waits 1 s for it."""
    report_timeout_s = 600.0
    stop_wait_s = 1.0


class CrashingReport(_StandIn):
    code = CRASH


class BadSiteReport(ArchiveActor):
    """The real report process, given a site it refuses."""

    def report_command(self, night, start_unix, end_unix):
        self.site = dict(self.site, latitude=100.0)
        return super().report_command(night, start_unix, end_unix)


def children_of(pid: int) -> dict[int, str]:
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return out


def wait_for(predicate, timeout: float, step: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def report_events(db: Path) -> list[tuple]:
    return query(db, "SELECT kind, message, data FROM events WHERE source='archive' AND message LIKE "
                     "'nightly report%' ORDER BY id")


def write_summary(asys, addr):
    reply = ask(asys, addr, WriteNightSummary(night=NIGHT, start_unix=T0, end_unix=END, stats=STATS), timeout=10.0)
    assert isinstance(reply, NightSummaryWritten), reply
    return reply


def still_answers(asys, addr, db: Path) -> None:
    """The archive goes on: it answers and records."""
    reply = ask(asys, addr, GetStatus(request_id="after"), timeout=5.0)
    assert reply is not None and reply.request_id == "after"
    asys.tell(addr, RecordEvent(kind="note", source="test", message="still here", time_unix=T0, wall_unix=time.time()))
    assert wait_for(lambda: query(db, "SELECT COUNT(*) FROM events WHERE message='still here'") == [(1,)], 5.0)


def test_report_is_made_in_a_process_of_its_own(asys, tmp_path):
    realistic_night(tmp_path).archive.close()
    db = tmp_path / "db" / "unit.sqlite"
    addr, init = start_actor(asys, ArchiveActor, "archive", "archive", {}, tmp_path)
    reply = write_summary(asys, addr)
    assert reply.path == str(tmp_path / "reports" / NIGHT / "summary.json")
    # The report runs as a child of the archive, its command line naming the PANDIR.
    running = wait_for(lambda: children_of(init.pid), 5.0, 0.01)
    assert running, "no report process seen"
    (pid, cmd), = running.items()
    assert "-m observatory.report" in cmd and str(tmp_path) in cmd and f"--parent-pid {init.pid}" in cmd
    events = wait_for(lambda: report_events(db), 90.0)
    path = tmp_path / "reports" / NIGHT / "report.html"
    assert events == [("report", f"nightly report {NIGHT}: {path}", json.dumps({"night": NIGHT, "path": str(path)}))]
    assert sorted(p.name for p in path.parent.iterdir()) == ["altitude.png", "breakdown.png", "report.html",
                                                            "summary.json", "timeline.png"]
    text = path.read_text()
    assert "Night report: 2026-11-23" in text and 'src="timeline.png"' in text
    # The window and the site were the archive's: the one night's summary.
    assert "Mauna Loa Observatory" in text and "2026-11-24 06:00:00" in text
    # The long-lived archive process never loaded matplotlib (nor Pillow, which it brings).
    maps = Path(f"/proc/{init.pid}/maps").read_text()
    assert "matplotlib" not in maps and "PIL" not in maps
    assert wait_for(lambda: not pid_alive(pid), 5.0) and not children_of(init.pid)
    still_answers(asys, addr, db)


def test_a_report_that_fails_is_an_error_event(asys, tmp_path):
    realistic_night(tmp_path).archive.close()
    db = tmp_path / "db" / "unit.sqlite"
    addr, init = start_actor(asys, BadSiteReport, "archive", "archive", {}, tmp_path)
    write_summary(asys, addr)
    events = wait_for(lambda: report_events(db), 60.0)
    assert events == [("error", f"nightly report {NIGHT} failed: ReportError: site latitude 100.0 is not "
                                "within -90..90 degrees", json.dumps({"night": NIGHT}))]
    assert not (tmp_path / "reports" / NIGHT / "report.html").exists()
    still_answers(asys, addr, db)


def test_a_hung_report_is_killed_at_its_time_limit(asys, tmp_path):
    db = tmp_path / "db" / "unit.sqlite"
    addr, init = start_actor(asys, HangingReport, "archive", "archive", {}, tmp_path)
    started = time.time()
    write_summary(asys, addr)
    running = wait_for(lambda: children_of(init.pid), 5.0, 0.01)
    (pid, _), = running.items()
    out = tmp_path / "reports" / NIGHT
    assert wait_for(lambda: (out / f".report.html.{pid}.tmp").exists(), 10.0)
    events = wait_for(lambda: report_events(db), 10.0)
    took = time.time() - started
    assert events == [("error", f"nightly report {NIGHT} failed: TimeoutError: the report process (pid {pid}) "
                                "took longer than 1.5 s and was killed", json.dumps({"night": NIGHT}))]
    assert 1.5 <= took < 5.0
    assert not pid_alive(pid) and not children_of(init.pid)
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]       # its temporary file removed
    still_answers(asys, addr, db)


def test_a_crashed_report_is_an_error_event(asys, tmp_path):
    db = tmp_path / "db" / "unit.sqlite"
    addr, init = start_actor(asys, CrashingReport, "archive", "archive", {}, tmp_path)
    write_summary(asys, addr)
    events = wait_for(lambda: report_events(db), 15.0)
    assert len(events) == 1
    kind, message, _ = events[0]
    assert kind == "error"
    assert message.startswith(f"nightly report {NIGHT} failed: ReportProcessError: the report process (pid ")
    assert message.endswith("ended with signal SIGABRT: Fatal Python error: Segmentation fault (simulated)")
    assert wait_for(lambda: not children_of(init.pid), 5.0)
    still_answers(asys, addr, db)


def test_the_report_process_dies_with_the_archive(asys, tmp_path):
    addr, init = start_actor(asys, SlowReport, "archive", "archive", {}, tmp_path)
    write_summary(asys, addr)
    running = wait_for(lambda: children_of(init.pid), 5.0, 0.01)
    (pid, _), = running.items()
    assert wait_for(lambda: (tmp_path / "reports" / NIGHT / f".report.html.{pid}.tmp").exists(), 10.0)
    os.kill(init.pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(pid), 2.0), "the report process outlived the archive by 2 s"


def test_a_stop_waits_for_the_report_then_kills_it(asys, tmp_path):
    db = tmp_path / "db" / "unit.sqlite"
    addr, init = start_actor(asys, SlowReport, "archive", "archive", {}, tmp_path)
    write_summary(asys, addr)
    running = wait_for(lambda: children_of(init.pid), 5.0, 0.01)
    (pid, _), = running.items()
    asys.tell(addr, ActorExitRequest())
    assert wait_for(lambda: not pid_alive(init.pid), 10.0)
    assert not pid_alive(pid)
    (kind, message, _), = report_events(db)
    assert kind == "error" and message.startswith(
        f"nightly report {NIGHT} failed: InterruptedError: the unit stopped before the report process (pid {pid}) "
        "was done")

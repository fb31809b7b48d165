"""The archive actor: the single writer of $PANDIR/db/unit.sqlite, and the
writer of each night's reports/<night>/summary.json.

After the summary it has the nightly report made (observatory/report.py:
HTML and matplotlib plots) in a short-lived process of its own, so that this
long-lived process never loads matplotlib; then the retention policy runs in
a thread. The report process is started from the actor's own (main) thread:
PR_SET_PDEATHSIG fires when the *thread* that forked a child ends, so a
child forked from a helper thread would be killed when that thread ends.
"""
from __future__ import annotations

import gc
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from actors.base import UnitActor
from messages import (CloseObservation, NightSummaryWritten, RecordDecision, RecordEvent, RecordExposure,
                      RecordMetrics, RecordObservation, RecordSafetyAudit, Tick, WriteNightSummary)
from observatory.archive import Archive

ROOT = Path(__file__).resolve().parent.parent
#: Wall seconds a nightly report may take (a few on a small computer) before
#: its process is killed; ``report_timeout_s`` in the actor's settings
#: overrides it.
REPORT_TIMEOUT_S = 300.0
#: Wall seconds a stop waits for a report (and the retention) still running.
STOP_WAIT_S = 20.0
POLL_S = 0.5


@dataclass
class ReportJob:
    """A nightly report being made by ``python -m observatory.report``."""
    night: str
    proc: subprocess.Popen
    output: IO[bytes]               # its stdout: one JSON line, the result
    errors: IO[bytes]               # its stderr: warnings, a traceback
    started: float
    deadline: float
    out_dir: Path                   # where it writes: reports/<night>


class ArchiveActor(UnitActor):
    role = "archive"
    report_timeout_s = REPORT_TIMEOUT_S
    stop_wait_s = STOP_WAIT_S

    def setup(self, msg):
        # Free the reference cycles inherited from the supervisor at the fork
        # (astropy's first time conversions leave about 58 MB of them there):
        # left alone, they go at this process's first full collection, hours
        # later, and its memory drops by 25-30 MB at a random moment.
        gc.collect()
        self.archive = Archive(Path(self.pandir) / "db" / "unit.sqlite")
        self.report_jobs: list[ReportJob] = []              # report processes running
        self.retention_done: queue.Queue = queue.Queue()    # retention results, from its thread
        self.retention_threads: list[threading.Thread] = []
        return {"path": str(self.archive.path)}

    def device_status(self):
        return {"path": str(self.archive.path)}

    # Records are written in arrival order. A write the database refuses (a
    # full disk: "database or disk is full", an I/O error) is held with every
    # later one and retried every HELD_RETRY_S wall seconds, so nothing is lost
    # while the disk is full and the actor goes on answering.
    HELD_RETRY_S = 2.0

    def _write(self, what: str, write) -> None:
        held = getattr(self, "held", None)
        if held is None:
            held = self.held = []
        held.append((what, write))
        if len(held) == 1:
            self._flush_held()

    def _flush_held(self) -> None:
        import sqlite3
        while self.held:
            what, write = self.held[0]
            try:
                write()
            except (sqlite3.OperationalError, OSError) as e:
                if not getattr(self, "held_since", None):
                    self.held_since, self.held_error = time.time(), f"{type(e).__name__}: {e}"
                    self._log_quietly("archive_write_held", what=what, error=self.held_error)
                self.wake_in_wall(self.HELD_RETRY_S, "retry-held")
                return
            self.held.pop(0)
        since = getattr(self, "held_since", None)
        if since:
            self.held_since = None
            self.archive.record_event("error", "archive", f"the database refused writes for {time.time() - since:.0f} "
                                      f"wall s ({self.held_error}); the records held meanwhile are written",
                                      self.clock.now(), time.time(), {"error": self.held_error})

    def _log_quietly(self, event: str, **data) -> None:
        try:
            self.log.error(event, **data)
        except OSError:
            pass                        # the log is on the same full disk

    def receiveMsg_RecordEvent(self, m: RecordEvent, sender):
        self._write("event", lambda: self.archive.record_event(m.kind, m.source, m.message, m.time_unix,
                                                               m.wall_unix, m.data, uid=m.request_id))

    def receiveMsg_RecordObservation(self, m: RecordObservation, sender):
        self._write("observation", lambda: self.archive.record_observation(m))

    def receiveMsg_CloseObservation(self, m: CloseObservation, sender):
        self._write("observation", lambda: self.archive.close_observation(m.observation_id, m.end_unix, m.status,
                                                                         m.exposures))

    def receiveMsg_RecordExposure(self, m: RecordExposure, sender):
        self._write("exposure", lambda: self.archive.record_exposure(m))

    def receiveMsg_RecordMetrics(self, m: RecordMetrics, sender):
        self._write("metrics", lambda: self.archive.record_metrics(m.exposure_id, m.metrics, m.drift_px))

    def receiveMsg_RecordDecision(self, m: RecordDecision, sender):
        self._write("decision", lambda: self.archive.record_decision(m.decision_id, m.time_unix, m.winner, m.reason,
                                                                     m.decision))

    def receiveMsg_RecordSafetyAudit(self, m: RecordSafetyAudit, sender):
        self._write("safety audit", lambda: self.archive.record_safety_audit(m))

    def receiveMsg_WriteNightSummary(self, m: WriteNightSummary, sender):
        summary = self.archive.night_summary(m.night, m.start_unix, m.end_unix, m.stats)
        path = Path(self.pandir) / "reports" / m.night / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, path)
        self.send(sender, NightSummaryWritten(night=m.night, path=str(path), summary=summary,
                                              request_id=m.request_id))
        self._start_report(m.night, m.start_unix, m.end_unix)

    # -- the nightly report, in a process of its own ----------------------------

    def report_command(self, night: str, start_unix: float, end_unix: float) -> list[str]:
        """``python -m observatory.report`` for ``night``, exactly as the actor used to
        call make_report: the unit's site, the night's window, the default output
        directory. The PANDIR appears in the command line, as in every process of
        the unit (tests and benches find the unit's processes by it)."""
        return [sys.executable, "-m", "observatory.report", "--pandir", str(self.pandir), "--night", night,
                "--site-json", json.dumps(dict(self.site)), "--start-unix", repr(float(start_unix)),
                "--end-unix", repr(float(end_unix)), "--json", "--parent-pid", str(os.getpid())]

    def _start_report(self, night: str, start_unix: float, end_unix: float) -> None:
        """Start the report process (from the actor's thread: see the module
        docstring) and poll it with wakeups; the result is recorded from here."""
        timeout = float(self.settings.get("report_timeout_s") or self.report_timeout_s)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        output, errors = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        now = time.time()
        try:
            proc = subprocess.Popen(self.report_command(night, start_unix, end_unix), stdin=subprocess.DEVNULL,
                                    stdout=output, stderr=errors, env=env, close_fds=True)
        except OSError as e:
            output.close()
            errors.close()
            self._report_over(night, None, f"{type(e).__name__}: {e}")
            return
        self.report_jobs.append(ReportJob(night, proc, output, errors, now, now + timeout,
                                          Path(self.pandir) / "reports" / night))
        if self.log:
            self.log.info("report_started", night=night, report_pid=proc.pid, timeout_s=timeout)
        self.wake_in_wall(POLL_S, "report")

    def _check_report(self, job: ReportJob, *, force: bool = False) -> bool:
        """Collect ``job`` if its process has ended; kill it if it is past its
        deadline (or ``force``). True when the job is over."""
        rc = job.proc.poll()
        killed = None
        if rc is None:
            if not force and time.time() < job.deadline:
                return False
            killed = "stop" if force and time.time() < job.deadline else "timeout"
            try:
                job.proc.kill()
            except ProcessLookupError:
                pass
            try:
                rc = job.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:     # unkillable (D state): it still dies with this process
                rc = None
        seconds = time.time() - job.started
        job.output.seek(0)
        job.errors.seek(0)
        out = job.output.read().decode(errors="replace")
        err = job.errors.read().decode(errors="replace")
        job.output.close()
        job.errors.close()
        path, error = None, None
        if killed:
            removed = remove_report_temporaries(job.out_dir, job.proc.pid)
            error = (f"TimeoutError: the report process (pid {job.proc.pid}) took longer than "
                     f"{job.deadline - job.started:g} s and was killed" if killed == "timeout" else
                     f"InterruptedError: the unit stopped before the report process (pid {job.proc.pid}) "
                     f"was done ({seconds:.1f} s): killed")
            if removed and self.log:
                self.log.info("report_temporaries_removed", night=job.night, files=[str(p) for p in removed])
        else:
            result = _last_json(out)
            if result is not None and (result.get("path") or result.get("error")):
                path, error = result.get("path"), result.get("error")
            else:
                how = f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"status {rc}"
                tail = " | ".join(err.strip().splitlines()[-3:])[-500:]
                error = f"ReportProcessError: the report process (pid {job.proc.pid}) ended with {how}" \
                        + (f": {tail}" if tail else " and no result")
                remove_report_temporaries(job.out_dir, job.proc.pid)
        if self.log:
            self.log.info("report_process_done", night=job.night, report_pid=job.proc.pid, returncode=rc,
                          seconds=round(seconds, 2), ok=error is None,
                          stderr=err.strip()[-2000:] if error else None)
        self._report_over(job.night, path, error)
        return True

    def _report_over(self, night: str, path: str | None, error: str | None) -> None:
        """Record the report's outcome (as before: an 'error' event if it failed,
        else a 'report' event), then run the retention policy."""
        now = self.clock.now()
        if error:
            self.log.error("report_failed", night=night, error=error)
            self.archive.record_event("error", "archive", f"nightly report {night} failed: {error}", now,
                                      time.time(), {"night": night})
        else:
            self.archive.record_event("report", "archive", f"nightly report {night}: {path}", now,
                                      time.time(), {"night": night, "path": path})
        self._start_retention(night)

    def _start_retention(self, night: str) -> None:
        policy = self.settings.get("retention") or {}
        if not policy.get("archive_dir"):
            return
        thread = threading.Thread(target=self._retention, args=(night,), name=f"retention-{night}", daemon=True)
        thread.start()
        self.retention_threads = [t for t in self.retention_threads if t.is_alive()] + [thread]
        self.wake_in_wall(POLL_S, "report")

    def _retention(self, night: str) -> None:
        """The retention policy (observatory/retention.py), in a thread:
        copy frames to the archive location, then free space oldest first, only
        ever deleting a frame whose copy is verified. The records are moved to
        the copies by the actor's own thread (the single writer)."""
        policy = self.settings.get("retention") or {}
        from observatory import retention
        try:
            rp = retention.RetentionPolicy(**policy)
            copied = retention.copy_to_archive(self.pandir, rp)
            deletions = retention.plan(self.pandir, rp)
            freed = retention.apply(deletions)
            self.retention_done.put(("retention", {"copied": len(copied), "deleted": [(str(d.path), str(d.copy))
                                                                                     for d in deletions],
                                                 "freed": freed}, None))
        except Exception as e:  # noqa: BLE001 - reported, and nothing was deleted unsafely
            self.retention_done.put(("retention", None, f"{type(e).__name__}: {e}"))

    def on_tick(self, tick: Tick):
        if tick.kind == "retry-held":
            self._flush_held()
            return
        if tick.kind != "report":
            return
        self.report_jobs = [job for job in self.report_jobs if not self._check_report(job)]
        while True:
            try:
                _, result, error = self.retention_done.get_nowait()
            except queue.Empty:
                break
            now = self.clock.now()
            if error:
                self.archive.record_event("error", "archive", f"retention failed: {error}", now, time.time(), {})
                continue
            for old, new in result["deleted"]:
                self.archive.relocate_exposure(old, new)
            self.archive.record_event("retention", "archive", f"retention: {result['copied']} frame(s) copied, "
                                      f"{len(result['deleted'])} deleted after a verified copy, "
                                      f"{result['freed'] / 1e9:.2f} GB freed", now, time.time(),
                                      {"copied": result["copied"], "deleted": len(result["deleted"])})
        self.retention_threads = [t for t in self.retention_threads if t.is_alive()]
        if self.report_jobs or self.retention_threads or not self.retention_done.empty():
            self.wake_in_wall(POLL_S, "report")

    def teardown(self):
        # A stop right after the night: let its report (and retention) finish, within limits.
        deadline = time.time() + self.stop_wait_s
        while getattr(self, "report_jobs", None) and time.time() < deadline:
            self.report_jobs = [job for job in self.report_jobs if not self._check_report(job)]
            if self.report_jobs:
                time.sleep(0.1)
        for job in getattr(self, "report_jobs", []):
            self._check_report(job, force=True)
        self.report_jobs = []
        for thread in getattr(self, "retention_threads", []):
            thread.join(timeout=max(0.1, deadline - time.time()))
        if getattr(self, "retention_done", None) is not None:
            self.on_tick(Tick("report"))       # and record what they did
        if getattr(self, "archive", None):
            self.archive.close()


def _last_json(text: str) -> dict | None:
    """The last line of ``text`` that is a JSON object (the report's result)."""
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def remove_report_temporaries(out_dir: Path, pid: int) -> list[Path]:
    from observatory.report import remove_temporaries     # light: matplotlib is imported only to plot
    return remove_temporaries(out_dir, pid)

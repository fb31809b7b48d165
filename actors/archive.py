"""The archive actor: the single writer of $PANDIR/db/unit.sqlite, and the
writer of each night's reports/<night>/summary.json."""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path

from actors.base import UnitActor
from messages import (CloseObservation, NightSummaryWritten, RecordDecision, RecordEvent, RecordExposure,
                      RecordMetrics, RecordObservation, RecordSafetyAudit, Tick, WriteNightSummary)
from observatory.archive import Archive


class ArchiveActor(UnitActor):
    role = "archive"

    def setup(self, msg):
        self.archive = Archive(Path(self.pandir) / "db" / "unit.sqlite")
        self.reports_done: queue.Queue = queue.Queue()
        self.reports_running = 0
        return {"path": str(self.archive.path)}

    def device_status(self):
        return {"path": str(self.archive.path)}

    def receiveMsg_RecordEvent(self, m: RecordEvent, sender):
        self.archive.record_event(m.kind, m.source, m.message, m.time_unix, m.wall_unix, m.data, uid=m.request_id)

    def receiveMsg_RecordObservation(self, m: RecordObservation, sender):
        self.archive.record_observation(m)

    def receiveMsg_CloseObservation(self, m: CloseObservation, sender):
        self.archive.close_observation(m.observation_id, m.end_unix, m.status, m.exposures)

    def receiveMsg_RecordExposure(self, m: RecordExposure, sender):
        self.archive.record_exposure(m)

    def receiveMsg_RecordMetrics(self, m: RecordMetrics, sender):
        self.archive.record_metrics(m.exposure_id, m.metrics, m.drift_px)

    def receiveMsg_RecordDecision(self, m: RecordDecision, sender):
        self.archive.record_decision(m.decision_id, m.time_unix, m.winner, m.reason, m.decision)

    def receiveMsg_RecordSafetyAudit(self, m: RecordSafetyAudit, sender):
        self.archive.record_safety_audit(m)

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

    def _start_report(self, night: str, start_unix: float, end_unix: float) -> None:
        """The nightly report (HTML and plots) takes seconds of plotting: made in a
        thread that only reads the database; the result is recorded from here."""
        def make():
            from observatory.report import make_report
            try:
                path = make_report(self.pandir, night, site=dict(self.site), start_unix=start_unix,
                                   end_unix=end_unix)
                done = (night, str(path), None)
            except Exception as e:  # noqa: BLE001 - a report must never take the archive down
                done = (night, None, f"{type(e).__name__}: {e}")
            self._retention(night)
            self.reports_done.put(done)           # last: the actor stops looking once reports are in
        self.reports_running += 1
        thread = threading.Thread(target=make, name=f"report-{night}", daemon=True)
        thread.start()
        self.report_threads = [t for t in getattr(self, "report_threads", []) if t.is_alive()] + [thread]
        self.wake_in_wall(0.5, "report")

    def _retention(self, night: str) -> None:
        """The retention policy (observatory/retention.py), in the report's thread:
        copy frames to the archive location, then free space oldest first, only
        ever deleting a frame whose copy is verified. The records are moved to
        the copies by the actor's own thread (the single writer)."""
        policy = self.settings.get("retention") or {}
        if not policy.get("archive_dir"):
            return
        from observatory import retention
        try:
            rp = retention.RetentionPolicy(**policy)
            copied = retention.copy_to_archive(self.pandir, rp)
            deletions = retention.plan(self.pandir, rp)
            freed = retention.apply(deletions)
            self.reports_done.put(("retention", {"copied": len(copied), "deleted": [(str(d.path), str(d.copy))
                                                                                     for d in deletions],
                                                 "freed": freed}, None))
        except Exception as e:  # noqa: BLE001 - reported, and nothing was deleted unsafely
            self.reports_done.put(("retention", None, f"{type(e).__name__}: {e}"))

    def on_tick(self, tick: Tick):
        if tick.kind != "report":
            return
        while True:
            try:
                night, path, error = self.reports_done.get_nowait()
            except queue.Empty:
                break
            now = self.clock.now()
            if night == "retention":
                if error:
                    self.archive.record_event("error", "archive", f"retention failed: {error}", now, time.time(), {})
                    continue
                for old, new in path["deleted"]:
                    self.archive.relocate_exposure(old, new)
                self.archive.record_event("retention", "archive", f"retention: {path['copied']} frame(s) copied, "
                                          f"{len(path['deleted'])} deleted after a verified copy, "
                                          f"{path['freed'] / 1e9:.2f} GB freed", now, time.time(),
                                          {"copied": path["copied"], "deleted": len(path["deleted"])})
                continue
            self.reports_running -= 1
            if error:
                self.log.error("report_failed", night=night, error=error)
                self.archive.record_event("error", "archive", f"nightly report {night} failed: {error}", now,
                                          time.time(), {"night": night})
            else:
                self.archive.record_event("report", "archive", f"nightly report {night}: {path}", now,
                                          time.time(), {"night": night, "path": path})
        if self.reports_running:
            self.wake_in_wall(0.5, "report")

    def teardown(self):
        for thread in getattr(self, "report_threads", []):
            thread.join(timeout=20.0)          # a stop right after the night: let its report finish
        if getattr(self, "reports_done", None) is not None:
            self.on_tick(Tick("report"))       # and record what it did
        if getattr(self, "archive", None):
            self.archive.close()

"""The archive actor: the single writer of $PANDIR/db/unit.sqlite, and the
writer of each night's reports/<night>/summary.json."""
from __future__ import annotations

import json
import os
from pathlib import Path

from actors.base import UnitActor
from messages import (CloseObservation, NightSummaryWritten, RecordDecision, RecordEvent, RecordExposure,
                      RecordMetrics, RecordObservation, WriteNightSummary)
from observatory.archive import Archive


class ArchiveActor(UnitActor):
    role = "archive"

    def setup(self, msg):
        self.archive = Archive(Path(self.pandir) / "db" / "unit.sqlite")
        return {"path": str(self.archive.path)}

    def device_status(self):
        return {"path": str(self.archive.path)}

    def receiveMsg_RecordEvent(self, m: RecordEvent, sender):
        self.archive.record_event(m.kind, m.source, m.message, m.time_unix, m.wall_unix, m.data)

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

    def receiveMsg_WriteNightSummary(self, m: WriteNightSummary, sender):
        summary = self.archive.night_summary(m.night, m.start_unix, m.end_unix, m.stats)
        path = Path(self.pandir) / "reports" / m.night / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, path)
        self.send(sender, NightSummaryWritten(night=m.night, path=str(path), summary=summary,
                                              request_id=m.request_id))

    def teardown(self):
        if getattr(self, "archive", None):
            self.archive.close()

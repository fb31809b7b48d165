"""The unit's embedded store: $PANDIR/db/unit.sqlite.

Only the archive actor writes to it (one writer, no lock contention); anyone
may read it. Times are stored as ISO UTC strings of simulated time; events
also keep the wall-clock time at which they were recorded.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from observatory.clock import iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS observations (
    id            TEXT PRIMARY KEY,
    night         TEXT NOT NULL,
    field         TEXT NOT NULL,
    ra_deg        REAL NOT NULL,
    dec_deg       REAL NOT NULL,
    priority      REAL,
    exptime       REAL,
    min_nexp      INTEGER,
    exp_set_size  INTEGER,
    decision_id   TEXT,
    start_time    TEXT NOT NULL,
    end_time      TEXT,
    status        TEXT NOT NULL DEFAULT 'running',
    exposures     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS exposures (
    id             TEXT PRIMARY KEY,
    observation_id TEXT REFERENCES observations(id),
    camera         TEXT NOT NULL,
    image_type     TEXT NOT NULL,
    path           TEXT NOT NULL UNIQUE,
    start_time     TEXT NOT NULL,
    end_time       TEXT NOT NULL,
    start_unix     REAL NOT NULL,
    exptime        REAL NOT NULL,
    ra_deg         REAL,
    dec_deg        REAL,
    set_index      INTEGER,
    frame_index    INTEGER,
    background     REAL,
    background_rms REAL,
    n_stars        INTEGER,
    fwhm_px        REAL,
    ellipticity    REAL,
    drift_x_px     REAL,
    drift_y_px     REAL
);
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    time       TEXT NOT NULL,
    time_unix  REAL NOT NULL,
    wall_unix  REAL NOT NULL,
    kind       TEXT NOT NULL,
    source     TEXT NOT NULL,
    message    TEXT NOT NULL,
    data       TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS decisions (
    id         TEXT PRIMARY KEY,
    time       TEXT NOT NULL,
    winner     TEXT,
    reason     TEXT NOT NULL,
    data       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_metrics (
    exposure_id TEXT PRIMARY KEY,
    metrics     TEXT NOT NULL,
    drift       TEXT
);
-- The safety kernel's audit trail (docs/operate.md, "Safety"): one row per
-- change of verdict or of its set of conditions, and per park/close command
-- the kernel sent and per answer to it. JSON columns: reasons (list of
-- text), inputs (what the rules looked at), changed (condition keys added,
-- cleared, clearing, unsafe_again).
CREATE TABLE IF NOT EXISTS safety_audit (
    id         TEXT PRIMARY KEY,
    time       TEXT NOT NULL,
    time_unix  REAL NOT NULL,
    wall_unix  REAL NOT NULL,
    kind       TEXT NOT NULL,
    safe       INTEGER NOT NULL,
    reasons    TEXT NOT NULL DEFAULT '[]',
    inputs     TEXT NOT NULL DEFAULT '{}',
    changed    TEXT NOT NULL DEFAULT '{}',
    device     TEXT,
    action     TEXT,
    message    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_time ON events(time_unix);
CREATE INDEX IF NOT EXISTS safety_audit_time ON safety_audit(time_unix);
CREATE INDEX IF NOT EXISTS exposures_obs ON exposures(observation_id);
"""


class Archive:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        # Databases from before events had a uid get the column (NULL for old rows).
        if "uid" not in {row[1] for row in self.db.execute("PRAGMA table_info(events)")}:
            self.db.execute("ALTER TABLE events ADD COLUMN uid TEXT")
        have = {row[1] for row in self.db.execute("PRAGMA table_info(exposures)")}
        for column, kind in (("cloud_flag", "INTEGER"), ("metrics", "TEXT")):
            if column not in have:      # added after the first release: old databases get them too
                self.db.execute(f"ALTER TABLE exposures ADD COLUMN {column} {kind}")
        self.db.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_uid ON events(uid)")

    def close(self) -> None:
        self.db.close()

    def record_event(self, kind: str, source: str, message: str, time_unix: float,
                     wall_unix: float, data: dict | None = None, uid: str | None = None) -> None:
        """``uid`` (the record's request id) makes a re-sent event one row."""
        self.db.execute(
            "INSERT OR IGNORE INTO events(time, time_unix, wall_unix, kind, source, message, data, uid)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (iso(time_unix), time_unix, wall_unix, kind, source, message, json.dumps(data or {}, default=str), uid))

    def record_observation(self, m) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO observations(id, night, field, ra_deg, dec_deg, priority, exptime, min_nexp,"
            " exp_set_size, decision_id, start_time) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (m.observation_id, m.night, m.field_name, m.ra_deg, m.dec_deg, m.priority, m.exptime,
             m.min_nexp, m.exp_set_size, m.decision_id, iso(m.start_unix)))

    def close_observation(self, observation_id: str, end_unix: float, status: str, exposures: int) -> None:
        self.db.execute("UPDATE observations SET end_time=?, status=?, exposures=? WHERE id=?",
                        (iso(end_unix), status, exposures, observation_id))

    def record_exposure(self, m) -> None:
        # INSERT OR IGNORE: a re-sent record (after an archive restart) must not duplicate.
        self.db.execute(
            "INSERT OR IGNORE INTO exposures(id, observation_id, camera, image_type, path, start_time, end_time,"
            " start_unix, exptime, ra_deg, dec_deg, set_index, frame_index) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (m.exposure_id, m.observation_id, m.camera, m.image_type, m.path, iso(m.start_unix),
             iso(m.end_unix), m.start_unix, m.exptime, m.ra_deg, m.dec_deg, m.set_index, m.frame_index))
        waiting = self.db.execute("SELECT metrics, drift FROM pending_metrics WHERE exposure_id=?",
                                  (m.exposure_id,)).fetchone()
        if waiting:
            self.db.execute("DELETE FROM pending_metrics WHERE exposure_id=?", (m.exposure_id,))
            self.record_metrics(m.exposure_id, json.loads(waiting[0]), json.loads(waiting[1]) if waiting[1] else None)

    def relocate_exposure(self, old_path: str, new_path: str) -> None:
        """A frame deleted by the retention policy lives on as its verified copy."""
        self.db.execute("UPDATE exposures SET path=? WHERE path=?", (new_path, old_path))

    def record_metrics(self, exposure_id: str, metrics: dict, drift_px) -> None:
        """Thespian does not promise ordering: metrics may arrive before their
        exposure's row, so they wait in pending_metrics until it does."""
        if not self.db.execute("SELECT 1 FROM exposures WHERE id=?", (exposure_id,)).fetchone():
            self.db.execute("INSERT OR REPLACE INTO pending_metrics(exposure_id, metrics, drift) VALUES (?,?,?)",
                            (exposure_id, json.dumps(metrics, default=str),
                             json.dumps(list(drift_px)) if drift_px else None))
            return
        dx, dy = (drift_px[0], drift_px[1]) if drift_px else (None, None)
        self.db.execute(
            "UPDATE exposures SET background=?, background_rms=?, n_stars=?, fwhm_px=?, ellipticity=?,"
            " drift_x_px=?, drift_y_px=?, cloud_flag=?, metrics=? WHERE id=?",
            (metrics.get("background"), metrics.get("background_rms"), metrics.get("n_stars"),
             _finite(metrics.get("fwhm_px")), _finite(metrics.get("ellipticity")), dx, dy,
             int(bool(metrics.get("cloud_flag"))) if "cloud_flag" in metrics else None,
             json.dumps(metrics, default=str), exposure_id))
        if metrics.get("compressed_path") and metrics.get("compressed_from"):
            self.record_compressed(exposure_id, metrics["compressed_from"], metrics["compressed_path"])

    def record_compressed(self, exposure_id: str, old_path: str, new_path: str) -> bool:
        """The analysis actor rewrote a frame as a verified ``.fits.fz`` (images.compress):
        the record moves to it, as a frame deleted by retention moves to its copy.
        Only from the plain frame it was made from (a record sent again later must
        not undo a later move) and only to a file that exists. The plain frame is
        removed by the analysis actor once it sees this row name the new file."""
        row = self.db.execute("SELECT path FROM exposures WHERE id=?", (exposure_id,)).fetchone()
        if row is None or row[0] != old_path or not os.path.isfile(new_path):
            return False
        try:
            self.relocate_exposure(old_path, new_path)
        except sqlite3.IntegrityError:
            return False           # another row already names that file: leave both as they are
        return True

    def record_decision(self, decision_id: str, time_unix: float, winner, reason: str, decision: dict) -> None:
        self.db.execute("INSERT OR IGNORE INTO decisions(id, time, winner, reason, data) VALUES (?,?,?,?,?)",
                        (decision_id, iso(time_unix), winner, reason, json.dumps(decision, default=str)))

    def record_safety_audit(self, m) -> None:
        # INSERT OR IGNORE: the kernel re-sends its latest records to a restarted archive.
        self.db.execute(
            "INSERT OR IGNORE INTO safety_audit(id, time, time_unix, wall_unix, kind, safe, reasons, inputs, changed,"
            " device, action, message) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (m.audit_id, iso(m.time_unix), m.time_unix, m.wall_unix, m.kind, int(bool(m.safe)),
             json.dumps(list(m.reasons), default=str), json.dumps(m.inputs, default=str),
             json.dumps(m.changed, default=str), m.device or None, m.action or None, m.message))

    def night_summary(self, night: str, start_unix: float, end_unix: float, stats: dict) -> dict:
        """What the night produced, from the store, plus the supervisor's own figures."""
        q = self.db.execute
        targets = [dict(field=r[0], exposures=r[1], status=r[2]) for r in q(
            "SELECT field, SUM(exposures), GROUP_CONCAT(DISTINCT status) FROM observations"
            " WHERE night=? GROUP BY field ORDER BY MIN(start_time)", (night,))]
        per_camera = {}
        for cam, kind, n, secs in q(
                "SELECT camera, image_type, COUNT(*), SUM(exptime) FROM exposures"
                " WHERE start_unix >= ? AND start_unix < ? GROUP BY camera, image_type", (start_unix, end_unix)):
            c = per_camera.setdefault(cam, {"science": 0, "pointing": 0, "open_shutter_s": 0.0})
            c[kind] = n
            c["open_shutter_s"] += secs or 0.0
        science_open = {cam: r[0] or 0.0 for cam, *r in q(
            "SELECT camera, SUM(exptime) FROM exposures WHERE image_type='science'"
            " AND start_unix >= ? AND start_unix < ? GROUP BY camera", (start_unix, end_unix))}
        events = dict(q("SELECT kind, COUNT(*) FROM events WHERE time_unix >= ? AND time_unix < ?"
                        " GROUP BY kind", (start_unix, end_unix)).fetchall())
        dark_safe = stats.get("safe_seconds", 0.0)
        best_open = max(science_open.values(), default=0.0)
        return {
            "night": night,
            "start": iso(start_unix),
            "end": iso(end_unix),
            "targets": targets,
            "exposures_per_camera": per_camera,
            "open_shutter_seconds": round(best_open, 1),
            "open_shutter_seconds_per_camera": {k: round(v, 1) for k, v in science_open.items()},
            "dark_seconds": round(stats.get("dark_seconds", 0.0), 1),
            "safe_seconds": round(dark_safe, 1),
            "open_shutter_fraction": round(best_open / dark_safe, 4) if dark_safe > 0 else 0.0,
            "restarts": stats.get("restarts", {}),
            "unsafe_periods": stats.get("unsafe_periods", 0),
            "events": events,
        }


def _finite(x):
    try:
        return x if x is not None and x == x and abs(x) != float("inf") else None
    except TypeError:
        return None

"""The nightly report, made from the unit's store ($PANDIR/db/unit.sqlite) alone.

    python -m observatory.report --night 2026-11-23 [--pandir P] [--config conf/unit.yaml]
                                 [--site-lat D --site-lon D --site-elev M --horizon D]
                                 [--site-json JSON] [--start ISO --end ISO]
                                 [--start-unix S --end-unix S] [--out-dir DIR] [--json]

writes ``$PANDIR/reports/<night>/report.html`` with three PNG plots beside it
(``timeline.png``, ``altitude.png``, ``breakdown.png``) and prints the path of
the HTML (with ``--json``: one JSON object, ``{"path": ..., "error": null}``
or ``{"path": null, "error": "Type: message"}``). The page is self-contained:
no script, no web font, no address outside the directory. ``report_data``
returns the numbers behind it. Every file is written under a temporary name
and renamed into place.

Pure: reads the database (read-only) and writes files; no actor, no clock.
matplotlib (Agg, without pyplot) and astropy are imported only when needed.
The archive actor makes each night's report in a process of its own (this
command, with ``--json`` and ``--parent-pid``), so that the long-lived actor
never loads matplotlib (about 15 MB of libraries and 2.5 MB of heap that
would stay for the life of the process).

The night and its window
------------------------
``night`` is the local date of the evening (``YYYY-MM-DD``), as in the
``night`` column of ``observations`` and in ``reports/<night>/``. Events and
exposures carry only times, so the report looks at a time window:

1. ``start_unix`` and ``end_unix`` when the caller gives them;
2. else ``start`` and ``end`` of ``reports/<night>/summary.json`` (written by
   the archive actor at housekeeping: from the end of the previous night's
   housekeeping to this one's);
3. else local mean noon of that date to local mean noon of the next day (the
   convention of ``observatory.astro.night_date``).

In cases 2 and 3 the window is widened, if needed, to hold every observation
of the night.

Where the time went (the breakdown)
-----------------------------------
The window is cut where anything changes (a state event, a safety event, the
start or end of a frame, dusk or dawn) and each piece gets exactly one
category, so the categories add up to the window's length. The first rule
that applies wins:

1. ``science``: the shutter of the busiest camera (the one with the most
   science exposure time in the window) is open for a science frame:
   ``[start_unix, start_unix + exptime]`` of its exposures with
   ``image_type = 'science'``. This equals summary.json's
   ``open_shutter_seconds`` over the same window; cameras that start a few
   seconds apart do not add their offsets to it (that time is ``readout``).
   Every camera's own figure is in ``exposures.by_camera``.
2. ``calibration``: a flat, dark or bias frame is being taken,
   ``[start_unix, end_time]`` (exposure and readout).
3. ``focus``: a focus frame is being taken, ``[start_unix, end_time]``; also
   any time in a ``focusing`` state.
4. ``down``: no unit process was recording. From the last event of any kind
   recorded before a unit start (the ``unit`` event "unit starting ...") to
   that start; and, when no state is known before the window, from the start
   of the window to the first state event or unit start. (A unit that was
   running but quiet before it died makes this an upper bound.)
5. By the state the unit was in (the ``state`` events: each state lasts until
   the next state event or unit start):

   - ``scheduling``, ``slewing``: ``slewing`` (acquiring the next target);
   - ``pointing``: ``pointing`` (pointing frames, solving, corrections);
   - ``tracking``, ``observing``, ``analyzing`` outside the open shutter:
     ``readout`` (readout, download, tracking checks and corrections,
     meridian-flip waits; an exposure aborted before it completed leaves no
     frame behind, so its time lands here too);
   - ``calibrating``, if such a state exists: ``calibration``.

6. Any other state (``sleeping``, ``ready``, ``parking``, ``parked``,
   ``housekeeping``, the unit's start-up) is time not spent observing, and
   the reason is, in this order:

   - ``daytime``: the sun is above the observing horizon (the site's
     ``observe_horizon``, default -18 degrees: twilight counts as daytime);
   - ``weather``: the last safety verdict (``safety`` events) was unsafe;
   - ``faults``: the unit is in ``parking`` or ``parked`` and the transition
     into ``parking`` that started it gave a reason other than ``unsafe``,
     ``night over``, ``no target`` or ``stopping`` (for example "mount
     failed", "timeout: ...", "slew interrupted ...");
   - ``idle``: anything else (waiting for dark, the hold after the weather
     clears, no observable target, parked after a stop).

So weather beats a fault: a night lost to clouds is ``weather`` even when the
unit was already parked after a failure. Unsafe time while the unit is still
exposing (between the verdict and the parking order) counts by its state.

Other figures: ``dark_s`` is the time in the window with the sun below the
observing horizon; ``open_shutter_fraction`` is ``science / dark_s``.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sqlite3
import sys
import time
from bisect import bisect_right
from datetime import datetime, timezone
from pathlib import Path

from observatory.clock import iso, parse_iso

#: Every category of the breakdown, in display order.
CATEGORIES = ("science", "slewing", "pointing", "readout", "focus", "calibration",
              "faults", "weather", "idle", "daytime", "down")

#: States whose time is attributed by the state itself (rule 5).
STATE_CATEGORY = {
    "scheduling": "slewing", "slewing": "slewing",
    "pointing": "pointing",
    "tracking": "readout", "observing": "readout", "analyzing": "readout",
    "focusing": "focus", "calibrating": "calibration",
}
CALIBRATION_TYPES = frozenset({"flat", "dark", "bias"})
FOCUS_TYPES = frozenset({"focus"})
#: Reasons for parking that are not faults (prefixes of the transition's note).
NOT_FAULTS = ("unsafe", "night over", "no target", "stopping")

FIGURES = ("timeline.png", "altitude.png", "breakdown.png")

CATEGORY_COLOURS = {
    "science": "#2ca02c", "slewing": "#1f77b4", "pointing": "#17becf", "readout": "#9edae5",
    "focus": "#bcbd22", "calibration": "#8c564b", "faults": "#d62728", "weather": "#7f7f7f",
    "idle": "#dbdb8d", "daytime": "#ffbb78", "down": "#000000",
}
STATE_COLOURS = {
    "sleeping": "#ffbb78", "ready": "#dbdb8d", "scheduling": "#aec7e8", "slewing": "#1f77b4",
    "pointing": "#17becf", "tracking": "#98df8a", "observing": "#2ca02c", "analyzing": "#9edae5",
    "parking": "#ff9896", "parked": "#c49c94", "housekeeping": "#c5b0d5", "starting": "#f7b6d2",
    "down": "#000000",
}


class ReportError(ValueError):
    """Bad input: a malformed night, an inverted window, an unusable site."""


# --------------------------------------------------------------------------
# Site and window
# --------------------------------------------------------------------------

def default_site() -> dict:
    """The configuration's default location (observatory.config.LocationConfig)."""
    from observatory.config import LocationConfig
    return LocationConfig().model_dump()


def _site(site: dict | None, summary: dict | None) -> dict:
    out = default_site()
    given = site if site is not None else (summary or {}).get("site") or {}
    aliases = {"latitude_deg": "latitude", "longitude_deg": "longitude", "elevation_m": "elevation"}
    for key, value in given.items():
        if value is not None:
            out[aliases.get(key, key)] = value
    try:
        for key in ("latitude", "longitude", "elevation", "observe_horizon", "min_altitude"):
            out[key] = float(out[key])
    except (TypeError, ValueError) as e:
        raise ReportError(f"site: {e}") from None
    if not -90.0 <= out["latitude"] <= 90.0:
        raise ReportError(f"site latitude {out['latitude']} is not within -90..90 degrees")
    return out


def _check_night(night: str) -> None:
    try:
        datetime.strptime(night, "%Y-%m-%d")
    except (TypeError, ValueError):
        raise ReportError(f"night {night!r} is not a date YYYY-MM-DD") from None


def noon_window(night: str, longitude_deg: float) -> tuple[float, float]:
    """Local mean noon of ``night`` to local mean noon of the next day (Unix s)."""
    _check_night(night)
    start = parse_iso(f"{night}T12:00:00") - longitude_deg * 240.0
    return start, start + 86400.0


def _read_summary(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------

def _union(intervals) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


class _Union:
    """Disjoint sorted intervals with a membership test."""

    def __init__(self, intervals):
        self.parts = _union(intervals)
        self.starts = [a for a, _ in self.parts]

    def __contains__(self, t: float) -> bool:
        i = bisect_right(self.starts, t) - 1
        return i >= 0 and t < self.parts[i][1]

    def clipped(self, start: float, end: float) -> list[tuple[float, float]]:
        return [(max(a, start), min(b, end)) for a, b in self.parts if b > start and a < end]

    def total(self, start: float, end: float) -> float:
        return sum(b - a for a, b in self.clipped(start, end))


class _Steps:
    """A step function of time: value of the last step at or before t."""

    def __init__(self, steps: list[tuple[float, object]], before=None):
        self.times = [t for t, _ in steps]
        self.values = [v for _, v in steps]
        self.before = before

    def __call__(self, t: float):
        i = bisect_right(self.times, t) - 1
        return self.values[i] if i >= 0 else self.before


def _dark_intervals(site: dict, start: float, end: float) -> list[tuple[float, float]]:
    """Intervals within [start, end] with the sun below the observing horizon."""
    from observatory.astro import Ephemeris, Site
    eph = Ephemeris(Site(str(site.get("name", "site")), site["latitude"], site["longitude"], site["elevation"]))
    out, t = [], start
    while t < end:
        try:
            a, b = eph.dark_interval(t, site["observe_horizon"])
        except ValueError:          # the sun does not set (polar summer)
            break
        if a >= end:
            break
        out.append((max(a, start), min(b, end)))
        if b <= t:
            break
        t = b + 1.0
    return _union(out)


# --------------------------------------------------------------------------
# Reading the store
# --------------------------------------------------------------------------

def _connect(db_path: Path) -> sqlite3.Connection | None:
    if not db_path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        conn.execute("SELECT 1 FROM sqlite_master").fetchall()
    except sqlite3.OperationalError:
        # A WAL database whose -shm file is missing cannot be opened read-only.
        conn = sqlite3.connect(db_path, timeout=10)
    return conn


def _has_table(conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _note(message: str, previous, state) -> str:
    """The reason given for a transition: 'previous -> state (note)' -> 'note'."""
    head = f"{previous} -> {state}"
    rest = message[len(head):].strip() if message.startswith(head) else ""
    if rest.startswith("(") and rest.endswith(")"):
        rest = rest[1:-1]
    return rest


def _is_fault(cause: str | None) -> bool:
    return bool(cause) and not cause.startswith(NOT_FAULTS)


def _state_event(row) -> dict:
    t, message, data = row[0], row[1], row[2]
    try:
        d = json.loads(data or "{}")
    except ValueError:
        d = {}
    state = d.get("state")
    if state is None and " -> " in message:        # older rows: parse the line itself
        state = message.split(" -> ", 1)[1].split(" ", 1)[0]
    previous = d.get("previous")
    return {"time_unix": float(t), "state": str(state), "previous": previous,
            "note": _note(message, previous, state), "message": message, "target": d.get("target")}


def _is_unit_start(kind: str, message: str) -> bool:
    return kind == "unit" and message.startswith("unit starting")


def _initial_state(conn, start: float) -> tuple[str, str | None]:
    """The unit's state (and parking cause) at ``start``, from earlier events."""
    rows = conn.execute("SELECT time_unix, message, data FROM events WHERE kind='state' AND time_unix < ?"
                        " ORDER BY time_unix DESC, id DESC LIMIT 500", (start,)).fetchall()
    if not rows:
        return "down", None
    last = _state_event(rows[0])
    restart = conn.execute("SELECT MAX(time_unix) FROM events WHERE kind='unit' AND message LIKE 'unit starting%'"
                           " AND time_unix < ?", (start,)).fetchone()[0]
    if restart is not None and restart >= last["time_unix"]:
        return "starting", None
    cause = None
    if last["state"] in ("parking", "parked"):
        for row in rows:
            ev = _state_event(row)
            if ev["state"] == "parking":
                cause = ev["note"]
                break
            if ev["state"] != "parked":
                break
    return last["state"], cause


def _state_segments(conn, start: float, end: float) -> list[dict]:
    """Contiguous segments covering [start, end]: state, parking cause."""
    state, cause = _initial_state(conn, start)
    rows = conn.execute("SELECT id, time_unix, kind, message, data FROM events"
                        " WHERE (kind='state' OR kind='unit') AND time_unix >= ? AND time_unix < ?"
                        " ORDER BY time_unix, id", (start, end)).fetchall()
    segments: list[dict] = []
    t0 = start

    def close(t, st, ca):
        if t > t0:
            if segments and segments[-1]["state"] == st and segments[-1]["cause"] == ca \
                    and segments[-1]["end_unix"] == t0:
                segments[-1]["end_unix"] = t
            else:
                segments.append({"start_unix": t0, "end_unix": t, "state": st, "cause": ca})

    for _id, t, kind, message, data in rows:
        if kind == "unit":
            if not _is_unit_start(kind, message):
                continue
            last = conn.execute("SELECT MAX(time_unix) FROM events WHERE time_unix < ?", (t,)).fetchone()[0]
            gap = t0 if last is None else min(max(last, t0), t)
            close(gap, state, cause)
            t0 = gap
            close(t, "down", None)
            t0, state, cause = t, "starting", None
            continue
        ev = _state_event((t, message, data))
        close(t, state, cause)
        t0 = t
        if ev["state"] == "parking":
            cause = ev["note"]
        elif not (ev["state"] == "parked" and state in ("parking", "parked")):
            cause = None
        state = ev["state"]
    close(end, state, cause)
    return segments


# --------------------------------------------------------------------------
# The numbers
# --------------------------------------------------------------------------

def _empty_breakdown() -> dict:
    return {c: 0.0 for c in CATEGORIES}


def report_data(db_path: str | os.PathLike, night: str, *, site: dict | None = None,
                start_unix: float | None = None, end_unix: float | None = None,
                summary_path: str | os.PathLike | None = None) -> dict:
    """The numbers behind the report of ``night``, from the store at ``db_path``.

    ``site``: a dict with ``latitude``, ``longitude`` (east positive),
    ``elevation`` and optionally ``observe_horizon``, ``min_altitude``,
    ``name`` (the configuration's ``location`` section); default: summary.json's
    ``site`` if it has one, else the configuration defaults. ``summary_path``
    defaults to ``<db_path>/../../reports/<night>/summary.json``. The window
    rules and the breakdown rules are in the module docstring. All times are
    Unix seconds (``*_unix``) or ISO UTC strings; durations are seconds.
    """
    _check_night(night)
    db_path = Path(db_path)
    if summary_path is None:
        summary_path = db_path.parent.parent / "reports" / night / "summary.json"
    summary = _read_summary(Path(summary_path))
    site = _site(site, summary)

    if (start_unix is None) != (end_unix is None):
        raise ReportError("give both start_unix and end_unix, or neither")
    if start_unix is not None:
        start, end, source = float(start_unix), float(end_unix), "arguments"
    elif summary and summary.get("start") and summary.get("end"):
        start, end, source = parse_iso(summary["start"]), parse_iso(summary["end"]), "summary.json"
    else:
        (start, end), source = noon_window(night, site["longitude"]), "local noon to noon"
    if end <= start:
        raise ReportError(f"empty window: end {iso(end)} is not after start {iso(start)}")

    conn = _connect(db_path)
    try:
        observations, exposures, state_events, safety_events, other_events = [], [], [], [], []
        segments = [{"start_unix": start, "end_unix": end, "state": "down", "cause": None}]
        prior_safe = None
        if conn is not None and _has_table(conn, "observations"):
            rows = conn.execute(
                "SELECT o.id, o.field, o.ra_deg, o.dec_deg, o.start_time, o.end_time, o.status, o.exposures,"
                " (SELECT COUNT(*) FROM exposures e WHERE e.observation_id=o.id AND e.image_type='science'),"
                " (SELECT MAX(e.start_unix + e.exptime) FROM exposures e WHERE e.observation_id=o.id)"
                " FROM observations o WHERE o.night=? ORDER BY o.start_time, o.id", (night,)).fetchall()
            for oid, field, ra, dec, st, et, status, n_exp, n_frames, last_frame in rows:
                s_unix = parse_iso(st)
                e_unix = parse_iso(et) if et else (last_frame if last_frame else None)
                observations.append({
                    "id": oid, "field": field, "ra_deg": ra, "dec_deg": dec,
                    "start": st, "end": et, "start_unix": s_unix, "end_unix": e_unix,
                    "status": status, "exposures": n_exp, "frames": n_frames})
            if source != "arguments" and observations:
                start = min([start] + [o["start_unix"] for o in observations])
                end = max([end] + [o["end_unix"] for o in observations if o["end_unix"]])
            exposures = [dict(zip(("id", "observation_id", "camera", "image_type", "start_unix", "end_unix",
                                   "exptime"), r)) for r in conn.execute(
                "SELECT id, observation_id, camera, image_type, start_unix, end_time, exptime FROM exposures"
                " WHERE start_unix >= ? AND start_unix < ? ORDER BY start_unix, id", (start, end))]
            for e in exposures:
                e["end_unix"] = parse_iso(e["end_unix"])
            for t, kind, source_, message, data in conn.execute(
                    "SELECT time_unix, kind, source, message, data FROM events WHERE time_unix >= ?"
                    " AND time_unix < ? ORDER BY time_unix, id", (start, end)):
                try:
                    d = json.loads(data or "{}")
                except ValueError:
                    d = {}
                ev = {"time_unix": t, "time": iso(t), "kind": kind, "source": source_, "message": message,
                      "data": d}
                if kind == "state":
                    state_events.append(ev)
                elif kind == "safety":
                    safety_events.append(ev)
                else:
                    other_events.append(ev)
            segments = _state_segments(conn, start, end)
            row = conn.execute("SELECT data FROM events WHERE kind='safety' AND time_unix < ?"
                               " ORDER BY time_unix DESC, id DESC LIMIT 1", (start,)).fetchone()
            if row:
                try:
                    prior_safe = bool(json.loads(row[0]).get("safe"))
                except (ValueError, AttributeError):
                    prior_safe = None
    finally:
        if conn is not None:
            conn.close()

    has_data = bool(observations or exposures or state_events or safety_events or other_events)
    science_time: dict[str, float] = {}
    for e in exposures:
        if e["image_type"] == "science":
            science_time[e["camera"]] = science_time.get(e["camera"], 0.0) + e["exptime"]
    busiest = min(science_time, key=lambda cam: (-science_time[cam], cam)) if science_time else None
    science = _Union((e["start_unix"], e["start_unix"] + e["exptime"]) for e in exposures
                     if e["image_type"] == "science" and e["camera"] == busiest)
    calibration = _Union((e["start_unix"], max(e["end_unix"], e["start_unix"] + e["exptime"]))
                         for e in exposures if e["image_type"] in CALIBRATION_TYPES)
    focus = _Union((e["start_unix"], max(e["end_unix"], e["start_unix"] + e["exptime"]))
                   for e in exposures if e["image_type"] in FOCUS_TYPES)
    safety = _Steps([(e["time_unix"], bool(e["data"].get("safe"))) for e in safety_events], before=prior_safe)
    dark = _Union(_dark_intervals(site, start, end))
    seg_starts = [s["start_unix"] for s in segments]

    def segment_at(t):
        return segments[max(0, bisect_right(seg_starts, t) - 1)]

    def classify(t: float) -> str:
        if t in science:
            return "science"
        if t in calibration:
            return "calibration"
        if t in focus:
            return "focus"
        seg = segment_at(t)
        if seg["state"] == "down":
            return "down"
        by_state = STATE_CATEGORY.get(seg["state"])
        if by_state:
            return by_state
        if t not in dark:
            return "daytime"
        if safety(t) is False:
            return "weather"
        if seg["state"] in ("parking", "parked") and _is_fault(seg["cause"]):
            return "faults"
        return "idle"

    cuts = {start, end}
    cuts.update(s["start_unix"] for s in segments)
    cuts.update(e["time_unix"] for e in safety_events)
    for u in (science, calibration, focus, dark):
        for a, b in u.parts:
            cuts.update((a, b))
    cuts = sorted(t for t in cuts if start <= t <= end)
    breakdown, in_dark = _empty_breakdown(), _empty_breakdown()
    uses: list[list] = []          # [start, end, category], merged
    for a, b in zip(cuts, cuts[1:]):
        if b <= a:
            continue
        mid = (a + b) / 2.0
        cat = classify(mid)
        breakdown[cat] += b - a
        if mid in dark:
            in_dark[cat] += b - a
        if uses and uses[-1][2] == cat and uses[-1][1] == a:
            uses[-1][1] = b
        else:
            uses.append([a, b, cat])
    if not has_data:
        breakdown, in_dark = _empty_breakdown(), _empty_breakdown()
        uses = []

    # The safety timeline, as intervals.
    safety_steps = [(start, prior_safe)] + [(e["time_unix"], bool(e["data"].get("safe"))) for e in safety_events]
    safety_intervals = []
    for (t, s), nxt in zip(safety_steps, safety_steps[1:] + [(end, None)]):
        if nxt[0] > t:
            safety_intervals.append({"start_unix": t, "end_unix": nxt[0], "safe": s})

    per_camera: dict[str, dict] = {}
    by_type: dict[str, dict] = {}
    for e in exposures:
        c = per_camera.setdefault(e["camera"], {"frames": 0, "science_exptime_s": 0.0})
        c["frames"] += 1
        if e["image_type"] == "science":
            c["science_exptime_s"] += e["exptime"]
        t = by_type.setdefault(e["image_type"], {"count": 0, "exptime_s": 0.0})
        t["count"] += 1
        t["exptime_s"] += e["exptime"]

    dark_s = dark.total(start, end)
    parkings = []
    for ev in state_events:
        if ev["data"].get("state") == "parking":
            note = _note(ev["message"], ev["data"].get("previous"), "parking")
            parkings.append({"time_unix": ev["time_unix"], "time": ev["time"], "note": note,
                             "fault": _is_fault(note)})
    unit_starts = [e for e in other_events if _is_unit_start(e["kind"], e["message"])]
    restarts = [e for e in other_events if e["kind"] == "restart" or _is_unit_start(e["kind"], e["message"])]
    errors = [e for e in other_events if e["kind"] == "error"]
    event_counts: dict[str, int] = {}
    for e in state_events + safety_events + other_events:
        event_counts[e["kind"]] = event_counts.get(e["kind"], 0) + 1

    # The span worth plotting: the dark part, plus whatever the unit did outside it.
    active = [(a, b) for a, b in dark.clipped(start, end)]
    active += [(s["start_unix"], s["end_unix"]) for s in segments if s["state"] in STATE_CATEGORY]
    active += [(o["start_unix"], o["end_unix"] or o["start_unix"]) for o in observations]
    if active and has_data:
        plot_start = max(start, min(a for a, _ in active) - 1800.0)
        plot_end = min(end, max(b for _, b in active) + 1800.0)
    else:
        plot_start, plot_end = start, end

    return {
        "night": night,
        "generated": iso(time.time()),
        "has_data": has_data,
        "site": site,
        "window": {"start_unix": start, "end_unix": end, "start": iso(start), "end": iso(end),
                   "source": source, "seconds": end - start},
        "plot_span": {"start_unix": plot_start, "end_unix": plot_end},
        "dark_s": round(dark_s, 3),
        "dark_intervals": [{"start_unix": a, "end_unix": b} for a, b in dark.clipped(start, end)],
        "observations": observations,
        "fields": sorted({o["field"] for o in observations}),
        "exposures": {"total": len(exposures), "by_type": by_type, "by_camera": per_camera},
        "open_shutter_s": round(breakdown["science"], 3),
        "open_shutter_camera": busiest,
        "open_shutter_fraction": round(breakdown["science"] / dark_s, 4) if dark_s > 0 else 0.0,
        "breakdown_s": {k: round(v, 3) for k, v in breakdown.items()},
        "breakdown_dark_s": {k: round(v, 3) for k, v in in_dark.items()},
        "time_use": [{"start_unix": a, "end_unix": b, "category": c} for a, b, c in uses],
        "states": [dict(s) for s in segments] if has_data else [],
        "safety": safety_intervals if has_data else [],
        "safety_events": safety_events,
        "parkings": parkings,
        "restarts": restarts,
        "unit_starts": len(unit_starts),
        "actor_restarts": len(restarts) - len(unit_starts),
        "errors": errors,
        "event_counts": event_counts,
        "summary": summary,
    }


# --------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------

def _dt(unix):
    return datetime.fromtimestamp(float(unix), tz=timezone.utc)


def _time_axis(ax, data):
    import matplotlib.dates as mdates
    ax.set_xlim(_dt(data["plot_span"]["start_unix"]), _dt(data["plot_span"]["end_unix"]))
    locator = mdates.AutoDateLocator(tz=timezone.utc, minticks=4, maxticks=12)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=timezone.utc))
    ax.set_xlabel("UTC")


def _tmp_name(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: a reader never
    sees half a file. The pid in the name lets whoever killed a report remove
    what it left (``remove_temporaries``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_atomic(path: Path, write) -> None:
    tmp = _tmp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_temporaries(out_dir: str | os.PathLike, pid: int) -> list[Path]:
    """Remove the temporary files a report process ``pid`` left in ``out_dir``
    (it was killed while writing); returns what was removed."""
    removed = []
    for name in ["report.html", *FIGURES]:
        tmp = Path(out_dir) / f".{name}.{pid}.tmp"
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def _save(fig, path: Path) -> None:
    _write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _bars(ax, y, intervals, colour_of, height=0.8):
    """Draw intervals [(start_unix, end_unix, key)] as a horizontal lane at y."""
    import matplotlib.dates as mdates
    by_colour: dict[str, list] = {}          # one collection per colour: hundreds of frames a night
    for a, b, key in intervals:
        x0 = mdates.date2num(_dt(a))
        by_colour.setdefault(colour_of(key), []).append((x0, mdates.date2num(_dt(b)) - x0))
    for colour, xranges in by_colour.items():
        ax.broken_barh(xranges, (y - height / 2, height), facecolors=colour, edgecolor="none")


def plot_timeline(data: dict, path: Path) -> Path:
    """Unit state, safety verdict and time use over the night, one lane each."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    fig = Figure(figsize=(12, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    lanes = [("time use", [(u["start_unix"], u["end_unix"], u["category"]) for u in data["time_use"]],
              lambda k: CATEGORY_COLOURS.get(k, "#cccccc")),
             ("safety", [(s["start_unix"], s["end_unix"], s["safe"]) for s in data["safety"]],
              lambda k: {True: "#c7e9c0", False: "#d62728"}.get(k, "#dddddd")),
             ("state", [(s["start_unix"], s["end_unix"], s["state"]) for s in data["states"]],
              lambda k: STATE_COLOURS.get(k, "#cccccc"))]
    for y, (_, intervals, colour_of) in enumerate(lanes):
        _bars(ax, y, intervals, colour_of)
    w = data["window"]
    for d in data["dark_intervals"]:
        for t in (d["start_unix"], d["end_unix"]):
            if w["start_unix"] < t < w["end_unix"]:          # a real dusk or dawn, not the window's edge
                ax.axvline(_dt(t), color="#444444", lw=0.8, ls="--")
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels([name for name, _, _ in lanes])
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    _time_axis(ax, data)
    states = []
    for s in data["states"]:
        if s["state"] not in states:
            states.append(s["state"])
    used = [c for c in CATEGORIES if any(u["category"] == c for u in data["time_use"])]
    handles = [Patch(color=STATE_COLOURS.get(s, "#cccccc"), label=s) for s in states]
    handles += [Patch(color="#c7e9c0", label="safe"), Patch(color="#d62728", label="unsafe"),
                Patch(color="#dddddd", label="safety unknown")]
    handles += [Patch(color=CATEGORY_COLOURS[c], label=f"[{c}]") for c in used]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=2, frameon=False)
    ax.set_title(f"Night of {data['night']}: state, safety and time use (dashed: dusk and dawn)")
    fig.subplots_adjust(left=0.07, right=0.78, bottom=0.16, top=0.88)
    _save(fig, path)
    return path


def plot_altitude(data: dict, path: Path) -> Path:
    """Altitude of each observed field over the night; thick while observed."""
    import numpy as np
    from matplotlib.figure import Figure
    from observatory.astro import Site, altaz
    site = data["site"]
    s = Site(str(site.get("name", "site")), site["latitude"], site["longitude"], site["elevation"])
    fig = Figure(figsize=(12, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    t0, t1 = data["plot_span"]["start_unix"], data["plot_span"]["end_unix"]
    times = np.linspace(t0, t1, max(2, int((t1 - t0) / 120.0) + 1))
    when = [_dt(t) for t in times]
    fields: dict[str, tuple[float, float]] = {}
    for o in data["observations"]:
        fields.setdefault(o["field"], (o["ra_deg"], o["dec_deg"]))
    colours = {}
    for i, (name, (ra, dec)) in enumerate(fields.items()):
        alt, _ = altaz(ra, dec, times, s)
        line, = ax.plot(when, alt, lw=0.8, label=name, color=f"C{i % 10}")
        colours[name] = line.get_color()
    for o in data["observations"]:
        a = o["start_unix"]
        b = o["end_unix"] or a
        seg = np.linspace(a, max(a, b), max(2, int((b - a) / 60.0) + 1))
        alt, _ = altaz(o["ra_deg"], o["dec_deg"], seg, s)
        ax.plot([_dt(t) for t in seg], alt, lw=4, solid_capstyle="butt", color=colours[o["field"]])
    # Shade the time outside the dark intervals.
    edges = [t0] + [x for d in data["dark_intervals"] for x in (d["start_unix"], d["end_unix"])] + [t1]
    for a, b in zip(edges[0::2], edges[1::2]):
        if b > a:
            ax.axvspan(_dt(a), _dt(b), color="#ffe0b2", alpha=0.6, lw=0)
    ax.axhline(site.get("min_altitude", 30.0), color="#888888", ls=":", lw=1)
    ax.set_ylim(0, 90)
    ax.set_ylabel("altitude (deg)")
    _time_axis(ax, data)
    if fields:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no field observed", transform=ax.transAxes, ha="center", va="center")
    ax.set_title(f"Night of {data['night']}: field altitudes (thick: observed; dotted: minimum altitude; "
                 f"shaded: sun above {site['observe_horizon']:g} deg)", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.82, bottom=0.13, top=0.9)
    _save(fig, path)
    return path


def plot_breakdown(data: dict, path: Path) -> Path:
    """Hours per category of the breakdown: pale for the whole window, solid for its dark part."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot(1, 1, 1)
    cats = list(CATEGORIES)[::-1]
    hours = [data["breakdown_s"][c] / 3600.0 for c in cats]
    dark = [data["breakdown_dark_s"][c] / 3600.0 for c in cats]
    colours = [CATEGORY_COLOURS[c] for c in cats]
    ax.barh(cats, hours, color=colours, alpha=0.35, edgecolor="#333333", lw=0.5)
    ax.barh(cats, dark, color=colours, height=0.5)
    for y, (h, d) in enumerate(zip(hours, dark)):
        if h > 0:
            ax.text(h, y, f" {_hms(h * 3600.0)} (dark {_hms(d * 3600.0)})", va="center", fontsize=7)
    ax.set_xlabel("hours")
    ax.set_xlim(0, max(hours + [0.1]) * 1.45)
    ax.legend(handles=[Patch(facecolor="#888888", alpha=0.35, edgecolor="#333333", label="whole window"),
                       Patch(facecolor="#555555", label="in the dark")],
              loc="upper right", fontsize=8, frameon=False)
    ax.set_title(f"Night of {data['night']}: where the time went "
                 f"({_hms(data['window']['seconds'])} window, {_hms(data['dark_s'])} dark)", fontsize=10)
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.13, top=0.9)
    _save(fig, path)
    return path


# --------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------

def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _t(text) -> str:
    if text is None:
        return "&mdash;"
    return html.escape(str(text)[:19].replace("T", " "))


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1300px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: left; font-size: 0.9em; }
th { background: #eee; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.empty { padding: 1em; background: #fff3cd; border: 1px solid #e0c36c; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; vertical-align: middle; }
"""


def _table(headers, rows, numeric=()) -> str:
    out = ["<table>"]
    if headers:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>")
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="n"' if i in numeric else ""
            cells.append(f"<td{cls}>{cell}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def render_html(data: dict, figures: list[str]) -> str:
    """The report page for ``data`` (from ``report_data``), linking ``figures`` by name."""
    e = html.escape
    night = e(data["night"])
    w = data["window"]
    site = data["site"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>Night report {night}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>Night report: {night}</h1>",
        f"<p>Site {e(str(site.get('name', '')))} (latitude {site['latitude']:.3f}, longitude "
        f"{site['longitude']:.3f}, {site['elevation']:.0f} m). Window {_t(w['start'])} to {_t(w['end'])} UTC "
        f"({e(w['source'])}). Generated {_t(data['generated'])} UTC from the unit's database.</p>",
    ]
    if not data["has_data"]:
        parts.append(f'<p class="empty">No data recorded for the night of {night}: no observation, '
                     "exposure or event in the database for this window.</p>")
        parts += ["</body>", "</html>"]
        return "\n".join(parts) + "\n"

    b, bd = data["breakdown_s"], data["breakdown_dark_s"]
    frames = data["exposures"]["total"]
    science_frames = data["exposures"]["by_type"].get("science", {}).get("count", 0)
    parts.append("<h2>Summary</h2>")
    parts.append(_table(None, [
        ["Fields observed", e(", ".join(data["fields"])) or "none"],
        ["Observations", str(len(data["observations"]))],
        ["Frames (all cameras, all types)", str(frames)],
        ["Science frames (all cameras)", str(science_frames)],
        ["Open shutter, science (busiest camera" + (f", {e(data['open_shutter_camera'])}"
                                                     if data["open_shutter_camera"] else "") + ")",
         _hms(data["open_shutter_s"])],
        ["Dark time in the window", _hms(data["dark_s"])],
        ["Open shutter / dark time", f"{100.0 * data['open_shutter_fraction']:.1f} %"],
        ["Unit starts / actor restarts", f"{data['unit_starts']} / {data['actor_restarts']}"],
        ["Errors", str(len(data["errors"]))],
    ]))

    parts.append("<h2>Where the time went</h2>")
    total = w["seconds"]
    dark = data["dark_s"]
    rows = []
    for c in CATEGORIES:
        rows.append([f'<span class="swatch" style="background:{CATEGORY_COLOURS[c]}"></span> {c}',
                     _hms(b[c]), f"{100.0 * b[c] / total:.1f}" if total else "",
                     _hms(bd[c]), f"{100.0 * bd[c] / dark:.1f}" if dark else ""])
    rows.append(["total", _hms(sum(b.values())), "100.0", _hms(sum(bd.values())), "100.0" if dark else ""])
    parts.append(_table(["category", "window h:mm:ss", "% of window", "dark h:mm:ss", "% of dark time"], rows,
                        numeric=(1, 2, 3, 4)))
    parts.append("<p>Rules: science is open shutter on the busiest camera; calibration and focus are their frames "
                 "(exposure and readout); otherwise the state decides (scheduling and slewing: slewing; "
                 "pointing; tracking, observing, analyzing: readout); when the unit is not observing the "
                 "reason is daytime (sun above the observing horizon), then weather (unsafe), then faults "
                 "(parked after an error), else idle; down is time with no unit process recording. "
                 "docs/reports.md has the details.</p>")
    if "breakdown.png" in figures:
        parts.append('<img src="breakdown.png" alt="time breakdown">')

    parts.append("<h2>Timeline</h2>")
    if "timeline.png" in figures:
        parts.append('<img src="timeline.png" alt="state, safety and time use timeline">')
    parts.append("<h2>Field altitudes</h2>")
    if "altitude.png" in figures:
        parts.append('<img src="altitude.png" alt="altitude of the observed fields">')

    parts.append("<h2>Observations</h2>")
    if data["observations"]:
        parts.append(_table(
            ["field", "start (UTC)", "end (UTC)", "exposures", "frames", "status"],
            [[e(o["field"]), _t(o["start"]), _t(o["end"]), str(o["exposures"]), str(o["frames"]),
              e(str(o["status"]))] for o in data["observations"]], numeric=(3, 4)))
        parts.append("<p>exposures: rounds counted by the unit (one per exposure on all cameras); "
                     "frames: science files recorded, all cameras.</p>")
    else:
        parts.append("<p>No observation this night.</p>")

    if data["exposures"]["by_camera"]:
        parts.append("<h2>Cameras</h2>")
        parts.append(_table(["camera", "frames", "science open shutter"],
                            [[e(cam), str(c["frames"]), _hms(c["science_exptime_s"])]
                             for cam, c in sorted(data["exposures"]["by_camera"].items())], numeric=(1, 2)))

    parts.append("<h2>Safety changes</h2>")
    if data["safety_events"]:
        parts.append(_table(["time (UTC)", "verdict"], [[_t(ev["time"]), e(ev["message"])]
                                                         for ev in data["safety_events"]]))
    else:
        parts.append("<p>No change of the safety verdict in the window.</p>")

    parts.append("<h2>Parking</h2>")
    if data["parkings"]:
        parts.append(_table(["time (UTC)", "reason", "a fault?"],
                            [[_t(p["time"]), e(p["note"]) or "&mdash;", "yes" if p["fault"] else "no"]
                             for p in data["parkings"]]))
    else:
        parts.append("<p>The unit did not park in the window.</p>")

    parts.append("<h2>Starts and restarts</h2>")
    if data["restarts"]:
        parts.append(_table(["time (UTC)", "kind", "message"],
                            [[_t(ev["time"]), e(ev["kind"]), e(ev["message"])] for ev in data["restarts"]]))
    else:
        parts.append("<p>No restart.</p>")
    parts.append("<h2>Errors</h2>")
    if data["errors"]:
        parts.append(_table(["time (UTC)", "message"], [[_t(ev["time"]), e(ev["message"])]
                                                       for ev in data["errors"]]))
    else:
        parts.append("<p>No error.</p>")
    counts = ", ".join(f"{e(k)}: {v}" for k, v in sorted(data["event_counts"].items()))
    parts.append(f"<p>Events in the window by kind: {counts or 'none'}.</p>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def make_report(pandir: str | os.PathLike, night: str, out_dir: str | os.PathLike | None = None, *,
                site: dict | None = None, start_unix: float | None = None,
                end_unix: float | None = None) -> Path:
    """Write the report of ``night`` (HTML plus PNG plots) and return the HTML's path.

    ``out_dir`` defaults to ``$PANDIR/reports/<night>``. See ``report_data``
    for ``site``, ``start_unix`` and ``end_unix``. A night without data still
    gets a page, saying so, and no plots.
    """
    pandir = Path(pandir)
    out = Path(out_dir) if out_dir is not None else pandir / "reports" / night
    data = report_data(pandir / "db" / "unit.sqlite", night, site=site, start_unix=start_unix,
                       end_unix=end_unix, summary_path=pandir / "reports" / night / "summary.json")
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if data["has_data"]:
        plot_timeline(data, out / "timeline.png")
        plot_altitude(data, out / "altitude.png")
        plot_breakdown(data, out / "breakdown.png")
        figures = list(FIGURES)
    path = out / "report.html"
    page = render_html(data, figures)
    _write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def follow_parent(parent_pid: int) -> bool:
    """End with ``parent_pid`` (the archive actor that started this report):
    Linux sends SIGTERM when it exits (PR_SET_PDEATHSIG), and SIGTERM ends the
    report through SystemExit, so that its temporary files are removed on the
    way out. False if the parent is already gone (it died before the signal
    was armed)."""
    import signal

    from observatory.processes import set_parent_death_signal

    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    set_parent_death_signal(signal.SIGTERM)
    return os.getppid() == parent_pid


def _make_from_args(args) -> Path:
    site = None
    if args.site_json is not None:
        site = json.loads(args.site_json)
        if not isinstance(site, dict):
            raise ReportError("--site-json: not a JSON object")
    elif args.config:
        from observatory.config import ConfigError, load_config
        try:
            site = dict(load_config(args.config)["location"])
        except ConfigError as e:
            raise ReportError(str(e)) from None
    overrides = {"latitude": args.site_lat, "longitude": args.site_lon, "elevation": args.site_elev,
                 "observe_horizon": args.horizon}
    if any(v is not None for v in overrides.values()):
        site = dict(site or {}, **{k: v for k, v in overrides.items() if v is not None})
    if bool(args.start) != bool(args.end):
        raise ReportError("--start and --end go together")
    if (args.start_unix is None) != (args.end_unix is None):
        raise ReportError("--start-unix and --end-unix go together")
    if args.start and args.start_unix is not None:
        raise ReportError("give --start/--end or --start-unix/--end-unix, not both")
    start = parse_iso(args.start) if args.start else args.start_unix
    end = parse_iso(args.end) if args.end else args.end_unix
    return make_report(args.pandir, args.night, args.out_dir, site=site, start_unix=start, end_unix=end)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write the nightly report of a unit from its database.")
    p.add_argument("--pandir", default=os.environ.get("PANDIR") or str(Path.home() / "panoptes"),
                   help="data directory (default: $PANDIR, else ~/panoptes)")
    p.add_argument("--night", required=True, help="local date of the evening, YYYY-MM-DD")
    p.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "conf" / "unit.yaml"),
                   help="unit configuration whose location is the site (default: conf/unit.yaml)")
    p.add_argument("--site-json", help="the site as a JSON object, keys as in the configuration's location "
                                       "section (replaces --config)")
    p.add_argument("--site-lat", type=float, help="site latitude, degrees north (overrides --config)")
    p.add_argument("--site-lon", type=float, help="site longitude, degrees east (overrides --config)")
    p.add_argument("--site-elev", type=float, help="site elevation, metres (overrides --config)")
    p.add_argument("--horizon", type=float, help="sun altitude below which it is dark (overrides --config)")
    p.add_argument("--start", help="window start, ISO UTC (default: summary.json, else local noon)")
    p.add_argument("--end", help="window end, ISO UTC")
    p.add_argument("--start-unix", type=float, help="window start, Unix seconds (instead of --start)")
    p.add_argument("--end-unix", type=float, help="window end, Unix seconds (instead of --end)")
    p.add_argument("--out-dir", help="where to write (default: $PANDIR/reports/<night>)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object, {"path": ..., "error": null} or {"path": null, "error": '
                        '"Type: message"}; every error is caught (exit status 2 for bad input, 1 otherwise)')
    p.add_argument("--parent-pid", type=int, help="end when this process ends (the archive actor starts the "
                                                  "nightly report so); exit status 3 if it is already gone")
    args = p.parse_args(argv)
    if args.parent_pid is not None and not follow_parent(args.parent_pid):
        print(f"error: the parent process {args.parent_pid} is gone", file=sys.stderr)
        return 3
    try:
        path = _make_from_args(args)
    except (ReportError, ValueError, sqlite3.DatabaseError) as e:
        if args.json:
            print(json.dumps({"path": None, "error": f"{type(e).__name__}: {e}"}))
        else:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - with --json the caller gets every error as a result
        if not args.json:
            raise
        import traceback
        traceback.print_exc()
        print(json.dumps({"path": None, "error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps({"path": str(path), "error": None}) if args.json else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

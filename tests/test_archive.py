"""The unit's SQLite store (observatory/archive.py), used alone."""
from __future__ import annotations

import json
import math
import sqlite3

import pytest

from messages import RecordExposure, RecordObservation
from observatory.archive import Archive
from observatory.clock import iso, parse_iso

NIGHT = "2026-11-24"
START = parse_iso("2026-11-24T05:00:00")     # window of the hand-made night
END = parse_iso("2026-11-24T15:00:00")


@pytest.fixture
def archive(tmp_path):
    a = Archive(tmp_path / "db" / "unit.sqlite")
    yield a
    a.close()


def rows(archive, sql, args=()):
    return archive.db.execute(sql, args).fetchall()


def observation(oid="obs1", field="HD 189733", start=START + 600, night=NIGHT, **kw):
    values = dict(observation_id=oid, night=night, field_name=field, ra_deg=300.18, dec_deg=22.71,
                  priority=200.0, exptime=120.0, min_nexp=60, exp_set_size=10, decision_id="dec1",
                  start_unix=start)
    values.update(kw)
    return RecordObservation(**values)


def exposure(eid, camera="cam00", image_type="science", start=START + 700, exptime=120.0, obs="obs1",
             path=None, set_index=0, frame_index=0):
    return RecordExposure(exposure_id=eid, observation_id=obs, camera=camera, image_type=image_type,
                          path=path or f"/pandir/images/f/{camera}/{eid}.fits", start_unix=start,
                          end_unix=start + exptime, exptime=exptime, ra_deg=300.18, dec_deg=22.71,
                          set_index=set_index, frame_index=frame_index)


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------

def test_schema_created(tmp_path, archive):
    assert (tmp_path / "db" / "unit.sqlite").is_file()
    tables = {r[0] for r in rows(archive, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"observations", "exposures", "events", "decisions"} <= tables
    indexes = {r[0] for r in rows(archive, "SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"events_time", "exposures_obs"} <= indexes
    assert rows(archive, "PRAGMA journal_mode")[0][0] == "wal"
    columns = {r[1] for r in rows(archive, "PRAGMA table_info(exposures)")}
    assert {"id", "observation_id", "camera", "image_type", "path", "start_unix", "exptime", "n_stars",
            "fwhm_px", "drift_x_px", "drift_y_px"} <= columns


def test_reopening_keeps_data(tmp_path):
    path = tmp_path / "db" / "unit.sqlite"
    a = Archive(path)
    a.record_observation(observation())
    a.close()
    b = Archive(path)                     # CREATE ... IF NOT EXISTS: no error, data kept
    try:
        assert rows(b, "SELECT id FROM observations") == [("obs1",)]
    finally:
        b.close()


def test_readers_see_writes_at_once(tmp_path, archive):
    """Autocommit: another connection (the status page, a test) sees each write."""
    archive.record_event("unit", "test", "hello", START, 1.0)
    reader = sqlite3.connect(f"file:{tmp_path / 'db' / 'unit.sqlite'}?mode=ro", uri=True)
    try:
        assert reader.execute("SELECT message FROM events").fetchall() == [("hello",)]
    finally:
        reader.close()


# --------------------------------------------------------------------------
# Observations and exposures
# --------------------------------------------------------------------------

def test_record_and_close_observation(archive):
    archive.record_observation(observation())
    (row,) = rows(archive, "SELECT id, night, field, ra_deg, dec_deg, priority, exptime, min_nexp,"
                           " exp_set_size, decision_id, start_time, end_time, status, exposures FROM observations")
    assert row == ("obs1", NIGHT, "HD 189733", 300.18, 22.71, 200.0, 120.0, 60, 10, "dec1",
                   iso(START + 600), None, "running", 0)
    archive.close_observation("obs1", START + 3000, "complete", 20)
    assert rows(archive, "SELECT end_time, status, exposures FROM observations") == [
        (iso(START + 3000), "complete", 20)]


def test_re_sent_observation_is_not_duplicated_nor_reset(archive):
    archive.record_observation(observation())
    archive.close_observation("obs1", START + 3000, "complete", 20)
    archive.record_observation(observation())             # re-sent after an archive restart
    assert rows(archive, "SELECT COUNT(*), status, exposures FROM observations") == [(1, "complete", 20)]


def test_record_exposure(archive):
    archive.record_observation(observation())
    archive.record_exposure(exposure("e1", set_index=2, frame_index=7))
    (row,) = rows(archive, "SELECT id, observation_id, camera, image_type, start_time, end_time, start_unix,"
                           " exptime, set_index, frame_index, n_stars FROM exposures")
    assert row == ("e1", "obs1", "cam00", "science", iso(START + 700), iso(START + 820), START + 700,
                   120.0, 2, 7, None)


def test_duplicate_exposure_is_ignored(archive):
    archive.record_exposure(exposure("e1"))
    archive.record_exposure(exposure("e1"))
    archive.record_exposure(exposure("e1", exptime=999.0))   # same id, even with other values
    assert rows(archive, "SELECT COUNT(*), MAX(exptime) FROM exposures") == [(1, 120.0)]


def test_exposure_without_observation(archive):
    """Calibration or pointing frames may belong to no observation."""
    archive.record_exposure(exposure("p1", image_type="pointing", obs=None, exptime=30.0))
    assert rows(archive, "SELECT observation_id, image_type FROM exposures") == [(None, "pointing")]


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------

def test_record_metrics(archive):
    archive.record_exposure(exposure("e1"))
    archive.record_metrics("e1", {"background": 2100.5, "background_rms": 12.5, "n_stars": 812,
                                  "fwhm_px": 2.3, "ellipticity": 0.05}, (0.4, -1.2, 150))
    assert rows(archive, "SELECT background, background_rms, n_stars, fwhm_px, ellipticity, drift_x_px,"
                         " drift_y_px FROM exposures") == [(2100.5, 12.5, 812, 2.3, 0.05, 0.4, -1.2)]


def test_record_metrics_nan_and_inf_become_null(archive):
    archive.record_exposure(exposure("e1"))
    archive.record_metrics("e1", {"background": 2100.0, "background_rms": 12.0, "n_stars": 0,
                                  "fwhm_px": math.nan, "ellipticity": math.inf}, None)
    assert rows(archive, "SELECT n_stars, fwhm_px, ellipticity, drift_x_px, drift_y_px FROM exposures") == [
        (0, None, None, None, None)]
    assert rows(archive, "SELECT typeof(fwhm_px), typeof(ellipticity) FROM exposures") == [("null", "null")]


def test_record_metrics_of_a_failed_analysis(archive):
    """An analysis error gives metrics {'error': ...}: every figure stays empty."""
    archive.record_exposure(exposure("e1"))
    archive.record_metrics("e1", {"error": "/x.fits: not a FITS file"}, None)
    assert rows(archive, "SELECT background, n_stars, fwhm_px FROM exposures") == [(None, None, None)]


def test_metrics_arriving_before_their_exposure_are_kept_until_it_arrives(archive):
    """Thespian does not promise ordering: RecordMetrics may overtake RecordExposure."""
    archive.record_metrics("e1", {"background": 2000.0, "background_rms": 11.0, "n_stars": 17,
                                  "fwhm_px": math.nan, "ellipticity": 0.1}, (1.5, 2.5, 20))
    assert rows(archive, "SELECT COUNT(*) FROM exposures") == [(0,)]
    archive.record_exposure(exposure("e1"))
    assert rows(archive, "SELECT background, n_stars, fwhm_px, ellipticity, drift_x_px, drift_y_px"
                         " FROM exposures") == [(2000.0, 17, None, 0.1, 1.5, 2.5)]
    archive.record_exposure(exposure("e1"))          # re-sent: still one row, metrics kept
    assert rows(archive, "SELECT COUNT(*), n_stars FROM exposures") == [(1, 17)]


def test_metrics_for_unknown_exposure_change_nothing(archive):
    archive.record_exposure(exposure("e1"))
    archive.record_metrics("nope", {"n_stars": 5}, None)
    assert rows(archive, "SELECT n_stars FROM exposures") == [(None,)]


# --------------------------------------------------------------------------
# Events and decisions
# --------------------------------------------------------------------------

def test_record_events(archive):
    archive.record_event("state", "unit", "ready -> scheduling", START + 10, 1000.5, {"from": "ready"})
    archive.record_event("safety", "safety", "unsafe: rain", START + 20, 1001.5)
    got = rows(archive, "SELECT id, time, time_unix, wall_unix, kind, source, message, data FROM events ORDER BY id")
    assert got[0][1:] == (iso(START + 10), START + 10, 1000.5, "state", "unit", "ready -> scheduling",
                          '{"from": "ready"}')
    assert got[1][4:] == ("safety", "safety", "unsafe: rain", "{}")
    assert got[1][0] > got[0][0]


def test_event_data_that_is_not_json_is_stringified(archive):
    archive.record_event("unit", "test", "odd data", START, 1.0, {"path": __import__("pathlib").Path("/x")})
    assert json.loads(rows(archive, "SELECT data FROM events")[0][0]) == {"path": "/x"}


def test_record_decision(archive):
    decision = {"winner": "HD 189733", "candidates": [{"name": "HD 189733", "merit": 180.5, "vetoes": []},
                                                      {"name": "WASP-43", "merit": 0.0, "vetoes": ["below_horizon"]}]}
    archive.record_decision("d1", START + 60, "HD 189733", "highest merit", decision)
    archive.record_decision("d1", START + 60, "WASP-43", "re-sent", {})      # duplicate id: ignored
    archive.record_decision("d2", START + 120, None, "no field observable", {"candidates": []})
    got = rows(archive, "SELECT id, time, winner, reason, data FROM decisions ORDER BY id")
    assert [r[:4] for r in got] == [("d1", iso(START + 60), "HD 189733", "highest merit"),
                                    ("d2", iso(START + 120), None, "no field observable")]
    assert json.loads(got[0][4]) == decision


# --------------------------------------------------------------------------
# The night summary
# --------------------------------------------------------------------------

@pytest.fixture
def night(archive):
    """Two targets; cam00 takes 3 science + 1 pointing, cam01 2 science + 1 pointing;
    one frame of each camera falls outside the night window."""
    archive.record_observation(observation("o1", "HD 189733", START + 600))
    archive.record_observation(observation("o2", "WASP-12", START + 4000))
    archive.record_observation(observation("o3", "Other night", START - 86400, night="2026-11-23"))
    t = START + 700
    archive.record_exposure(exposure("p00", "cam00", "pointing", t, 30.0, obs="o1"))
    archive.record_exposure(exposure("p01", "cam01", "pointing", t, 30.0, obs="o1"))
    for i in range(3):
        archive.record_exposure(exposure(f"s00-{i}", "cam00", "science", t + 100 + 130 * i, 120.0, obs="o1"))
    for i in range(2):
        archive.record_exposure(exposure(f"s01-{i}", "cam01", "science", t + 100 + 130 * i, 120.0, obs="o1"))
    archive.record_exposure(exposure("s00-re", "cam00", "science", t + 100, 120.0, obs="o1"))   # not a dupe id
    archive.record_exposure(exposure("s00-0", "cam00", "science", t + 100, 120.0, obs="o1"))    # re-sent
    # outside the window [START, END)
    archive.record_exposure(exposure("old", "cam00", "science", START - 500, 120.0, obs="o3"))
    archive.record_exposure(exposure("late", "cam01", "science", END, 120.0, obs="o2"))
    archive.close_observation("o1", START + 3000, "complete", 3)
    archive.close_observation("o2", START + 5000, "interrupted", 1)
    archive.record_event("state", "unit", "a", START + 1, 1.0)
    archive.record_event("state", "unit", "b", START + 2, 2.0)
    archive.record_event("safety", "safety", "unsafe", START + 3, 3.0)
    archive.record_event("state", "unit", "outside", END + 1, 4.0)
    return archive


def test_night_summary_figures(night):
    stats = {"dark_seconds": 30000.0, "safe_seconds": 1000.0, "restarts": {"cam01": 1}, "unsafe_periods": 2}
    s = night.night_summary(NIGHT, START, END, stats)
    assert s["night"] == NIGHT and s["start"] == iso(START) and s["end"] == iso(END)
    assert s["targets"] == [{"field": "HD 189733", "exposures": 3, "status": "complete"},
                            {"field": "WASP-12", "exposures": 1, "status": "interrupted"}]
    # s00-re is a distinct exposure id with its own (unique) path: counted; the re-sent s00-0 is not.
    assert s["exposures_per_camera"] == {
        "cam00": {"science": 4, "pointing": 1, "open_shutter_s": 4 * 120.0 + 30.0},
        "cam01": {"science": 2, "pointing": 1, "open_shutter_s": 2 * 120.0 + 30.0},
    }
    assert s["open_shutter_seconds_per_camera"] == {"cam00": 480.0, "cam01": 240.0}
    assert s["open_shutter_seconds"] == 480.0
    assert s["open_shutter_fraction"] == pytest.approx(0.48)
    assert s["dark_seconds"] == 30000.0 and s["safe_seconds"] == 1000.0
    assert s["restarts"] == {"cam01": 1} and s["unsafe_periods"] == 2
    assert s["events"] == {"state": 2, "safety": 1}
    json.dumps(s)          # goes to reports/<night>/summary.json


def test_night_summary_without_safe_time(night):
    s = night.night_summary(NIGHT, START, END, {})
    assert s["open_shutter_fraction"] == 0.0
    assert s["safe_seconds"] == 0.0 and s["dark_seconds"] == 0.0
    assert s["restarts"] == {} and s["unsafe_periods"] == 0


def test_night_summary_of_an_empty_night(archive):
    s = archive.night_summary(NIGHT, START, END, {"safe_seconds": 3600.0})
    assert s["targets"] == [] and s["exposures_per_camera"] == {} and s["events"] == {}
    assert s["open_shutter_seconds"] == 0.0 and s["open_shutter_fraction"] == 0.0


def test_night_summary_pointing_only_camera(archive):
    """A camera that took only pointing frames has no science open-shutter time."""
    archive.record_exposure(exposure("p1", "cam00", "pointing", START + 10, 30.0, obs=None))
    s = archive.night_summary(NIGHT, START, END, {"safe_seconds": 100.0})
    assert s["exposures_per_camera"] == {"cam00": {"science": 0, "pointing": 1, "open_shutter_s": 30.0}}
    assert s["open_shutter_seconds"] == 0.0 and s["open_shutter_fraction"] == 0.0

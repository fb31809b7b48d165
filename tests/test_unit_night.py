"""The main job, end to end: a simulated unit observes one whole night
(accelerated 600x) as the README's first command runs it."""
import json
from pathlib import Path

import pytest
from astropy.io import fits

from observatory.clock import parse_iso
from tests.unit_runner import RunningUnit

START = "2026-11-24T03:00:00"


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("night")
    unit = RunningUnit(tmp, start=START, speed=600, nights=1,
                       overrides={"weather.timeline": str(Path(__file__).parent.parent / "conf/weather/default.yaml")})
    try:
        rc = unit.wait(timeout=400)
    finally:
        unit.kill()
    unit.rc = rc
    yield unit


def test_night_exits_cleanly(night):
    assert night.rc == 0, night.output()[-3000:]
    out = night.output()
    assert "-> observing" in out
    assert "unit stopped (parked)" in out


def test_both_cameras_took_a_full_set(night):
    rows = night.query(
        "SELECT o.field, o.exp_set_size, e.camera, COUNT(*) FROM exposures e JOIN observations o"
        " ON e.observation_id = o.id WHERE e.image_type = 'science' GROUP BY o.id, e.camera")
    full = {}
    for field, set_size, camera, n in rows:
        if n >= set_size:
            full.setdefault(field, set()).add(camera)
    assert any(cams >= {"cam00", "cam01"} for cams in full.values()), rows


def test_db_rows_match_fits_files_one_for_one(night):
    on_disk = {str(p) for p in (night.pandir / "images").rglob("*.fits")}
    in_db = [r[0] for r in night.query("SELECT path FROM exposures")]
    assert len(in_db) == len(set(in_db))
    assert set(in_db) == on_disk
    assert not list((night.pandir / "images").rglob("*.tmp*")), "a temporary file was left behind"


def test_fits_headers_carry_time_and_pointing(night):
    path, start_time, exptime, camera, field = night.query(
        "SELECT e.path, e.start_time, e.exptime, e.camera, o.field FROM exposures e JOIN observations o"
        " ON e.observation_id = o.id WHERE e.image_type='science' ORDER BY e.start_unix LIMIT 1")[0]
    hdr = fits.getheader(path)
    assert abs(parse_iso(hdr["DATE-OBS"]) - parse_iso(start_time)) < 0.01
    assert hdr["EXPTIME"] == exptime
    assert hdr["OBJECT"] == field and hdr["CAMERA"] == camera
    for key in ("RA-MNT", "DEC-MNT", "HA-MNT", "AIRMASS", "LAT-OBS", "LONG-OBS", "ELEV-OBS", "IMAGEID",
                "SEQID", "MOONSEP", "CFGHASH", "DECISID"):
        assert key in hdr, key
    assert 1.0 <= hdr["AIRMASS"] < 2.1    # fields are observed above 30 degrees


def test_every_science_frame_was_measured(night):
    total, measured, with_stars = night.query(
        "SELECT COUNT(*), COUNT(n_stars), SUM(n_stars > 0) FROM exposures WHERE image_type='science'")[0]
    assert total > 0 and measured == total and with_stars == total


def test_unsafe_spell_parked_and_observing_resumed(night):
    # conf/weather/default.yaml turns cloudy, then rainy, in the middle of the night.
    unsafe = night.query("SELECT time_unix FROM events WHERE kind='safety' AND message LIKE 'UNSAFE%'"
                         " AND message NOT LIKE '%sun up%' ORDER BY time_unix")
    stalls = night.query("SELECT time, message FROM events WHERE message LIKE 'the unit stalled%'")
    assert unsafe, f"the weather timeline's unsafe spell was not seen; stalls: {stalls}"
    t_unsafe = unsafe[0][0]
    parked_after = night.query("SELECT MIN(time_unix) FROM events WHERE kind='mount' AND message='mount parked'"
                               " AND time_unix >= ?", (t_unsafe,))[0][0]
    assert parked_after is not None and parked_after - t_unsafe < 120
    later = night.query("SELECT COUNT(*) FROM exposures WHERE image_type='science' AND start_unix > ?",
                        (parked_after,))[0][0]
    assert later > 0, "observing did not resume after the weather cleared"


def test_summary_written_and_printed(night):
    reports = list((night.pandir / "reports").glob("*/summary.json"))
    assert len(reports) == 1
    summary = json.loads(reports[0].read_text())
    assert reports[0].parent.name == summary["night"] == "2026-11-23"   # local date of the evening
    for key in ("targets", "exposures_per_camera", "open_shutter_seconds", "dark_seconds", "safe_seconds",
                "restarts"):
        assert key in summary
    assert summary["exposures_per_camera"]["cam00"]["science"] > 0
    assert 0 < summary["safe_seconds"] <= summary["dark_seconds"] < 14 * 3600
    assert 0 < summary["open_shutter_seconds"] <= summary["safe_seconds"]
    assert f'"night": "{summary["night"]}"' in night.output()


def test_status_and_logs(night):
    status = json.loads((night.pandir / "run" / "status.json").read_text())
    assert status["state"] == "parked"
    names = {a["name"] for a in status["actors"]}
    assert names == {"archive", "weather", "safety", "scheduler", "analysis", "mount", "cam00", "cam01"}
    assert all(isinstance(a["pid"], int) for a in status["actors"])
    lines = (night.pandir / "logs" / "unit.jsonl").read_text().splitlines()
    assert len(lines) > 100
    actors = {json.loads(line)["actor"] for line in lines}
    assert {"unit", "mount", "cam00", "cam01", "safety"} <= actors


def test_events_record_the_state_sequence(night):
    states = [r[0] for r in night.query("SELECT json_extract(data, '$.state') FROM events WHERE kind='state'"
                                        " ORDER BY id")]
    for s in ("sleeping", "ready", "scheduling", "slewing", "pointing", "tracking", "observing", "analyzing",
              "parking", "parked", "housekeeping"):
        assert s in states, s

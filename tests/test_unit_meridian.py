"""A field crossing the meridian: the unit stops at the meridian, flips and re-points."""
import yaml

from observatory.astro import lst_deg
from observatory.clock import parse_iso
from tests.unit_runner import RunningUnit

START = "2026-11-24T08:00:00"
LONGITUDE = -155.58
TRANSIT_AFTER_S = 45 * 60


def test_meridian_flip_splits_the_block(tmp_path):
    # A field that reaches the meridian 45 simulated minutes after the start (start-up on a
    # busy machine can take 20).
    ra = float(lst_deg(parse_iso(START) + TRANSIT_AFTER_S, LONGITUDE)) % 360.0
    fields = tmp_path / "fields.yaml"
    fields.write_text(yaml.safe_dump([{"field": {"name": "Transit", "position": f"{ra:.4f} 20.0"},
                                       "observation": {"priority": 100, "exptime": 120, "min_nexp": 60,
                                                       "exp_set_size": 10}}]))
    unit = RunningUnit(tmp_path, start=START, speed=200, overrides={"scheduler.fields_file": str(fields)})
    try:
        unit.wait_for(lambda: unit.query("SELECT 1 FROM events WHERE message LIKE '%meridian flip%'"),
                      90, "the meridian flip")
        flip_time = unit.query("SELECT time_unix FROM events WHERE message LIKE '%-> slewing (meridian flip)%'")[0][0]
        # Re-pointed after the flip, then observing on.
        unit.wait_for(lambda: unit.query("SELECT COUNT(*) FROM exposures WHERE image_type='science'"
                                         " AND start_unix > ?", (flip_time,))[0][0] >= 2, 60, "frames after the flip")
        pointing = unit.query("SELECT COUNT(*) FROM exposures WHERE image_type='pointing' AND start_unix > ?",
                              (flip_time,))[0][0]
        assert pointing == 1
        # The flip comes after the transit, within the margin (120 s) and one exposure.
        transit = parse_iso(START) + TRANSIT_AFTER_S
        assert transit - 5 <= flip_time <= transit + 120 + 130
        flips = unit.query("SELECT COUNT(*) FROM events WHERE message LIKE '%-> slewing (meridian flip)%'")
        assert flips[0][0] == 1
        # No exposure was running across the meridian, and it is one observation throughout.
        # (The field's J2000 RA is used for the hour angle on both sides: a few seconds of slack.)
        crossing = unit.query("SELECT COUNT(*) FROM exposures WHERE image_type='science'"
                              " AND start_unix < ? AND start_unix + exptime > ?", (transit - 5, transit + 5))[0][0]
        assert crossing == 0
        observations = unit.query("SELECT COUNT(DISTINCT observation_id) FROM exposures WHERE image_type='science'")
        assert observations[0][0] == 1
        assert unit.terminate() == 0
    finally:
        unit.kill()

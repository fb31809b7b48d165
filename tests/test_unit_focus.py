"""Autofocus in a running unit: each camera's focuser starts far from focus;
at the first field of the night the unit sweeps it (focus frames, measured as
they come), fits the V-curve, and observes at the focus it found, which must
be close to the simulator's true best focus."""
from astropy.io import fits

from tests.test_unit_faults import DARK_START, science_count
from tests.unit_runner import RunningUnit

BEST = {"cam00": 5200, "cam01": 4600}


def _cameras():
    base = {"width": 640, "height": 430, "pixel_size_um": 34.4, "readout_time": 2.0, "limit_mag": 10.0,
            "defocus_fwhm_per_step": 0.004}
    return [{"name": "cam00", "primary": True, "settings": {**base, "seed": 5, "best_focus": BEST["cam00"]}},
            {"name": "cam01", "settings": {**base, "seed": 6, "best_focus": BEST["cam01"]}}]


def test_autofocus_finds_each_cameras_focus_and_observes_there(tmp_path):
    focusers = [{"name": f"foc{i}", "camera": cam, "position": 3000, "limits": [0, 10000],
                 "autofocus": {"coarse_half_width": 2500, "coarse_steps": 11, "fine_steps": 7, "exptime": 10.0},
                 "settings": {"max_position": 10000, "speed_steps_s": 1000.0}}
                for i, cam in enumerate(BEST)]
    unit = RunningUnit(tmp_path, start=DARK_START, speed=60,
                       overrides={"cameras": _cameras(), "focusers": focusers, "observing.plate_solve": False})
    try:
        unit.wait_for(lambda: science_count(unit, "cam00") >= 1 and science_count(unit, "cam01") >= 1, 180,
                      "science frames after focusing")
        found = dict(unit.query("SELECT json_extract(data, '$.focuser'), json_extract(data, '$.result.position') "
                                "FROM events WHERE kind='focus' AND message LIKE '%best focus%'"))
        assert set(found) == {"foc0", "foc1"}, unit.query("SELECT message FROM events WHERE kind IN ('focus','error')")
        assert abs(found["foc0"] - BEST["cam00"]) <= 60 and abs(found["foc1"] - BEST["cam01"]) <= 60, found
        focus_frames = unit.query("SELECT COUNT(*) FROM exposures WHERE image_type='focus'")[0][0]
        assert focus_frames >= 2 * (11 + 7)
        states = [m for (m,) in unit.query("SELECT message FROM events WHERE kind='state' ORDER BY id")]
        assert any("tracking -> focusing" in s for s in states) and any("focusing -> tracking" in s for s in states)
        path = unit.query("SELECT path FROM exposures WHERE camera='cam01' AND image_type='science' LIMIT 1")[0][0]
        header = fits.getheader(path)
        assert header["FOCUSPOS"] == found["foc1"]
        assert unit.terminate() == 0
    finally:
        unit.kill()

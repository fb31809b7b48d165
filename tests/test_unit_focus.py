"""Autofocus in a running unit: each camera's focuser starts far from focus;
at the first field of the night the unit sweeps it (focus frames, measured as
they come), fits the V-curve, and observes at the focus it found, which must
be close to the simulator's true best focus."""
import re

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


def test_a_drop_in_ambient_temperature_triggers_a_refocus_that_follows_the_focus(tmp_path):
    """The weather station's ambient temperature falls 6 C half an hour into
    the night. Every sky frame carries AMBTEMP; the change (refocus_temp_c
    2 C) makes the unit refocus between sets, and the simulated focus, which
    moves 50 steps per degree, is found again where it has gone."""
    coeff, ref_c, warm, cold = 50.0, 10.0, 8.0, 2.0
    cams = _cameras()
    for cam in cams:
        cam["settings"].update(focus_temp_coeff=coeff, focus_temp_ref_c=ref_c)
    focusers = [{"name": f"foc{i}", "camera": cam, "position": 3000, "limits": [0, 10000],
                 "autofocus": {"coarse_half_width": 2500, "coarse_steps": 9, "fine_steps": 7, "exptime": 10.0},
                 "settings": {"max_position": 10000, "speed_steps_s": 1000.0}}
                for i, cam in enumerate(BEST)]
    weather = [{"after": "30m", "conditions": "clear", "ambient_c": cold}]
    unit = RunningUnit(tmp_path, start=DARK_START, speed=60, weather=weather,
                       overrides={"cameras": cams, "focusers": focusers, "observing.plate_solve": False})

    def runs():
        return unit.query("SELECT json_extract(data, '$.focuser'), json_extract(data, '$.result.position'), time_unix "
                          "FROM events WHERE kind='focus' AND message LIKE '%best focus%' ORDER BY id")
    try:
        def refocused():
            """When the unit went focusing for the temperature (None before)."""
            rows = unit.query("SELECT time_unix, message FROM events WHERE kind='state' "
                              "AND message LIKE 'tracking -> focusing%temperature changed%' ORDER BY id")
            return rows[0] if rows else None
        unit.wait_for(lambda: refocused() and sum(t > refocused()[0] for *_, t in runs()) >= 2, 420,
                      "a focus run on each camera for the temperature")
        when, why = refocused()
        assert re.search(r"temperature changed by -(5\.[5-9]|6\.[0-4]) C", why), why
        # (A run cut short, e.g. by a pause for safety, is simply run again: the last before counts.)
        first = {focuser: position for focuser, position, t in runs() if t < when}
        second = {focuser: position for focuser, position, t in runs() if t > when}
        for i, cam in enumerate(BEST):
            name = f"foc{i}"
            assert abs(first[name] - (BEST[cam] + coeff * (warm - ref_c))) <= 60, (name, first)
            assert abs(second[name] - (BEST[cam] + coeff * (cold - ref_c))) <= 60, (name, second)
        temps = {fits.getheader(p)["AMBTEMP"] for (p,) in
                 unit.query("SELECT path FROM exposures WHERE image_type IN ('science', 'focus') "
                            "AND camera='cam00'")}
        assert any(abs(t - warm) < 1 for t in temps) and any(abs(t - cold) < 1 for t in temps), temps
        assert unit.terminate() == 0
    finally:
        unit.kill()

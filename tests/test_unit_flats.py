"""Twilight flats in a running unit (state `calibrating`).

Evening: the unit wakes before the evening window (sun from -3 to -10 deg),
opens, points 13 degrees from the zenith away from the sun and takes flats
(each re-pointed and dithered) whose exposure times follow
the darkening sky until each camera has its flats, parks, and starts science
only once it is dark. Morning: after dawn it waits for the morning window,
takes flats with shortening exposures, then bias and darks and the summary.
The simulated camera lights flats with a twilight sky from the SUNALT header
it is given, so the unit must really find exposure times that hit the level.

Site (conf/unit.yaml): on 2026-11-24 the evening window is 03:52-04:24 UTC,
dark 04:59-15:19, the morning window 15:55-16:26."""
from __future__ import annotations

import json

from astropy.io import fits

from tests.test_unit_faults import science_count
from tests.unit_runner import RunningUnit

N_FLATS = 4
SATURATION, BIAS = 15000, 2048


def _overrides():
    base = {"width": 320, "height": 216, "pixel_size_um": 68.8, "readout_time": 2.0, "limit_mag": 9.0,
            "bias": BIAS, "saturation_adu": SATURATION}
    cams = [{"name": "cam00", "primary": True, "settings": {**base, "seed": 5}},
            {"name": "cam01", "settings": {**base, "seed": 6, "flat_e_per_s_per_px": 14000.0}}]
    return {"cameras": cams, "observing.plate_solve": False, "calibration.flats": True,
            "calibration.n_flats": N_FLATS, "calibration.n_bias": 2, "calibration.n_darks": 1}


def _flats(unit):
    rows = unit.query("SELECT camera, path, exptime, metrics, start_unix FROM exposures "
                      "WHERE image_type='flat' ORDER BY start_unix")
    return [(cam, path, exptime, json.loads(metrics or "{}"), start) for cam, path, exptime, metrics, start in rows]


def _check_flats(flats, which: str):
    target = BIAS + 0.45 * (SATURATION - BIAS)
    by_camera: dict[str, list] = {}
    pointings: dict[str, set] = {}
    for cam, path, exptime, metrics, _ in flats:
        header = fits.getheader(path)
        # Each flat is re-pointed away from the sun and dithered (stars fall elsewhere).
        pointings.setdefault(cam, set()).add((header["DITHRA"], header["DITHDEC"],
                                              round(header["RA-MNT"], 3), round(header["DEC-MNT"], 3)))
        assert header["IMAGETYP"].lower().startswith("flat"), header["IMAGETYP"]
        assert -10.5 <= header["SUNALT"] <= -2.5, (path, header["SUNALT"])      # inside the window
        assert (header["SUNRATE"] < 0) == (which == "evening"), header["SUNRATE"]
        assert metrics.get("background") is not None and "flat_level_ok" in metrics, metrics
        by_camera.setdefault(cam, []).append((exptime, metrics))
    assert set(by_camera) == {"cam00", "cam01"}
    for cam, frames in by_camera.items():
        assert len(pointings[cam]) == len(frames), (cam, sorted(pointings[cam]))
    for cam, frames in by_camera.items():
        kept = [(t, m) for t, m in frames if m["flat_level_ok"]]
        assert len(kept) >= N_FLATS, (cam, frames)
        for _, m in kept:
            assert abs(m["background"] - target) <= 0.3 * (target - BIAS), (cam, m)
        times = [t for t, _ in kept]
        # The sky darkens in the evening (longer exposures), brightens in the morning.
        assert times == sorted(times, reverse=(which == "morning")), (which, times)
        assert times[0] != times[-1], times


def test_evening_flats_then_science_after_dark(tmp_path):
    unit = RunningUnit(tmp_path, start="2026-11-24T03:45:00", speed=120, overrides=_overrides())
    try:
        unit.wait_for(lambda: science_count(unit, "cam00") >= 1, 240, "science after the evening flats")
        flats = _flats(unit)
        _check_flats(flats, "evening")
        states = [m for (m,) in unit.query("SELECT message FROM events WHERE kind='state' ORDER BY id")]
        assert any("ready -> calibrating" in s for s in states), states
        assert any("calibrating -> parking" in s and "evening flats done" in s for s in states), states
        # Science only once dark: the first science frame starts after dark (04:59:04).
        from observatory.clock import parse_iso as parse_time
        first_science = unit.query("SELECT MIN(start_unix) FROM exposures WHERE image_type='science'")[0][0]
        assert first_science >= parse_time("2026-11-24T04:59:04"), first_science
        assert max(f[4] for f in flats) < parse_time("2026-11-24T04:24:00")
        assert unit.terminate() == 0
    finally:
        unit.kill()


def test_morning_flats_after_dawn_then_calibration_and_summary(tmp_path):
    unit = RunningUnit(tmp_path, start="2026-11-24T15:00:00", speed=120, nights=1, overrides=_overrides())
    try:
        assert unit.wait(300) == 0, unit.output()[-3000:]
        flats = _flats(unit)
        _check_flats(flats, "morning")
        from observatory.clock import parse_iso as parse_time
        assert min(f[4] for f in flats) >= parse_time("2026-11-24T15:54:00")
        events = [m for (m,) in unit.query("SELECT message FROM events WHERE kind IN ('state','calibration') "
                                           "ORDER BY id")]
        assert any("parked -> calibrating" in m for m in events), events
        done = next(i for i, m in enumerate(events) if "morning flats done" in m)
        assert any("housekeeping" in m for m in events[done:]), events
        assert unit.query("SELECT COUNT(*) FROM exposures WHERE image_type='bias'")[0][0] >= 2
        summary = next((unit.pandir / "reports").glob("*/summary.json"))
        assert json.loads(summary.read_text())
        for _, path, *_ in flats:
            assert fits.getheader(path)["SUNALT"] >= -10.5
    finally:
        unit.kill()

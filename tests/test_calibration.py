import math
import time

import numpy as np
import pytest
from astropy.io import fits

from observatory.calibration import (TWILIGHT_FACTOR_PER_DEG, CalibrationPlan, CalibrationStep, FlatWindows,
                                     flat_exposure, flat_level_ok, flat_window, sun_alt_trend)
from observatory.clock import SimClock
from simulators.camera import CameraError, SimulatedCamera

BIAS = 2048
TARGET = 8000            # raw median wanted (about half of the 15000 ADU range above bias)
OVERHEAD_S = 10.0        # readout, writing and measuring between two flats
SMALL = {"width": 200, "height": 150}


# ---------------------------------------------------------------------------
# flat_exposure


def test_without_a_trend_the_exposure_scales_with_the_level():
    e = flat_exposure(2.0, BIAS + 3000, BIAS + 6000, BIAS, 0.1, 60.0)
    assert e.status == "ok" and e.exptime == pytest.approx(4.0)
    assert e.predicted_adu == pytest.approx(BIAS + 6000)
    assert e.rate_adu_s == pytest.approx(1500.0)


def test_the_trend_lengthens_evening_and_shortens_morning_exposures():
    plain = flat_exposure(5.0, 6000, TARGET, BIAS, 0.1, 60.0).exptime
    evening = flat_exposure(5.0, 6000, TARGET, BIAS, 0.1, 60.0, sun_alt_trend=-0.25, overhead_s=OVERHEAD_S)
    morning = flat_exposure(5.0, 6000, TARGET, BIAS, 0.1, 60.0, sun_alt_trend=+0.25, overhead_s=OVERHEAD_S)
    assert morning.exptime < plain < evening.exptime
    # By the model: 0.25 deg/min at 2.75x per degree is 0.42% per second.
    k = math.log(TWILIGHT_FACTOR_PER_DEG) * 0.25 / 60.0
    r_start = (6000 - BIAS) / 5.0 * 5.0 * k / math.expm1(k * 5.0)
    r_next = r_start * math.exp(k * (5.0 + OVERHEAD_S))
    assert morning.exptime == pytest.approx(math.log1p(k * (TARGET - BIAS) / r_next) / k, rel=1e-9)
    assert morning.predicted_adu == pytest.approx(TARGET)


def test_limits_and_statuses():
    bright = flat_exposure(0.1, 14000, TARGET, BIAS, 0.1, 60.0)
    assert bright.status == "too_bright" and bright.exptime == 0.1 and bright.wanted_exptime < 0.1
    dark = flat_exposure(60.0, 2300, TARGET, BIAS, 0.1, 60.0)
    assert dark.status == "too_dark" and dark.exptime == 60.0
    # Evening sky fading faster than a long exposure can gather: never reaches the target.
    fading = flat_exposure(60.0, 2400, TARGET, BIAS, 0.1, 600.0, sun_alt_trend=-1.0)
    assert fading.status == "too_dark" and fading.wanted_exptime == math.inf
    saturated = flat_exposure(2.0, 15000, TARGET, BIAS, 0.1, 60.0, saturation_adu=15000)
    assert saturated.status == "saturated" and saturated.exptime == pytest.approx(0.2)
    assert flat_exposure(0.1, 15000, TARGET, BIAS, 0.1, 60.0, saturation_adu=15000).status == "too_bright"
    no_light = flat_exposure(5.0, BIAS, TARGET, BIAS, 0.1, 60.0)
    assert no_light.status == "too_dark" and no_light.exptime == 60.0
    for bad in [dict(previous_exptime=0), dict(min_exptime=10, max_exptime=1), dict(target_adu=BIAS),
                dict(measured_median=math.nan), dict(overhead_s=-1)]:
        args = dict(previous_exptime=1.0, measured_median=5000, target_adu=TARGET, bias=BIAS,
                    min_exptime=0.1, max_exptime=60.0)
        args.update(bad)
        with pytest.raises(ValueError):
            flat_exposure(**args)


def test_flat_level_ok():
    assert flat_level_ok(TARGET, TARGET, BIAS)
    assert flat_level_ok(BIAS + 0.8 * (TARGET - BIAS), TARGET, BIAS)
    assert not flat_level_ok(BIAS + 0.6 * (TARGET - BIAS), TARGET, BIAS)
    assert not flat_level_ok(TARGET, BIAS, BIAS)


# ---------------------------------------------------------------------------
# Adaptive series on the camera simulator's twilight sky


def linear_sun(alt0, rate_deg_per_min):
    return lambda t: alt0 + rate_deg_per_min * t / 60.0


def flat_series(camera, sun, rate, first_exptime, n=8):
    """Take flats back to back in simulated time, each exposure time from the last frame."""
    t, exptime, rows = 0.0, first_exptime, []
    for i in range(n):
        frame = camera.render(exptime, 0.0, 0.0, "flat", noise_seed=i,
                              sun_alt_deg=sun(t), sun_rate_deg_per_min=rate)
        median = float(np.median(frame))
        rows.append((sun(t), exptime, median))
        nxt = flat_exposure(exptime, median, TARGET, BIAS, 0.05, 120.0, sun_alt_trend=rate,
                            overhead_s=OVERHEAD_S, saturation_adu=camera.settings["saturation_adu"])
        t += exptime + OVERHEAD_S
        exptime = nxt.exptime
    return rows


def signal_error(median):
    return (median - BIAS) / (TARGET - BIAS) - 1.0


@pytest.mark.parametrize("factor", [2.75, 2.4, 3.1])
def test_evening_flats_reach_the_target_within_10_percent_after_two_frames(factor):
    # The simulator's sky need not fade exactly as the predictor assumes (2.75x per degree).
    camera = SimulatedCamera("cam", {**SMALL, "twilight_factor_per_deg": factor}, SimClock.starting_now())
    rate = -0.235                                 # Mauna Loa at the equinox
    rows = flat_series(camera, linear_sun(-5.5, rate), rate, first_exptime=0.2, n=20)
    assert abs(signal_error(rows[0][2])) > 0.3, "the first guess should be off"
    assert all(abs(signal_error(m)) <= 0.10 for _, _, m in rows[2:]), rows
    exptimes = [e for _, e, _ in rows[2:]]
    assert exptimes == sorted(exptimes) and exptimes[-1] > 1.5 * exptimes[0], "longer as the sky darkens"


def test_morning_flats_and_a_saturated_first_frame():
    camera = SimulatedCamera("cam", {**SMALL, "twilight_factor_per_deg": 2.6}, SimClock.starting_now())
    rate = +0.235
    rows = flat_series(camera, linear_sun(-9.0, rate), rate, first_exptime=5.0, n=12)
    assert all(abs(signal_error(m)) <= 0.10 for _, _, m in rows[2:]), rows
    exptimes = [e for _, e, _ in rows[2:]]
    assert exptimes == sorted(exptimes, reverse=True) and exptimes[-1] < exptimes[0] / 1.5, \
        "shorter as the sky brightens"
    # A first guess far too long saturates: a tenth, then on target.
    rows = flat_series(camera, linear_sun(-5.0, -0.235), -0.235, first_exptime=5.0, n=5)
    assert rows[0][2] == camera.settings["saturation_adu"]
    assert all(abs(signal_error(m)) <= 0.10 for _, _, m in rows[3:]), rows


def test_twilight_sky_model():
    camera = SimulatedCamera("cam", SMALL, SimClock.starting_now())
    s = camera.settings
    at_ref = camera.twilight_rate(-6.0)
    assert at_ref == pytest.approx(s["flat_e_per_s_per_px"] + s["sky_e_per_s_per_px"])
    for h in (-2.0, -5.0, -9.0, -11.0):
        ratio = (camera.twilight_rate(h) - 20.0) / (camera.twilight_rate(h - 1.0) - 20.0)
        assert ratio == pytest.approx(2.75)
    assert camera.twilight_rate(5.0) == camera.twilight_rate(0.0)
    assert camera.twilight_rate(-18.0) == pytest.approx(s["sky_e_per_s_per_px"], rel=0.01)
    # Averaged over a moving sun: between the start and end rates.
    mean = camera.twilight_rate(-6.0, -0.25, 60.0)
    assert camera.twilight_rate(-6.25) < mean < camera.twilight_rate(-6.0)
    # Without SUNALT a flat is lit as before.
    plain = camera.render(1.0, 0.0, 0.0, "flat", noise_seed=1)
    assert np.median(plain) == pytest.approx(BIAS + 10000 / 1.5, abs=5)
    assert camera.conditions_from_header({"SUNALT": -6.0, "SUNRATE": -0.2}, "science") == {}
    assert camera.conditions_from_header({"SUNRATE": -0.2}, "flat") == {}
    with pytest.raises(CameraError, match="SUNALT"):
        camera.conditions_from_header({"SUNALT": "low"}, "flat")


def test_flat_exposure_reads_sunalt_from_the_header(tmp_path):
    camera = SimulatedCamera("cam", {**SMALL, "readout_time": 1.0}, SimClock.starting_now(speed=1000.0))
    camera.connect()
    try:
        path = tmp_path / "flat.fits"
        camera.start_exposure(2.0, str(path), {"SUNALT": (-8.0, "[deg]"), "SUNRATE": -0.2}, 0.0, 0.0, "flat")
        deadline = time.monotonic() + 5.0
        while camera.collect() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        with fits.open(path) as hdul:
            data, header = hdul[0].data, hdul[0].header
        rate = camera.twilight_rate(-8.0, -0.2, 2.0)
        assert header["SIM-SKYR"] == pytest.approx(rate) and header["SUNALT"] == -8.0
        assert np.median(data) == pytest.approx(BIAS + 2.0 * rate / 1.5, rel=0.01)
    finally:
        camera.close()


# ---------------------------------------------------------------------------
# flat_window


def sine_sun(low, period=86400.0, t_noon=0.0, amplitude=None):
    """A sun that culminates at t_noon and reaches ``low`` at midnight."""
    high = 60.0
    mid, amp = (high + low) / 2.0, (high - low) / 2.0
    return lambda t: mid + amp * np.cos(2 * np.pi * (np.asarray(t) - t_noon) / period)


def test_flat_window_on_a_synthetic_sun():
    sun = sine_sun(-40.0)
    w = flat_window(sun, (0.0, 86400.0))
    for t, level in zip((*w.evening, *w.morning), (-3.0, -10.0, -10.0, -3.0)):
        assert float(sun(t)) == pytest.approx(level, abs=0.01)
    assert w.evening[0] < w.evening[1] < 43200.0 < w.morning[0] < w.morning[1]
    assert w.which(0.5 * (w.evening[0] + w.evening[1])) == "evening"
    assert w.which(43200.0) is None
    # A plain scalar function works as well as an array one.
    scalar = flat_window(lambda t: float(sun(t)), 0.0)
    assert scalar.evening == pytest.approx(w.evening, abs=2.0)
    assert w.to_dict()["high"] == -3.0


def test_flat_window_when_the_sun_does_not_get_low_enough():
    shallow = sine_sun(-6.0)
    w = flat_window(shallow, (0.0, 86400.0))
    assert w.evening[1] == pytest.approx(43200.0, abs=2.0) == w.morning[0]
    assert float(shallow(w.evening[0])) == pytest.approx(-3.0, abs=0.01)
    none = flat_window(sine_sun(-2.0), (0.0, 86400.0))
    assert none == FlatWindows(None, None, -3.0, -10.0)
    # A span starting inside the evening window cuts it there.
    full = flat_window(sine_sun(-40.0), (0.0, 86400.0))
    cut = flat_window(sine_sun(-40.0), (full.evening[0] + 600.0, 86400.0))
    assert cut.evening == (full.evening[0] + 600.0, pytest.approx(full.evening[1], abs=1.0))
    with pytest.raises(ValueError):
        flat_window(shallow, (0.0, 86400.0), high=-10.0, low=-3.0)
    with pytest.raises(ValueError):
        flat_window(shallow, "2026-03-20")     # a date needs a longitude


def test_flat_window_and_trend_from_the_ephemeris():
    from observatory.astro import MAUNA_LOA, Ephemeris
    eph = Ephemeris(MAUNA_LOA)
    w = flat_window(eph, "2026-03-20")
    assert eph.night_date(w.evening[0]) == "2026-03-20" == eph.night_date(w.morning[1])
    for t, level in zip((*w.evening, *w.morning), (-3.0, -10.0, -10.0, -3.0)):
        assert float(eph.sun_alt(t)) == pytest.approx(level, abs=0.02)
    # About half an hour each at 19.5 degrees latitude near the equinox.
    assert 25 * 60 < w.evening[1] - w.evening[0] < 35 * 60
    assert 25 * 60 < w.morning[1] - w.morning[0] < 35 * 60
    assert sun_alt_trend(eph, w.evening[0]) == pytest.approx(-0.235, abs=0.01)
    assert sun_alt_trend(eph, w.morning[0]) == pytest.approx(+0.235, abs=0.01)


# ---------------------------------------------------------------------------
# CalibrationPlan


def test_calibration_plan_matches_the_nights_exposure_times():
    science = [120.0] * 40 + [60.0] * 10 + [30.0000001] * 3 + [0.0, None]
    plan = CalibrationPlan.for_night(science, n_bias=10, n_darks=5, extra_exptimes=[30.0, 5.0])
    assert plan.steps == (CalibrationStep("bias", 0.0, 10), CalibrationStep("dark", 120.0, 5),
                          CalibrationStep("dark", 60.0, 5), CalibrationStep("dark", 30.0, 5),
                          CalibrationStep("dark", 5.0, 5))
    assert len(plan) == 30 and plan.to_dict()["frames"] == 30
    frames = plan.frames()
    assert frames[:10] == [("bias", 0.0)] * 10
    assert frames[10:14] == [("dark", 120.0), ("dark", 60.0), ("dark", 30.0), ("dark", 5.0)]
    assert plan.duration(readout_s=5.0) == pytest.approx(10 * 5 + 5 * (125 + 65 + 35 + 10))
    # At most max_dark_exptimes times, the most used first.
    few = CalibrationPlan.for_night([10.0, 20.0, 20.0, 30.0, 30.0, 30.0], max_dark_exptimes=2)
    assert [s.exptime for s in few.steps if s.image_type == "dark"] == [30.0, 20.0]
    assert CalibrationPlan.for_night([], n_bias=0).steps == ()
    with pytest.raises(ValueError):
        CalibrationPlan.for_night([1.0], n_darks=-1)


def test_calibration_plan_trimmed_to_a_time_budget():
    plan = CalibrationPlan.for_night([120.0, 60.0], n_bias=20, n_darks=10)
    assert plan.trimmed(1e6, 5.0) == plan
    budget = 1200.0
    cut = plan.trimmed(budget, readout_s=5.0)
    assert cut.duration(5.0) <= budget
    assert {s.exptime for s in cut.steps} == {0.0, 120.0, 60.0}
    assert all(s.count >= 3 for s in cut.steps)
    tiny = plan.trimmed(300.0, readout_s=5.0)
    assert tiny.duration(5.0) <= 300.0 and 120.0 not in {s.exptime for s in tiny.steps}


def test_flats_point_near_the_zenith_away_from_the_sun_and_dither():
    from observatory.astro import MAUNA_LOA, Ephemeris, altaz, angular_separation_deg, lst_deg
    from observatory.calibration import flat_pointing
    from observatory.clock import parse_iso
    eph = Ephemeris(MAUNA_LOA)
    for when, sun_side in (("2026-11-24T04:10:00", "west"), ("2026-11-24T16:10:00", "east")):
        unix = parse_iso(when)
        sun_az = float(eph.sun_az(unix))
        assert (180 < sun_az < 360) == (sun_side == "west"), sun_az
        lst = float(lst_deg(unix, MAUNA_LOA.longitude_deg))
        ra, dec, offset = flat_pointing(sun_az, lst, MAUNA_LOA.latitude_deg, 13.0)
        assert offset == (0.0, 0.0)
        alt, az = altaz(ra, dec, unix, MAUNA_LOA)
        # 13 deg from the zenith (altaz() adds precession to the date: 0.4 deg), opposite the sun.
        assert float(alt) == pytest.approx(77.0, abs=0.5)
        assert abs((float(az) - sun_az + 360) % 360 - 180) < 3.0
        pointings = [flat_pointing(sun_az, lst, MAUNA_LOA.latitude_deg, 13.0, i, 10.0) for i in range(9)]
        assert len({(round(p[0], 6), round(p[1], 6)) for p in pointings}) == 9
        for p in pointings[1:]:
            step = angular_separation_deg(ra, dec, p[0], p[1]) * 60.0
            assert 9.9 < step < 14.2, step                     # 10' on a side, 14.1' on a diagonal
            assert math.hypot(*p[2]) == pytest.approx(step * 60.0, rel=1e-3)

import math
import time

import numpy as np
import pytest
from astropy.io import fits

from observatory.autofocus import (Autofocus, AutofocusSettings, fit_focus, needs_refocus,
                                   plan_sweep)
from observatory.clock import SimClock
from observatory.imaging import measure_frame
from simulators.camera import CameraError, SimulatedCamera

LIMITS = (0, 10000)
# Small frames of the random sky, a few times denser than the default so
# that a 400 x 300 frame holds 15-20 measurable stars in focus.
FOCUS_CAMERA = {"width": 400, "height": 300, "star_density": 4.0, "best_focus": 6000,
                "defocus_fwhm_per_step": 0.004}
FIELD = (120.0, 30.0)
TOLERANCE_STEPS = 30


def hyperbola(x, best=5000.0, a=2.2, b=0.004):
    x = np.asarray(x, dtype=float)
    return np.sqrt(a * a + (b * (x - best)) ** 2)


# ---------------------------------------------------------------------------
# plan_sweep


def test_plan_sweep_spaces_positions_evenly_and_ascending():
    assert plan_sweep(5000, 1000, 9, LIMITS) == [4000, 4250, 4500, 4750, 5000, 5250, 5500, 5750, 6000]
    assert plan_sweep(5000, 30, 7, LIMITS) == [4970, 4980, 4990, 5000, 5010, 5020, 5030]
    assert plan_sweep(5000, 0, 5, LIMITS) == [5000]


def test_plan_sweep_slides_inside_the_limits_keeping_its_width():
    assert plan_sweep(300, 1000, 5, LIMITS) == [0, 500, 1000, 1500, 2000]
    assert plan_sweep(9900, 1000, 5, LIMITS) == [8000, 8500, 9000, 9500, 10000]
    # Wider than the focuser: the whole range.
    assert plan_sweep(5000, 8000, 5, LIMITS) == [0, 2500, 5000, 7500, 10000]
    # A centre outside the range is pulled in first.
    assert plan_sweep(-500, 100, 3, LIMITS) == [0, 100, 200]


def test_plan_sweep_drops_duplicate_positions_and_refuses_nonsense():
    assert plan_sweep(10, 2, 9, LIMITS) == [8, 9, 10, 11, 12]
    with pytest.raises(ValueError):
        plan_sweep(5000, 100, 0, LIMITS)
    with pytest.raises(ValueError):
        plan_sweep(5000, -1, 5, LIMITS)
    with pytest.raises(ValueError):
        plan_sweep(5000, 100, 5, (10, 0))


# ---------------------------------------------------------------------------
# fit_focus


def test_fit_focus_finds_the_minimum_of_a_hyperbola():
    x = np.arange(4000, 6001, 250)
    fit = fit_focus(x, hyperbola(x, best=5100.0))
    assert fit.ok, fit.reason
    assert fit.best_position == pytest.approx(5100.0, abs=1.0)
    assert fit.min_hfd == pytest.approx(2.2, rel=1e-3)
    assert fit.slope == pytest.approx(0.004, rel=1e-3)
    assert fit.rel_rms < 1e-6 and fit.n_used == len(x) and fit.direction == 0
    assert fit.to_dict()["best_position"] == pytest.approx(5100.0, abs=1.0)


def test_fit_focus_parabola_model_and_noise():
    rng = np.random.default_rng(1)
    x = np.linspace(4600, 5400, 9)
    h = hyperbola(x) * (1 + 0.03 * rng.standard_normal(len(x)))
    for model in ("hyperbola", "parabola"):
        fit = fit_focus(x, h, model=model)
        assert fit.ok, (model, fit.reason)
        assert abs(fit.best_position - 5000.0) < 40.0
        assert fit.position_error < 40.0
        assert fit.model == model


def test_fit_focus_rejects_outliers():
    x = np.arange(4000, 6001, 250)
    h = hyperbola(x, best=4900.0)
    h[3] *= 2.0          # a frame spoilt by a cloud
    h[6] *= 0.5          # a frame with a blend measured too small
    fit = fit_focus(x, h)
    assert fit.ok, fit.reason
    assert set(fit.rejected) == {float(x[3]), float(x[6])}
    assert fit.best_position == pytest.approx(4900.0, abs=2.0)


def test_fit_focus_ignores_missing_points():
    x = list(range(4000, 6001, 250))
    h = list(hyperbola(x))
    h[0], h[-1] = None, math.nan
    fit = fit_focus(x, h)
    assert fit.ok and fit.n_used == len(x) - 2
    assert fit.best_position == pytest.approx(5000.0, abs=1.0)


@pytest.mark.parametrize("best, direction", [(8000.0, 1), (1500.0, -1)])
def test_fit_focus_one_sided_points_say_which_way_to_extend(best, direction):
    x = np.arange(4000, 6001, 250)
    fit = fit_focus(x, hyperbola(x, best=best))
    assert not fit.ok and fit.direction == direction
    assert "beyond" in fit.reason
    # Far out the flank is straight; the extrapolated minimum is still on the right side.
    assert (fit.best_position - 5000.0) * direction > 1000.0


def test_fit_focus_minimum_at_the_last_point_is_an_edge():
    x = np.arange(4000, 6001, 250)
    fit = fit_focus(x, hyperbola(x, best=5900.0))
    assert not fit.ok and fit.direction == 1 and "edge" in fit.reason
    assert fit_focus(x, hyperbola(x, best=5900.0), min_side=1).ok


def test_fit_focus_poor_flat_and_short_data():
    rng = np.random.default_rng(3)
    x = np.arange(4000, 6001, 250)
    noisy = hyperbola(x) * np.exp(0.5 * rng.standard_normal(len(x)))
    fit = fit_focus(x, noisy)
    assert not fit.ok
    flat = fit_focus(x, np.full(len(x), 2.2) * (1 + 0.01 * np.sin(x)))
    assert not flat.ok
    short = fit_focus([4000, 5000, 6000], [3.0, 2.2, 3.0])
    assert not short.ok and "usable" in short.reason
    # A sweep too narrow for the V to show.
    narrow = np.arange(4990, 5011, 5)
    assert "shallow" in fit_focus(narrow, hyperbola(narrow)).reason
    with pytest.raises(ValueError):
        fit_focus([1, 2], [1.0])


# ---------------------------------------------------------------------------
# Autofocus on the camera simulator


def run_autofocus(camera, start, settings, exptime=30.0, measure=measure_frame):
    af = Autofocus(start, LIMITS, settings)
    noise = 0
    while (pos := af.next_position()) is not None:
        noise += 1
        frame = camera.render(exptime, *FIELD, "focus", noise_seed=noise, focus_position=pos)
        metrics = measure(frame)
        af.record(pos, metrics.fwhm_px, metrics.n_stars)
    return af


@pytest.fixture
def focus_camera():
    def make(**settings):
        return SimulatedCamera("focus0", {**FOCUS_CAMERA, **settings}, SimClock.starting_now())
    return make


def test_autofocus_lands_on_the_simulators_best_focus_from_2000_steps_off(focus_camera):
    camera = focus_camera()
    t0 = time.monotonic()
    af = run_autofocus(camera, start=4000, settings=AutofocusSettings(coarse_half_width=2500))
    assert af.phase == "done", af.result
    assert abs(af.result.position - camera.best_focus_at()) <= TOLERANCE_STEPS
    assert af.result.min_hfd == pytest.approx(camera.psf_fwhm_px(), rel=0.15)
    phases = [ph for _, _, ph in af.measurements]
    assert phases.count("coarse") == 9 and "fine" in phases
    assert af.result.frames == len(af.measurements) <= 25
    assert af.next_position() is None
    assert time.monotonic() - t0 < 5.0


@pytest.mark.parametrize("start", [4000, 8000])
def test_autofocus_extends_a_sweep_whose_minimum_is_at_its_edge(focus_camera, start):
    camera = focus_camera()
    settings = AutofocusSettings(coarse_half_width=1000)
    af = run_autofocus(camera, start=start, settings=settings)
    first = plan_sweep(start, 1000, 9, LIMITS)
    assert not first[0] <= camera.best_focus_at() <= first[-1]
    coarse = [p for p, _, ph in af.measurements if ph == "coarse"]
    assert len(coarse) > len(first) and any(not first[0] <= p <= first[-1] for p in coarse)
    assert not af.fits[0].ok and af.fits[0].direction == (1 if start < 6000 else -1)
    assert af.phase == "done", af.result
    assert abs(af.result.position - camera.best_focus_at()) <= TOLERANCE_STEPS


def test_autofocus_follows_the_temperature_model(focus_camera):
    camera = focus_camera(best_focus=5000, focus_temp_coeff=-40.0, focus_temp_ref_c=10.0)
    truth = camera.best_focus_at(ambient_temp_c=0.0)
    assert truth == 5400.0
    af = Autofocus(5000, LIMITS, AutofocusSettings(coarse_half_width=1500))
    noise = 0
    while (pos := af.next_position()) is not None:
        noise += 1
        frame = camera.render(30.0, *FIELD, "focus", noise_seed=noise, focus_position=pos, ambient_temp_c=0.0)
        m = measure_frame(frame)
        af.record(pos, m.fwhm_px, m.n_stars)
    assert af.result.ok and abs(af.result.position - truth) <= TOLERANCE_STEPS


def test_autofocus_fails_when_best_focus_is_beyond_the_focuser(focus_camera):
    camera = focus_camera(best_focus=11500)
    af = run_autofocus(camera, start=9000, settings=AutofocusSettings(coarse_half_width=1000))
    assert af.phase == "failed"
    assert "upper limit 10000" in af.result.reason
    assert af.result.position is None and af.next_position() is None


def test_autofocus_zooms_in_when_only_frames_near_focus_show_stars():
    # Stars measurable only within 700 steps of focus (5300): the first
    # sweep (625 steps apart) catches two frames, then a narrower sweep around
    # the better one finds the V.
    def hfd(pos):
        return float(hyperbola(pos, best=5300.0)) if abs(pos - 5300) < 700 else None
    af = Autofocus(4000, LIMITS, AutofocusSettings(coarse_half_width=2500))
    while (pos := af.next_position()) is not None:
        af.record(pos, hfd(pos))
    assert "usable" in af.fits[0].reason
    assert af.result.ok and abs(af.result.position - 5300) <= 5


def test_autofocus_without_stars_fails_and_abort_ends_a_run():
    af = Autofocus(5000, LIMITS, {"coarse_steps": 5, "coarse_half_width": 400, "max_extensions": 0})
    while (pos := af.next_position()) is not None:
        af.record(pos, None)
    assert af.phase == "failed" and "usable" in af.result.reason
    assert af.result.frames == 5
    # Allowed to, it widens the sweep to the whole range before giving up.
    af = Autofocus(5000, LIMITS, {"coarse_steps": 5, "coarse_half_width": 3000})
    while (pos := af.next_position()) is not None:
        af.record(pos, math.nan)
    assert af.result.reason == "no stars measured anywhere in the focuser's range"
    assert min(p for p, _, _ in af.measurements) == 0 and max(p for p, _, _ in af.measurements) == 10000

    af = Autofocus(5000, LIMITS)
    first = af.next_position()
    assert af.next_position() == first              # asking again does not advance
    af.record(first, 5.0, n_stars=1)                # too few stars: counts as missing
    assert math.isnan(af.measurements[0][1])
    result = af.abort("unsafe")
    assert not result.ok and "unsafe" in result.reason and af.next_position() is None
    with pytest.raises(RuntimeError):
        af.record(first, 3.0)


def test_autofocus_max_frames_bounds_the_run():
    af = Autofocus(5000, LIMITS, AutofocusSettings(coarse_half_width=1000, max_frames=12))
    while (pos := af.next_position()) is not None:
        af.record(pos, float(hyperbola(pos, best=9500.0)))
    assert af.phase == "failed" and "max_frames" in af.result.reason
    assert af.frames <= 12


def test_autofocus_settings_are_checked():
    assert AutofocusSettings().fine_width == 375
    with pytest.raises(ValueError, match="unknown"):
        AutofocusSettings.from_mapping({"coarse_width": 3})
    with pytest.raises(ValueError):
        AutofocusSettings(coarse_steps=2)
    with pytest.raises(ValueError):
        AutofocusSettings(model="spline")
    with pytest.raises(ValueError):
        AutofocusSettings(max_rel_rms=0)
    with pytest.raises(ValueError):
        Autofocus(12000, LIMITS)


# ---------------------------------------------------------------------------
# needs_refocus


def test_needs_refocus_on_fwhm_degradation_or_temperature_change():
    settings = AutofocusSettings(refocus_fwhm_fraction=0.25, refocus_temp_c=2.0)
    assert needs_refocus([2.3, 2.2, 2.4], 10.0, 10.5, 2.2, settings) is None
    reason = needs_refocus([2.2, 2.9, 2.9, 3.0], 10.0, 10.5, 2.2, settings)
    assert reason and "FWHM" in reason
    # One bad frame among good ones is not enough (median of the last frames).
    assert needs_refocus([2.2, 2.2, 2.3, 2.2, 5.0], 10.0, 10.0, 2.2, settings) is None
    # Too few frames yet, and missing values are ignored.
    assert needs_refocus([3.5, None, math.nan], 10.0, 10.0, 2.2, settings) is None
    reason = needs_refocus([2.2], 7.9, 10.0, 2.2, settings)
    assert reason and "temperature" in reason and "-2.1" in reason
    assert needs_refocus([2.2], None, 10.0, 2.2, settings) is None
    assert needs_refocus([], 5.0, None, None, settings) == "not focused yet"
    assert needs_refocus([2.2, 3.0, 3.0], 5.0, None, 2.2, {"refocus_fwhm_fraction": 0.5}) is None


# ---------------------------------------------------------------------------
# The camera's focus model


def test_camera_focus_model_is_off_by_default_and_exact_when_on():
    clock = SimClock.starting_now()
    plain = SimulatedCamera("c0", {"width": 200, "height": 150}, clock)
    assert plain.best_focus_at() is None and plain.psf_fwhm_px(123) == 2.2
    base = plain.render(30.0, *FIELD, "science", noise_seed=1)
    same = plain.render(30.0, *FIELD, "science", noise_seed=1, focus_position=9000)
    assert np.array_equal(base, same)
    assert plain.conditions_from_header({"FOCUSPOS": "junk"}, "science") == {}

    cam = SimulatedCamera("c0", {"width": 200, "height": 150, "best_focus": 5000,
                                 "defocus_fwhm_per_step": 0.004}, clock)
    assert cam.psf_fwhm_px(5000) == 2.2
    assert cam.psf_fwhm_px(6000) == pytest.approx(math.hypot(2.2, 4.0))
    assert cam.psf_fwhm_px(None) == 2.2
    # In focus the frame is the one without the focus model.
    assert np.array_equal(cam.render(30.0, *FIELD, "science", noise_seed=1, focus_position=5000), base)
    assert cam.conditions_from_header({"FOCUSPOS": (5100, "steps"), "AMBTEMP": 3.0}, "science") \
        == {"focus_position": 5100.0}
    assert cam.conditions_from_header({"FOCUSPOS": 5100}, "dark") == {}
    with pytest.raises(CameraError, match="FOCUSPOS"):
        cam.conditions_from_header({"FOCUSPOS": "junk"}, "focus")


@pytest.mark.parametrize("settings", [{"best_focus": -1}, {"best_focus": "5000"}, {"defocus_fwhm_per_step": -0.1},
                                      {"focus_temp_coeff": math.nan}, {"twilight_factor_per_deg": 1.0},
                                      {"twilight_ref_sun_alt_deg": 5.0}])
def test_camera_refuses_bad_focus_settings(settings):
    with pytest.raises(CameraError):
        SimulatedCamera("c0", {"width": 64, "height": 64, **settings}, SimClock.starting_now())


def test_camera_reads_focuspos_and_ambtemp_from_the_exposure_header(tmp_path):
    camera = SimulatedCamera("c0", {**FOCUS_CAMERA, "readout_time": 1.0, "focus_temp_coeff": -30.0},
                             SimClock.starting_now(speed=1000.0))
    camera.connect()
    try:
        results = {}
        for pos in (6300, 7500):
            path = tmp_path / f"f{pos}.fits"
            camera.start_exposure(30.0, str(path), {"FOCUSPOS": (pos, "focuser [steps]"), "AMBTEMP": 20.0},
                                  *FIELD, image_type="focus")
            deadline = time.monotonic() + 5.0
            while (done := camera.collect()) is None:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            assert done["path"] == str(path)
            header = fits.getheader(path)
            results[pos] = (header, measure_frame(path))
        # AMBTEMP 20 C moves best focus 300 steps down: 6300 is 600 steps off.
        header, metrics = results[6300]
        assert header["SIM-BFOC"] == 5700.0 and header["FOCUSPOS"] == 6300
        assert header["SIM-FWHM"] == pytest.approx(math.hypot(2.2, 0.004 * 600))
        assert metrics.fwhm_px == pytest.approx(header["SIM-FWHM"], rel=0.15)
        header, metrics = results[7500]
        assert metrics.fwhm_px == pytest.approx(header["SIM-FWHM"], rel=0.15)
        assert results[7500][1].fwhm_px > 2 * results[6300][1].fwhm_px
        with pytest.raises(CameraError, match="FOCUSPOS"):
            camera.start_exposure(1.0, str(tmp_path / "bad.fits"), {"FOCUSPOS": True}, *FIELD, "focus")
    finally:
        camera.close()

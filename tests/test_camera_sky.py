"""The camera simulator's night sky: sun, moon and twilight (simulators/camera.py).

Real dates at Mauna Loa: 2026-11-24 10:00 UTC is local midnight five hours
before full moon (the moon near the zenith); 14 sidereal days later the moon
is new and below the horizon while every target is back where it was. The
model is off by default: these cameras turn it on (``sky_model``).
"""
import math
import time

import numpy as np
import pytest
import sep
from astropy.io import fits

from observatory.clock import SimClock, parse_iso
from simulators.camera import (CameraError, SimulatedCamera, ks_airmass, moonlight_nl, nl_from_v_mag,
                               sky_geometry, v_mag_from_nl)

SITE = (19.536, -155.576, 3400.0)                 # Mauna Loa
SITE_HEADER = {"LAT-OBS": (SITE[0], "[deg]"), "LONG-OBS": (SITE[1], "[deg] east positive"),
               "ELEV-OBS": (SITE[2], "[m]")}
FULL = parse_iso("2026-11-24T10:00:00")           # full moon near the zenith
SIDEREAL_DAY_S = 86164.0905
NEW = FULL + 14 * SIDEREAL_DAY_S                  # new moon, below the horizon; same sky overhead
EVENING = parse_iso("2026-12-09T04:00:00")        # sun -4 deg and setting, new moon down
SMALL = {"width": 200, "height": 150, "star_density": 0.2, "readout_time": 1.0, "sky_model": True}
BIAS, GAIN, DARK = 2048, 1.5, 0.02


@pytest.fixture
def camera():
    return SimulatedCamera("cam", SMALL, SimClock.starting_now())


def near_moon(unix, separation_deg):
    """A J2000 target ``separation_deg`` south of the moon at ``unix``."""
    g = sky_geometry(unix, 0.0, 0.0, *SITE)
    return g.moon_ra_deg, g.moon_dec_deg - separation_deg


def expose(start_unix, exptime, ra, dec, header, tmp_path, image_type="science", **settings):
    """One frame through start_exposure, on a clock starting at ``start_unix``."""
    cam = SimulatedCamera("cam", {**SMALL, **settings}, SimClock.starting_now(start_unix, speed=2000.0))
    cam.connect()
    try:
        path = tmp_path / f"frame_{start_unix:.0f}_{ra:.3f}_{dec:.3f}_{image_type}.fits"
        cam.start_exposure(exptime, str(path), header, ra, dec, image_type)
        deadline = time.monotonic() + 10.0
        while (result := cam.collect()) is None:
            assert time.monotonic() < deadline, "no frame"
            time.sleep(0.005)
        assert result.get("path") == str(path), result
        with fits.open(path) as hdul:
            return hdul[0].data.astype(np.float32), hdul[0].header
    finally:
        cam.close()


def start_of(header):
    """The exposure's start (Unix) as the frame records it: MJD-OBS (DATE-OBS to the second)."""
    return (header["MJD-OBS"] - 40587.0) * 86400.0


def sep_sky_rate(data, exptime):
    """Sky e-/s/px from sep's background of a rendered frame (bias and dark removed)."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    back = sep.Background(data, bw=50, bh=50)
    return ((back.globalback - BIAS) * GAIN) / exptime - DARK, back.globalrms * GAIN


# ---------------------------------------------------------------------------
# Positions


def test_sun_and_moon_agree_with_astropy():
    import observatory.astro as astro            # configures astropy for no internet first
    import astropy.units as u
    from astropy.coordinates import AltAz, EarthLocation, get_body
    from astropy.time import Time

    rng = np.random.default_rng(3)
    times = parse_iso("2024-01-01T00:00:00") + rng.uniform(0.0, 6 * 365.25 * 86400.0, 24)
    location = EarthLocation.from_geodetic(lon=SITE[1] * u.deg, lat=SITE[0] * u.deg, height=SITE[2] * u.m)
    with astro._quiet_astropy():
        t = Time(times, format="unix", scale="utc")
        frame = AltAz(obstime=t, location=location, pressure=0 * u.hPa)
        sun, moon = get_body("sun", t, location), get_body("moon", t, location)
        sun_alt, moon_alt = sun.transform_to(frame).alt.deg, moon.transform_to(frame).alt.deg
        sun_g, moon_g = get_body("sun", t), get_body("moon", t)
    elongation = np.radians(astro.angular_separation_deg(sun_g.ra.deg, sun_g.dec.deg, moon_g.ra.deg, moon_g.dec.deg))
    phase = np.degrees(np.arctan2(sun_g.distance.au * np.sin(elongation),
                                  moon_g.distance.au - sun_g.distance.au * np.cos(elongation)))
    for i, unix in enumerate(times):
        g = sky_geometry(unix, 120.0, -30.0, *SITE)
        assert g.sun_alt_deg == pytest.approx(sun_alt[i], abs=0.03)
        assert g.moon_alt_deg == pytest.approx(moon_alt[i], abs=0.4)
        assert float(astro.angular_separation_deg(g.moon_ra_deg, g.moon_dec_deg, moon.ra.deg[i],
                                                  moon.dec.deg[i])) < 0.4
        # Topocentric phase angle (ours) and geocentric (here) differ by up to the moon's parallax, 1 deg.
        assert g.moon_phase_deg == pytest.approx(phase[i], abs=1.3)
        assert g.moon_distance_km == pytest.approx(moon.distance.km[i], rel=0.01)
        target_alt, _ = astro.altaz(120.0, -30.0, unix, astro.Site("ml", *SITE))
        assert g.target_alt_deg == pytest.approx(target_alt, abs=0.02)


def test_the_test_dates_are_what_they_claim():
    g_full = sky_geometry(FULL, 0.0, 0.0, *SITE)
    g_new = sky_geometry(NEW, 0.0, 0.0, *SITE)
    assert g_full.moon_phase_deg < 10 and g_full.moon_alt_deg > 80 and g_full.sun_alt_deg < -60
    assert g_new.moon_phase_deg > 165 and g_new.moon_alt_deg < -60 and g_new.sun_alt_deg < -60
    # A target has the same altitude 14 sidereal days later.
    ra, dec = near_moon(FULL, 20.0)
    assert sky_geometry(NEW, ra, dec, *SITE).target_alt_deg == pytest.approx(
        sky_geometry(FULL, ra, dec, *SITE).target_alt_deg, abs=0.05)


# ---------------------------------------------------------------------------
# Krisciunas & Schaefer pieces


def test_ks_units_and_airmass():
    assert nl_from_v_mag(21.587) == pytest.approx(79.0, rel=0.01)          # K&S's Mauna Kea zenith
    assert v_mag_from_nl(nl_from_v_mag(18.3)) == pytest.approx(18.3)
    assert ks_airmass(0.0) == 1.0
    assert ks_airmass(60.0) == pytest.approx(1.0 / math.sqrt(1.0 - 0.96 * 0.75))
    assert ks_airmass(90.0) == pytest.approx(5.0) == ks_airmass(120.0)


def test_moonlight_falls_with_separation_and_phase_and_vanishes_below_the_horizon():
    k = 0.172
    seps = [3.0, 5.0, 10.0, 20.0, 40.0, 60.0, 90.0]
    b = [moonlight_nl(0.0, rho, 40.0, 30.0, k) for rho in seps]
    assert all(x > y for x, y in zip(b, b[1:])), b
    phases = [0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0]
    b = [moonlight_nl(a, 45.0, 40.0, 30.0, k) for a in phases]
    assert all(x > y for x, y in zip(b, b[1:])), b
    assert moonlight_nl(0.0, 45.0, 90.0, 30.0, k) == 0.0
    assert moonlight_nl(0.0, 45.0, 40.0, 30.0, 0.0) == 0.0                  # no atmosphere, no scattering
    # Full moon 45 deg away, both 30-40 deg from the zenith: about 18 mag/arcsec^2,
    # 3-4 mag brighter than a dark sky (K&S's Fig. 3 region).
    total = nl_from_v_mag(21.6) + moonlight_nl(0.0, 45.0, 40.0, 30.0, k)
    assert 17.5 < v_mag_from_nl(total) < 19.0
    # New moon (phase angle 180) adds under 1% to a dark sky.
    assert moonlight_nl(180.0, 30.0, 40.0, 30.0, k) < 0.01 * nl_from_v_mag(21.6)


# ---------------------------------------------------------------------------
# The modelled sky of frames


def test_full_moon_20_deg_away_is_a_few_magnitudes_brighter_than_with_the_moon_down(camera):
    ra, dec = near_moon(FULL, 20.0)
    full = camera.sky_brightness(FULL, 120.0, ra, dec, *SITE)
    down = camera.sky_brightness(NEW, 120.0, ra, dec, *SITE)
    assert full.geometry.moon_sep_deg == pytest.approx(20.0, abs=0.1)
    assert full.geometry.target_alt_deg > 60 and down.geometry.moon_alt_deg < 0
    assert down.moon_rate == 0.0 and down.twilight_rate == 0.0 == full.twilight_rate
    assert full.dark_rate == pytest.approx(down.dark_rate, rel=1e-3)
    assert full.rate > 10.0 * down.rate, "clearly brighter"
    delta_mag = down.v_mag - full.v_mag
    assert delta_mag == pytest.approx(2.5 * math.log10(full.rate / down.rate))
    assert 2.0 < delta_mag < 5.0, delta_mag                           # K&S: a few mag at most
    assert 17.0 < full.v_mag < 18.5


def test_new_moon_is_the_dark_sky(camera):
    s = camera.settings
    for ra, dec in [near_moon(FULL, 20.0), (30.0, 19.5), (300.0, -10.0)]:
        sky = camera.sky_brightness(NEW, 60.0, ra, dec, *SITE)
        x = ks_airmass(90.0 - sky.geometry.target_alt_deg)
        dark = s["sky_e_per_s_per_px"] * x * 10 ** (-0.4 * s["sky_extinction_k"] * (x - 1.0))
        assert sky.rate == pytest.approx(dark, rel=1e-3) and sky.moon_rate == 0.0
    # Overhead: the dark sky is the setting itself.
    zenith = camera.sky_brightness(NEW, 0.0, *_zenith(NEW), *SITE)
    assert zenith.rate == pytest.approx(s["sky_e_per_s_per_px"], rel=1e-3)
    assert zenith.v_mag == pytest.approx(s["sky_dark_mag_arcsec2"], abs=1e-3)


def _zenith(unix):
    """J2000 (ra, dec) of the zenith at SITE (found by search on sky_geometry)."""
    best = None
    for ra in np.arange(0.0, 360.0, 2.0):
        g = sky_geometry(unix, ra, SITE[0], *SITE)
        if best is None or g.target_alt_deg > best[0]:
            best = (g.target_alt_deg, ra)
    ra, dec = best[1], SITE[0]
    for step in (1.0, 0.25, 0.05, 0.01):
        candidates = [(sky_geometry(unix, ra + i * step, dec + j * step, *SITE).target_alt_deg,
                       ra + i * step, dec + j * step) for i in (-1, 0, 1) for j in (-1, 0, 1)]
        _, ra, dec = max(candidates)
    return ra, dec


def test_sky_falls_as_the_moon_separation_grows_at_a_fixed_altitude(camera):
    # Full moon at 38 deg altitude; targets all at 60 +- 0.5 deg altitude, all round the sky.
    unix = parse_iso("2026-11-24T06:00:00")
    rows = []
    for ra in np.arange(0.0, 360.0, 3.0):
        for dec in np.arange(-30.0, 80.0, 1.0):
            g = sky_geometry(unix, ra, dec, *SITE)
            if abs(g.target_alt_deg - 60.0) < 0.5:
                rows.append((g.moon_sep_deg, ra, dec))
    rows.sort()
    assert rows[0][0] < 25 and rows[-1][0] > 80              # 60 - 38 and 180 - 60 - 38 deg
    picks = [min(rows, key=lambda r: abs(r[0] - want)) for want in (25, 40, 55, 70, 80)]
    rates = [camera.sky_brightness(unix, 60.0, ra, dec, *SITE).rate for _, ra, dec in picks]
    assert all(a > b for a, b in zip(rates, rates[1:])), list(zip([p[0] for p in picks], rates))
    assert rates[0] > 1.5 * rates[-1]


def test_twilight_rises_steeply_with_the_sun(camera):
    ra, dec = 30.0, 20.0                     # high in the evening sky, the new moon down
    rows = []
    for minutes in range(0, 100, 4):
        sky = camera.sky_brightness(EVENING + 60.0 * minutes, 0.0, ra, dec, *SITE)
        assert sky.moon_rate == 0.0
        rows.append((sky.geometry.sun_alt_deg, sky.rate, sky.twilight_rate, sky.dark_rate))
    assert rows[0][0] > -5.0 and rows[-1][0] < -20.0
    rates = [r[1] for r in rows]
    assert all(a > b for a, b in zip(rates, rates[1:]) if a > rows[-1][3] * 1.001)
    for sun_alt, rate, twilight, dark in rows:
        if sun_alt < -18.0:
            assert twilight == 0.0 and rate == dark
    # Steep: more than 2 per degree of sun altitude between -14 and -6 (about 2.75 = 1.1 mag/deg).
    def rate_at(h):
        return float(np.interp(h, [r[0] for r in rows][::-1], rates[::-1]))
    assert rate_at(-6.0) / rate_at(-10.0) > 2.0 ** 4
    assert rate_at(-10.0) / rate_at(-14.0) > 2.0
    assert rate_at(-6.0) > 100.0 * rate_at(-18.5)


def test_the_mean_over_the_exposure_follows_a_setting_sun(camera):
    ra, dec = 30.0, 20.0
    start = EVENING + 600.0
    long = camera.sky_brightness(start, 300.0, ra, dec, *SITE)
    first = camera.sky_brightness(start, 0.0, ra, dec, *SITE)
    last = camera.sky_brightness(start + 300.0, 0.0, ra, dec, *SITE)
    assert last.rate < long.rate < first.rate
    # Exponential in time: the mean lies above the rate at mid-exposure.
    assert long.rate > camera.sky_brightness(start + 150.0, 0.0, ra, dec, *SITE).rate


# ---------------------------------------------------------------------------
# Rendered frames


@pytest.mark.parametrize("case", ["full_moon", "moon_down", "twilight"])
def test_rendered_background_matches_the_model(case, tmp_path):
    ra, dec = near_moon(FULL, 20.0)
    start, exptime = {"full_moon": (FULL, 8.0), "moon_down": (NEW, 30.0),
                      "twilight": (EVENING + 1500.0, 10.0)}[case]
    data, header = expose(start, exptime, ra, dec, SITE_HEADER, tmp_path)
    cam = SimulatedCamera("model", SMALL)
    model = cam.sky_brightness(start_of(header), exptime, header["SIM-RA"], header["SIM-DEC"], *SITE)
    assert header["SIM-SKYR"] == pytest.approx(model.rate, abs=1e-3)
    assert header["SIM-SKYV"] == pytest.approx(model.v_mag, abs=1e-3)
    assert header["SIM-MOOS"] == pytest.approx(model.geometry.moon_sep_deg, abs=1e-3)
    assert header["SIM-SUNA"] == pytest.approx(model.geometry.sun_alt_deg, abs=1e-3)
    assert data.max() < SMALL.get("saturation_adu", 15000), "background must not saturate"
    measured, rms_e = sep_sky_rate(data, exptime)
    # Within noise: sep's global background is the median of its meshes' mode
    # estimates (2.5 median - 1.5 mean), each about twice as noisy as a mean,
    # so allow 10 standard errors of the frame's mean (0.1% of the moonless sky).
    per_pixel_e = math.sqrt(model.rate * exptime + 10.0 ** 2)
    assert rms_e == pytest.approx(per_pixel_e, rel=0.05)
    tolerance = 10.0 * per_pixel_e / math.sqrt(data.size) / exptime
    assert measured == pytest.approx(model.rate, abs=tolerance), (measured, model.rate)
    if case == "full_moon":
        assert model.rate > 10 * SMALL.get("sky_e_per_s_per_px", 20.0)


def test_full_moon_frame_is_brighter_than_the_same_pointing_with_the_moon_down(tmp_path):
    ra, dec = near_moon(FULL, 20.0)
    full, hdr_full = expose(FULL, 8.0, ra, dec, SITE_HEADER, tmp_path)
    down, hdr_down = expose(NEW, 8.0, ra, dec, SITE_HEADER, tmp_path)
    rate_full, _ = sep_sky_rate(full, 8.0)
    rate_down, _ = sep_sky_rate(down, 8.0)
    assert rate_full > 10 * rate_down
    assert 2.0 < 2.5 * math.log10(rate_full / rate_down) < 5.0
    assert hdr_down["SIM-SKYM"] == 0.0 and hdr_full["SIM-SKYM"] > 0.9 * hdr_full["SIM-SKYR"]
    assert hdr_down["SIM-MOOA"] < 0 < hdr_full["SIM-MOOA"]


def test_pointing_and_focus_frames_get_the_sky_too_and_darks_do_not(tmp_path):
    ra, dec = near_moon(FULL, 20.0)
    rates = {}
    for image_type in ("pointing", "focus", "dark"):
        data, header = expose(FULL, 5.0, ra, dec, SITE_HEADER, tmp_path, image_type)
        rates[image_type] = (np.median(data) - BIAS) * GAIN / 5.0
        assert ("SIM-SKYR" in header) == (image_type != "dark")
    assert rates["pointing"] == pytest.approx(rates["focus"], rel=0.02)
    assert rates["pointing"] > 300.0 and rates["dark"] < 1.0


def test_without_the_site_or_with_the_model_off_the_sky_is_constant(tmp_path):
    ra, dec = near_moon(FULL, 20.0)
    no_site = {"MOONSEP": 20.0, "MOONFRAC": 1.0, "RA-MNT": ra, "DEC-MNT": dec}
    for header, settings in [(no_site, {}), ({"LAT-OBS": SITE[0]}, {}), (SITE_HEADER, {"sky_model": False})]:
        data, hdr = expose(FULL, 10.0, ra, dec, header, tmp_path, **settings)
        assert "SIM-SKYR" not in hdr and "SIM-SUNA" not in hdr
        assert np.median(data) == pytest.approx(BIAS + 10.0 * (20.0 + DARK) / GAIN, abs=2)
    # No ELEV-OBS: sea level, hardly different.
    _, hdr = expose(FULL, 10.0, ra, dec, {k: SITE_HEADER[k] for k in ("LAT-OBS", "LONG-OBS")}, tmp_path)
    assert hdr["SIM-SKYR"] == pytest.approx(SimulatedCamera("m", SMALL).sky_brightness(
        start_of(hdr), 10.0, hdr["SIM-RA"], hdr["SIM-DEC"], SITE[0], SITE[1], 0.0).rate, abs=1e-3)


def test_render_takes_a_sky_rate_and_keeps_the_setting_otherwise(camera):
    plain = camera.render(10.0, 40.0, 10.0, "science", noise_seed=3)
    same = camera.render(10.0, 40.0, 10.0, "science", noise_seed=3, sky_e_per_s_per_px=None)
    assert np.array_equal(plain, same)
    bright = camera.render(10.0, 40.0, 10.0, "science", noise_seed=3, sky_e_per_s_per_px=500.0)
    assert np.median(bright) == pytest.approx(BIAS + 10.0 * (500.0 + DARK) / GAIN, abs=3)
    flat = camera.render(1.0, 40.0, 10.0, "flat", noise_seed=3, sky_e_per_s_per_px=500.0)
    assert np.median(flat) == pytest.approx(BIAS + (10000.0 + DARK) / GAIN, abs=5)


def test_conditions_and_settings_are_checked(camera):
    assert camera.conditions_from_header(SITE_HEADER, "science") == {"site": SITE}
    assert camera.conditions_from_header(SITE_HEADER, "flat") == {}
    assert camera.conditions_from_header(SITE_HEADER, "dark") == {}
    assert camera.conditions_from_header({"LONG-OBS": 10.0}, "science") == {}
    with pytest.raises(CameraError, match="LAT-OBS"):
        camera.conditions_from_header({"LAT-OBS": 95.0, "LONG-OBS": 0.0}, "science")
    with pytest.raises(CameraError, match="LONG-OBS"):
        camera.conditions_from_header({"LAT-OBS": 19.5, "LONG-OBS": "west"}, "focus")
    off = SimulatedCamera("off", {**SMALL, "sky_model": False})
    assert off.conditions_from_header(SITE_HEADER, "science") == {}
    default = SimulatedCamera("default", {"width": 64, "height": 64})      # the model is off by default
    assert default.settings["sky_model"] is False
    assert default.conditions_from_header(SITE_HEADER, "science") == {}
    for bad in ({"sky_model": 1}, {"sky_model": "yes"}, {"sky_dark_mag_arcsec2": 30.0},
                {"sky_dark_mag_arcsec2": None}, {"sky_extinction_k": -0.1}, {"sky_extinction_k": 3.0},
                {"sky_extinction_k": True}, {"sky_extinction_k": math.nan}):
        with pytest.raises(CameraError, match=next(iter(bad))):
            SimulatedCamera("bad", {**SMALL, **bad})


def test_the_model_is_cheap(camera):
    ra, dec = near_moon(FULL, 20.0)
    camera.sky_brightness(FULL, 120.0, ra, dec, *SITE)
    t = time.perf_counter()
    for _ in range(50):
        camera.sky_brightness(FULL, 120.0, ra, dec, *SITE)
    per_exposure_ms = (time.perf_counter() - t) / 50 * 1000.0
    assert per_exposure_ms < 5.0, per_exposure_ms        # about 0.1 ms; a full frame renders in ~300 ms

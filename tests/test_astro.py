"""observatory.astro against astropy/astroplan, offline."""
import math
import socket
import time
import warnings

import numpy as np
import pytest

from observatory.astro import (MAUNA_LOA, Ephemeris, Site, altaz, angular_separation_deg, dither_offset,
                               hadec_from_altaz, lst_deg, night_date)
from observatory.clock import parse_iso

import astropy.units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord, get_body, get_sun
from astropy.time import Time

NIGHT = parse_iso("2026-11-24T10:00")  # Mauna Loa, mid-dark, full moon


@pytest.fixture(scope="module")
def eph():
    return Ephemeris(MAUNA_LOA)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("astropy tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _astropy_altaz(coord, unix):
    t = Time(unix, format="unix")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stale-IERS notices for future dates
        return coord.transform_to(AltAz(obstime=t, location=MAUNA_LOA.earth_location(), pressure=0 * u.hPa))


def test_astropy_is_configured_offline():
    from astropy.utils import data, iers
    assert iers.conf.auto_max_age is None
    assert iers.conf.auto_download is False
    assert iers.conf.iers_degraded_accuracy == "warn"
    assert data.conf.allow_internet is False


@pytest.mark.parametrize("when", ["2026-11-24T10:00", "2028-11-24T10:00"])
def test_sun_altitude_offline_now_and_two_years_ahead(no_network, when):
    eph = Ephemeris(MAUNA_LOA)
    unix = parse_iso(when)
    alt = eph.sun_alt(unix)
    assert -90 <= alt < -18  # 00:00 local: deep night
    start, end = eph.dark_interval(unix)
    assert start < unix < end
    assert 9 * 3600 < end - start < 11.5 * 3600


def test_site_earth_location():
    loc = MAUNA_LOA.earth_location()
    assert isinstance(loc, EarthLocation)
    assert loc.lat.deg == pytest.approx(19.536)
    assert loc.lon.deg == pytest.approx(-155.576)
    assert loc.height.to_value(u.m) == pytest.approx(3400.0)
    assert Site.from_dict({"name": "x", "latitude_deg": 1, "longitude_deg": 2, "elevation_m": 3}) \
        == Site("x", 1.0, 2.0, 3.0)


def test_lst_matches_astropy_mean_sidereal_time():
    rng = np.random.default_rng(7)
    unix = parse_iso("2026-01-01T00:00") + rng.uniform(0, 3 * 365 * 86400, 50)
    t = Time(unix, format="unix")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = t.sidereal_time("mean", MAUNA_LOA.longitude_deg * u.deg).deg
        dut1 = t.get_delta_ut1_utc().to_value(u.s)

    def arcsec(a, b):
        return np.abs((a - b + 180) % 360 - 180) * 3600

    # Given UT1-UTC the formula is exact; without it the error is 15"/s of |UT1-UTC| < 0.9 s.
    assert arcsec(lst_deg(unix, MAUNA_LOA.longitude_deg, dut1_s=dut1), expected).max() < 0.05
    assert arcsec(lst_deg(unix, MAUNA_LOA.longitude_deg), expected).max() < 15 * np.abs(dut1).max() + 0.05
    assert arcsec(lst_deg(unix[:1], MAUNA_LOA.longitude_deg), expected[:1]).max() < 4
    scalar = lst_deg(float(unix[0]), MAUNA_LOA.longitude_deg)
    assert isinstance(scalar, float) and 0 <= scalar < 360


def test_altaz_matches_astropy_for_random_fields_and_times():
    rng = np.random.default_rng(3)
    n, nt = 300, 6
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    times = parse_iso("2026-06-01T00:00") + rng.uniform(0, 2 * 365 * 86400, nt)

    alt, az = altaz(ra, dec, times, MAUNA_LOA)
    assert alt.shape == az.shape == (n, nt)
    ref = _astropy_altaz(SkyCoord(ra[:, None] * u.deg, dec[:, None] * u.deg), times[None, :])

    # Precessed to date; the rest (nutation, aberration) stays below ~0.01 deg.
    assert np.abs(alt - ref.alt.deg).max() < 0.02
    away_from_zenith = alt < 85
    daz = np.abs((az - ref.az.deg + 180) % 360 - 180) * np.cos(np.radians(alt))
    assert daz[away_from_zenith].max() < 0.02


def test_altaz_broadcasting_shapes():
    ra, dec = np.array([10.0, 20.0, 30.0]), np.array([0.0, 10.0, 20.0])
    times = NIGHT + np.array([0.0, 600.0])
    assert altaz(ra, dec, NIGHT, MAUNA_LOA)[0].shape == (3,)
    grid_alt, _ = altaz(ra, dec, times, MAUNA_LOA)
    assert grid_alt.shape == (3, 2)
    pair_alt, _ = altaz(ra[:2], dec[:2], times, MAUNA_LOA, elementwise=True)
    assert pair_alt.shape == (2,)
    assert pair_alt == pytest.approx([grid_alt[0, 0], grid_alt[1, 1]])
    assert np.ndim(altaz(10.0, 0.0, NIGHT, MAUNA_LOA)[0]) == 0


def test_azimuth_runs_north_through_east():
    lst = lst_deg(NIGHT, MAUNA_LOA.longitude_deg)
    # Mean place of date ~ J2000 + 0.37 deg here; the checks have margin for it.
    _, az_south = altaz(lst, 0.0, NIGHT, MAUNA_LOA)
    _, az_north = altaz(lst, 60.0, NIGHT, MAUNA_LOA)
    _, az_rising = altaz(lst + 60, 0.0, NIGHT, MAUNA_LOA)  # transits in 4 h: in the east
    _, az_setting = altaz(lst - 60, 0.0, NIGHT, MAUNA_LOA)
    assert abs(az_south - 180) < 2
    assert min(az_north, 360 - az_north) < 2
    assert 45 < az_rising < 135
    assert 225 < az_setting < 315


def test_angular_separation():
    assert angular_separation_deg(0, 0, 90, 0) == pytest.approx(90)
    assert angular_separation_deg(10, 89, 190, 89) == pytest.approx(2)
    assert angular_separation_deg(0, 0, 180, 0) == pytest.approx(180)


def test_sun_alt_matches_get_sun(eph):
    unix = NIGHT + np.array([-6, -5.2, -4.5, 0, 4.9, 5.3, 7, 12]) * 3600.0
    ref = _astropy_altaz(get_sun(Time(unix, format="unix")), unix).alt.deg
    assert np.abs(eph.sun_alt(unix) - ref).max() < 0.05
    for u_, r in zip(unix, ref):
        assert eph.sun_alt(float(u_)) == pytest.approx(r, abs=0.05)


def test_sun_azimuth_matches_get_sun_across_north_and_south(eph):
    # Twilight in the evening (west) and morning (east), and noon (crossing south).
    # Near the nadir, at midnight, the interpolated azimuth is off by about 1.4 deg.
    unix = NIGHT + np.array([-6.5, -5.2, 5.3, 6.5, 11.9, 12.1]) * 3600.0
    ref = _astropy_altaz(get_sun(Time(unix, format="unix")), unix)
    got = eph.sun_az(unix)
    assert ((got >= 0) & (got < 360)).all()
    assert np.abs((got - ref.az.deg + 180) % 360 - 180).max() < 0.1
    assert eph.sun_az(float(unix[0])) == pytest.approx(got[0])


def test_hadec_from_altaz_inverts_altaz():
    lat = MAUNA_LOA.latitude_deg
    lst = lst_deg(NIGHT, MAUNA_LOA.longitude_deg)
    rng = np.random.default_rng(7)
    for alt_, az_ in zip(rng.uniform(5, 89, 40), rng.uniform(0, 360, 40)):
        ha, dec = hadec_from_altaz(alt_, az_, lat)
        assert -180 < ha <= 180
        # altaz() precesses from J2000 to the date: compare where the precession is small.
        alt2, az2 = altaz((lst - ha) % 360, dec, NIGHT, MAUNA_LOA)
        assert alt2 == pytest.approx(alt_, abs=0.5)
        assert abs((az2 - az_ + 180) % 360 - 180) * math.cos(math.radians(alt_)) < 0.5
    assert hadec_from_altaz(90.0, 0.0, lat) == pytest.approx((0.0, lat), abs=1e-9)     # the zenith
    assert hadec_from_altaz(30.0, 180.0, lat) == pytest.approx((0.0, lat - 60.0))       # south, on the meridian
    assert hadec_from_altaz(10.0, 90.0, lat)[0] < 0                                     # east: rising


def test_dither_offset_walks_the_dice_nine_pattern():
    offsets = [dither_offset(i, 2.0) for i in range(10)]
    assert offsets[0] == (0.0, 0.0) and offsets[9] == (0.0, 0.0)
    assert len(set(offsets[:9])) == 9
    assert all(max(abs(e), abs(n)) == 2.0 for e, n in offsets[1:9])


def test_moon_matches_astropy_and_astroplan(eph):
    from astroplan import Observer
    unix = NIGHT + np.array([-5, -2, 0, 3, 5]) * 3600.0
    t = Time(unix, format="unix")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        moon = get_body("moon", t, MAUNA_LOA.earth_location())
        illumination = Observer(location=MAUNA_LOA.earth_location()).moon_illumination(t)
    ra, dec = eph.moon_radec(unix)
    assert angular_separation_deg(ra, dec, moon.ra.deg, moon.dec.deg).max() < 0.05
    assert np.abs(eph.moon_alt(unix) - _astropy_altaz(moon, unix).alt.deg).max() < 0.05
    assert np.abs(eph.moon_illumination(unix) - illumination).max() < 0.01
    assert eph.moon_illumination(NIGHT) > 0.98  # full moon on 2026-11-24
    assert isinstance(eph.moon_radec(NIGHT)[0], float)


@pytest.fixture(scope="module")
def astroplan_twilights():
    from astroplan import Observer
    observer = Observer(location=MAUNA_LOA.earth_location())
    t = Time(parse_iso("2026-11-24T00:00"), format="unix")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evening = observer.twilight_evening_astronomical(t, which="next").unix
        morning = observer.twilight_morning_astronomical(t, which="next").unix
    return evening, morning


@pytest.mark.parametrize("asked", ["2026-11-24T00:00",   # afternoon before: the next night
                                   "2026-11-24T06:00",   # early in the night
                                   "2026-11-24T15:00"])  # just before dawn
def test_dark_interval_matches_astroplan(eph, astroplan_twilights, asked):
    evening, morning = astroplan_twilights
    start, end = eph.dark_interval(parse_iso(asked), -18.0)
    assert start == pytest.approx(evening, abs=60)
    assert end == pytest.approx(morning, abs=60)


def test_dark_interval_boundaries_are_sharp(eph):
    start, end = eph.dark_interval(NIGHT, -18.0)
    exact = eph.sun_alt_exact(np.array([start - 2, start + 2, end - 2, end + 2]))
    assert exact[0] > -18 > exact[1]
    assert exact[2] < -18 < exact[3]
    # Asked after dawn: the following night.
    next_start, next_end = eph.dark_interval(end + 60, -18.0)
    assert 12 * 3600 < next_start - end < 15 * 3600
    # Civil twilight is a wider interval around the same night.
    civil = eph.dark_interval(NIGHT, -6.0)
    assert civil[0] < start and civil[1] > end


def test_night_date():
    lon = MAUNA_LOA.longitude_deg  # HST-ish: local mean time is UTC - 10.37 h
    assert night_date(parse_iso("2026-11-24T05:00"), lon) == "2026-11-23"
    assert night_date(parse_iso("2026-11-24T15:30"), lon) == "2026-11-23"
    assert night_date(parse_iso("2026-11-24T23:00"), lon) == "2026-11-24"  # 12:38 local, after noon
    assert night_date(parse_iso("2026-11-24T21:00"), lon) == "2026-11-23"  # 10:38 local
    assert night_date(parse_iso("2026-11-24T23:00"), 0.0) == "2026-11-24"
    assert night_date(parse_iso("2026-11-25T01:00"), 0.0) == "2026-11-24"
    assert Ephemeris(MAUNA_LOA).night_date(NIGHT) == "2026-11-23"


def test_cached_scalar_is_fast_and_night_build_is_quick(eph):
    eph.sun_alt(NIGHT)
    n = 2000
    t0 = time.perf_counter()
    for i in range(n):
        eph.sun_alt(NIGHT + i)
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 1e-4

    fresh = Ephemeris(MAUNA_LOA)
    t0 = time.perf_counter()
    fresh.sun_alt(NIGHT + 30 * 86400)  # one night's grid: sun and moon
    assert time.perf_counter() - t0 < 1.0


def test_array_query_spanning_several_days(eph):
    unix = NIGHT + np.linspace(-0.8, 1.2, 40) * 86400  # three chunks
    values = eph.sun_alt(unix)
    assert values.shape == (40,)
    assert values == pytest.approx([eph.sun_alt(float(x)) for x in unix])

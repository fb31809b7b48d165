"""The scheduler's vetoes against astroplan's constraints (an independent implementation).

What is compared, for 330 fields (300 uniform on the sky plus 30 within 25
degrees of the moon, fixed seed) at 10 times from 20 minutes before dusk to
20 minutes after dawn at Mauna Loa on the night of 2026-11-24 (full moon):

* ``below_horizon`` (plain ``min_altitude_deg=30``, no obstruction) against
  ``AltitudeConstraint(min=30 deg)``. Our veto also checks the altitude at
  the END of the set (``exptime * exp_set_size + set_overhead_s`` = 1320 s for
  every field here), so the default Scheduler is compared with astroplan
  evaluated at both the start and the end (free = free at both), and the
  ``check_set_end=False`` variant with astroplan at the start only.
  Fields within 0.1 deg of 30 deg (at a time that is checked) are left out.
* ``moon`` (``moon_separation_deg=15``, at the decision time) against
  ``MoonSeparationConstraint(min=15 deg)``; fields within 0.1 deg of 15 deg
  are left out.
* ``sun_up`` (``observe_horizon_deg=-18``, at the decision time) against
  ``AtNightConstraint.twilight_astronomical()``; times within 60 s of our
  dusk or dawn would be left out (none of the chosen times is).

Both sides use geometric (no refraction) altitudes; astroplan adds nutation
and aberration (< 0.01 deg), our closed formulas do not.
"""
import numpy as np
import pytest

from observatory.astro import MAUNA_LOA, Ephemeris, angular_separation_deg, altaz  # configures astropy offline
from observatory.clock import parse_iso
from observatory.scheduler import Observation, Scheduler

import astropy.units as u  # noqa: E402
from astropy.coordinates import EarthLocation, SkyCoord  # noqa: E402
from astropy.time import Time  # noqa: E402
from astroplan import (AltitudeConstraint, AtNightConstraint, MoonSeparationConstraint,  # noqa: E402
                       Observer)

# astroplan's MoonSeparationConstraint takes moon.separation(targets) in the moon's
# topocentric GCRS frame, on purpose (see its source); astropy warns about it.
pytestmark = pytest.mark.filterwarnings("ignore::astropy.coordinates.NonRotationTransformationWarning")

ALT_TOL_DEG = 0.1
MOON_TOL_DEG = 0.1
TWILIGHT_TOL_S = 60.0
SET_S = 120.0 * 10 + 120.0  # default exptime * exp_set_size + set_overhead_s


@pytest.fixture(scope="module")
def setup():
    eph = Ephemeris(MAUNA_LOA)
    dusk, dawn = eph.dark_interval(parse_iso("2026-11-24T06:00"))
    times = np.linspace(dusk - 1200.0, dawn + 1200.0, 10)
    rng = np.random.default_rng(20261124)
    ra = rng.uniform(0.0, 360.0, 300)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, 300)))
    moon_ra, moon_dec = eph.moon_radec(float(times[5]))
    near = SkyCoord(moon_ra * u.deg, moon_dec * u.deg).directional_offset_by(
        rng.uniform(0, 360, 30) * u.deg, rng.uniform(0, 25, 30) * u.deg)
    ra = np.concatenate([ra, near.ra.deg])
    dec = np.concatenate([dec, near.dec.deg])
    observations = [Observation(f"f{i}", float(r), float(d)) for i, (r, d) in enumerate(zip(ra, dec))]

    location = EarthLocation.from_geodetic(lon=MAUNA_LOA.longitude_deg * u.deg, lat=MAUNA_LOA.latitude_deg * u.deg,
                                           height=MAUNA_LOA.elevation_m * u.m)
    observer = Observer(location=location, name="Mauna Loa")  # pressure 0: no refraction
    targets = SkyCoord(ra * u.deg, dec * u.deg)
    both = Time(np.concatenate([times, times + SET_S]), format="unix", scale="utc")
    start = Time(times, format="unix", scale="utc")
    alt_ok = AltitudeConstraint(min=30 * u.deg)(observer, targets, times=both, grid_times_targets=True)
    moon_ok = MoonSeparationConstraint(min=15 * u.deg)(observer, targets, times=start, grid_times_targets=True)
    night = AtNightConstraint.twilight_astronomical()(observer, targets[:1], times=start,
                                                      grid_times_targets=True)[0]
    return dict(eph=eph, dusk=dusk, dawn=dawn, times=times, ra=ra, dec=dec, observations=observations,
                alt_ok_start=np.asarray(alt_ok[:, :10]), alt_ok_end=np.asarray(alt_ok[:, 10:]),
                moon_ok=np.asarray(moon_ok), night=np.asarray(night))


def _vetoes(scheduler, t):
    d = scheduler.decide(float(t))
    by_name = {c.name: set(c.vetoes) for c in d.candidates}
    return [by_name[o.name] for o in scheduler.observations]


@pytest.mark.parametrize("check_set_end", [True, False], ids=["start_and_end", "start_only"])
def test_below_horizon_agrees_with_astroplan_altitude_constraint(setup, check_set_end):
    s = setup
    sched = Scheduler(s["observations"], s["eph"], min_altitude_deg=30.0, check_set_end=check_set_end)
    compared = disagreements = free_seen = 0
    for k, t in enumerate(s["times"]):
        vetoes = _vetoes(sched, t)
        ours_free = np.array(["below_horizon" not in v for v in vetoes])
        alt0, _ = altaz(s["ra"], s["dec"], t, MAUNA_LOA)
        astroplan_free = s["alt_ok_start"][:, k].copy()
        near = np.abs(alt0 - 30.0) < ALT_TOL_DEG
        if check_set_end:
            alt1, _ = altaz(s["ra"], s["dec"], t + SET_S, MAUNA_LOA)
            astroplan_free &= s["alt_ok_end"][:, k]
            near |= np.abs(alt1 - 30.0) < ALT_TOL_DEG
        mismatch = (ours_free != astroplan_free) & ~near
        disagreements += int(mismatch.sum())
        compared += int((~near).sum())
        free_seen += int((ours_free & ~near).sum())
        assert not mismatch.any(), [s["observations"][i].name for i in np.flatnonzero(mismatch)]
    assert compared >= 0.98 * len(s["observations"]) * len(s["times"])  # few left out at the boundary
    assert 0.1 * compared < free_seen < 0.9 * compared  # both outcomes are well represented
    assert disagreements == 0


def test_moon_veto_agrees_with_astroplan_moon_separation_constraint(setup):
    s = setup
    sched = Scheduler(s["observations"], s["eph"])
    vetoed_seen = compared = 0
    for k, t in enumerate(s["times"]):
        vetoes = _vetoes(sched, t)
        ours_free = np.array(["moon" not in v for v in vetoes])
        moon_ra, moon_dec = s["eph"].moon_radec(float(t))
        sep = angular_separation_deg(s["ra"], s["dec"], moon_ra, moon_dec)
        near = np.abs(sep - 15.0) < MOON_TOL_DEG
        mismatch = (ours_free != s["moon_ok"][:, k]) & ~near
        assert not mismatch.any(), [(s["observations"][i].name, sep[i]) for i in np.flatnonzero(mismatch)]
        vetoed_seen += int((~ours_free & ~near).sum())
        compared += int((~near).sum())
    assert vetoed_seen >= 50  # the fields placed near the moon are exercised
    assert compared >= 0.98 * len(s["observations"]) * len(s["times"])


def test_sun_up_agrees_with_astroplan_astronomical_twilight(setup):
    s = setup
    sched = Scheduler(s["observations"], s["eph"])
    outcomes = set()
    compared = 0
    for k, t in enumerate(s["times"]):
        if min(abs(t - s["dusk"]), abs(t - s["dawn"])) < TWILIGHT_TOL_S:
            continue
        vetoes = _vetoes(sched, t)
        ours_up = {"sun_up" in v for v in vetoes}
        assert len(ours_up) == 1  # the same for every field
        (up,) = ours_up
        assert up == (not s["night"][k]), f"time {t}: ours sun_up={up}, astroplan night={s['night'][k]}"
        outcomes.add(up)
        compared += 1
    assert compared == len(s["times"]) and outcomes == {True, False}


def test_twilight_boundaries_agree_with_astroplan(setup):
    """Our dusk and dawn (refined crossings) against astroplan's own twilight times."""
    s = setup
    location = EarthLocation.from_geodetic(lon=MAUNA_LOA.longitude_deg * u.deg, lat=MAUNA_LOA.latitude_deg * u.deg,
                                           height=MAUNA_LOA.elevation_m * u.m)
    observer = Observer(location=location)
    mid = Time(0.5 * (s["dusk"] + s["dawn"]), format="unix", scale="utc")
    dusk = observer.twilight_evening_astronomical(mid, which="previous", n_grid_points=300).unix
    dawn = observer.twilight_morning_astronomical(mid, which="next", n_grid_points=300).unix
    assert abs(dusk - s["dusk"]) < TWILIGHT_TOL_S
    assert abs(dawn - s["dawn"]) < TWILIGHT_TOL_S

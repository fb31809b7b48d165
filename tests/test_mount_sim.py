"""Simulated mount: motion as a function of simulated time, limits, parking,
guiding and persistence across a restart of the controlling process."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

# The repository root is not installed in the venv; make its packages importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from observatory.clock import SimClock, parse_iso  # noqa: E402
from simulators.mount import (  # noqa: E402
    SIDEREAL_RATE_DEG_S, MountError, SimulatedMount, alt_az, gmst_deg, local_sidereal_deg)

START = parse_iso("2026-11-24T03:00:00")  # 17:00 local at Mauna Loa
LAT, LON = 19.536, -155.576
ARCSEC = 1.0 / 3600.0


@pytest.fixture
def clock(wall):
    # speed 1 and wall origin 0: simulated now = START + wall.t
    return SimClock(start_unix=START, speed=1.0, wall_origin=0.0)


def make_mount(clock, state_file=None, **settings):
    return SimulatedMount(settings, clock, LAT, LON, state_file=state_file)


def sky_target(clock, ha_deg, dec_deg):
    """RA/Dec of the point at ``ha_deg``/``dec_deg`` now."""
    return (local_sidereal_deg(clock.now(), LON) - ha_deg) % 360.0, dec_deg


def ang_diff(a, b):
    return (a - b + 180.0) % 360.0 - 180.0


def unparked_tracking_at(clock, wall, mount, ha_deg, dec_deg):
    mount.unpark()
    ra, dec = sky_target(clock, ha_deg, dec_deg)
    wall.t += mount.slew_to(ra, dec) + 1
    assert mount.status()["state"] == "tracking"
    return ra, dec


# -- astronomy helpers ----------------------------------------------------------

def test_gmst_matches_reference_values():
    # Meeus, Astronomical Algorithms, example 12.a: 1987-04-10 0h UT -> 13h10m46.3668s
    assert gmst_deg(parse_iso("1987-04-10T00:00:00")) == pytest.approx(197.693195, abs=1e-5)
    assert gmst_deg(parse_iso("2000-01-01T12:00:00")) == pytest.approx(280.46061837, abs=1e-6)
    # One solar day advances sidereal time by about 3m56s (0.9856 deg).
    t = parse_iso("2026-11-24T03:00:00")
    assert ang_diff(gmst_deg(t + 86400), gmst_deg(t)) == pytest.approx(0.985647, abs=1e-5)


def test_alt_az_known_directions():
    assert alt_az(0.0, 90.0, LAT) == pytest.approx((LAT, 0.0), abs=1e-9)       # the pole
    assert alt_az(0.0, LAT, LAT)[0] == pytest.approx(90.0)                    # zenith
    assert alt_az(90.0, 0.0, 0.0) == pytest.approx((0.0, 270.0), abs=1e-9)     # west horizon
    assert alt_az(-90.0, 0.0, 0.0) == pytest.approx((0.0, 90.0), abs=1e-9)     # east horizon
    alt, az = alt_az(0.0, LAT - 30.0, LAT)
    assert alt == pytest.approx(60.0) and az == pytest.approx(180.0)


# -- states and slews ---------------------------------------------------------------

def test_starts_parked_at_the_pole_and_connects(clock):
    mount = make_mount(clock)
    info = mount.connect()
    assert info["model"] and info["firmware"]
    assert info["site"] == {"latitude_deg": LAT, "longitude_deg": LON}
    st = mount.status()
    assert st["state"] == "parked" and st["parked"] and not st["tracking"]
    assert st["dec_deg"] == 90.0 and st["ha_deg"] == 0.0
    assert st["alt_deg"] == pytest.approx(LAT)
    assert st["slew_remaining_s"] == 0.0
    assert st["target_ra_deg"] is None and st["target_dec_deg"] is None


def test_southern_site_parks_at_south_pole(clock):
    mount = SimulatedMount({}, clock, -30.0, 70.0)
    assert mount.status()["dec_deg"] == -90.0


def test_unknown_setting_is_rejected(clock):
    with pytest.raises(ValueError, match="slew_rate"):
        make_mount(clock, slew_rat_deg_s=2.0)


def test_slew_duration_is_longest_axis_over_rate_plus_settle(clock, wall):
    mount = make_mount(clock)
    mount.unpark()
    # From the pole (HA 0, Dec 90): RA axis moves 30 deg, Dec axis 50 deg.
    ra, dec = sky_target(clock, ha_deg=30.0, dec_deg=40.0)
    duration = mount.slew_to(ra, dec)
    assert duration == pytest.approx(50.0 / 3.0 + 2.0)
    st = mount.status()
    assert st["state"] == "slewing" and not st["tracking"]
    assert (st["target_ra_deg"], st["target_dec_deg"]) == pytest.approx((ra, dec))
    assert st["slew_remaining_s"] == pytest.approx(duration)

    wall.t += duration - 0.5
    assert mount.status()["state"] == "slewing"  # arrived, still settling
    wall.t += 0.5
    st = mount.status()
    assert st["state"] == "tracking" and st["tracking"]
    assert st["ra_deg"] == pytest.approx(ra, abs=1e-9)
    assert st["dec_deg"] == pytest.approx(dec, abs=1e-9)
    assert st["slew_remaining_s"] == 0.0


def test_slew_between_targets_limited_by_ra_axis(clock, wall):
    mount = make_mount(clock, slew_rate_deg_s=2.0, settle_time_s=0.0)
    ra0, dec0 = unparked_tracking_at(clock, wall, mount, 50.0, 20.0)
    # West to east across the meridian: 100 deg in RA, 10 deg in Dec, and
    # across RA 0/360 (the axis must not go 260 deg the other way round).
    target_ra, target_dec = (ra0 + 100.0) % 360.0, dec0 + 10.0
    assert target_ra < ra0
    assert mount.slew_to(target_ra, target_dec) == pytest.approx(50.0)
    wall.t += 50.0
    st = mount.status()
    assert st["state"] == "tracking"
    assert ang_diff(st["ra_deg"], target_ra) == pytest.approx(0.0, abs=1e-9)


def test_position_part_way_through_a_slew(clock, wall):
    mount = make_mount(clock)
    ra0, dec0 = unparked_tracking_at(clock, wall, mount, -10.0, 10.0)
    ra1, dec1 = (ra0 + 60.0) % 360.0, 30.0    # RA axis needs 20 s, Dec axis 6.67 s
    mount.slew_to(ra1, dec1)
    wall.t += 10.0
    st = mount.status()
    assert st["state"] == "slewing"
    # Axes move independently: Dec has arrived, RA is half-way.
    assert st["dec_deg"] == pytest.approx(dec1)
    assert ang_diff(st["ra_deg"], ra0) == pytest.approx(30.0, abs=1e-9)
    assert 0.0 < ang_diff(st["ra_deg"], ra0) < 60.0
    assert st["slew_remaining_s"] == pytest.approx(12.0)
    wall.t += 5.0
    st = mount.status()
    assert 0.0 < ang_diff(st["ra_deg"], ra0) < 60.0
    assert min(dec0, dec1) <= st["dec_deg"] <= max(dec0, dec1)


def test_tracking_keeps_ra_fixed_and_ha_grows(clock, wall):
    mount = make_mount(clock)
    ra, dec = unparked_tracking_at(clock, wall, mount, -40.0, 20.0)
    before = mount.status()
    wall.t += 3 * 3600.0
    after = mount.status()
    assert after["state"] == "tracking"
    assert after["ra_deg"] == pytest.approx(ra, abs=1e-9)
    assert after["dec_deg"] == pytest.approx(dec, abs=1e-9)
    assert after["ha_deg"] - before["ha_deg"] == pytest.approx(3 * 3600.0 * SIDEREAL_RATE_DEG_S, abs=1e-6)
    # It crossed the meridian: east of it before, west after.
    assert before["pier_side"] == "west" and after["pier_side"] == "east"


def test_stopped_keeps_ha_fixed_and_ra_drifts(clock, wall):
    mount = make_mount(clock)
    unparked_tracking_at(clock, wall, mount, 15.0, 5.0)
    mount.set_tracking(False)
    before = mount.status()
    assert before["state"] == "stopped" and not before["tracking"]
    wall.t += 3600.0
    after = mount.status()
    assert after["ha_deg"] == pytest.approx(before["ha_deg"], abs=1e-9)
    # RA = LST - HA: with HA fixed, RA advances with sidereal time.
    assert ang_diff(after["ra_deg"], before["ra_deg"]) == pytest.approx(3600.0 * SIDEREAL_RATE_DEG_S, abs=1e-6)
    mount.set_tracking(True)
    ra = mount.status()["ra_deg"]
    wall.t += 600.0
    assert mount.status()["ra_deg"] == pytest.approx(ra, abs=1e-9)


def test_stop_halts_a_slew_where_it_is(clock, wall):
    mount = make_mount(clock)
    unparked_tracking_at(clock, wall, mount, -10.0, 10.0)
    ra, dec = sky_target(clock, 30.0, 50.0)
    mount.slew_to(ra, dec)
    wall.t += 5.0
    mid = mount.status()
    mount.stop()
    wall.t += 600.0
    st = mount.status()
    assert st["state"] == "stopped" and not st["tracking"]
    assert st["ha_deg"] == pytest.approx(mid["ha_deg"], abs=1e-9)
    assert st["dec_deg"] == pytest.approx(mid["dec_deg"], abs=1e-9)


def test_refuses_targets_below_altitude_limit(clock):
    mount = make_mount(clock)
    mount.unpark()
    ra, dec = sky_target(clock, ha_deg=85.0, dec_deg=-10.0)   # low in the west
    expected_alt, _ = alt_az(85.0, -10.0, LAT)
    assert expected_alt < 10.0
    with pytest.raises(MountError) as info:
        mount.slew_to(ra, dec)
    text = str(info.value)
    assert f"RA {ra:.3f}" in text and "Dec -10.000" in text
    assert f"altitude {expected_alt:.1f}" in text and "limit of 10.0" in text
    assert mount.status()["state"] == "stopped"   # nothing moved

    strict = make_mount(clock, altitude_limit_deg=60.0)
    strict.unpark()
    with pytest.raises(MountError, match="below the limit of 60.0"):
        strict.slew_to(*sky_target(clock, 0.0, LAT - 40.0))        # altitude 50


def test_refuses_slew_while_parked(clock):
    mount = make_mount(clock)
    with pytest.raises(MountError, match="parked"):
        mount.slew_to(*sky_target(clock, 0.0, 20.0))


def test_park_is_idempotent(clock, wall):
    mount = make_mount(clock)
    unparked_tracking_at(clock, wall, mount, 20.0, 0.0)
    duration = mount.park()
    # From HA 20 Dec 0 to HA 0 Dec 90: Dec axis dominates.
    assert duration == pytest.approx(90.0 / 3.0 + 2.0, abs=1e-6)
    st = mount.status()
    assert st["state"] == "parking" and not st["tracking"] and not st["parked"]
    wall.t += 10.0
    assert mount.park() == pytest.approx(duration - 10.0)   # same park, not restarted
    with pytest.raises(MountError, match="parking"):
        mount.slew_to(*sky_target(clock, 0.0, 20.0))
    wall.t += duration
    st = mount.status()
    assert st["state"] == "parked" and st["parked"] and not st["tracking"]
    assert (st["ha_deg"], st["dec_deg"]) == pytest.approx((0.0, 90.0))
    assert mount.park() == 0.0
    mount.stop()                                                # harmless when parked
    assert mount.status()["state"] == "parked"
    mount.unpark()
    assert mount.status()["state"] == "stopped"


def test_custom_park_position(clock, wall):
    mount = make_mount(clock, park_ha_deg=-90.0, park_dec_deg=0.0)
    # A fresh mount starts at its park position.
    st = mount.status()
    assert (st["ha_deg"], st["dec_deg"]) == pytest.approx((-90.0, 0.0))


def test_home_ends_stopped_at_home(clock, wall):
    mount = make_mount(clock, home_ha_deg=0.0, home_dec_deg=60.0)
    unparked_tracking_at(clock, wall, mount, -30.0, 10.0)
    duration = mount.home()
    assert duration == pytest.approx(50.0 / 3.0 + 2.0, abs=1e-6)
    assert mount.status()["state"] == "homing"
    wall.t += duration
    st = mount.status()
    assert st["state"] == "stopped"
    assert (st["ha_deg"], st["dec_deg"]) == pytest.approx((0.0, 60.0), abs=1e-9)
    mount.park()
    wall.t += 100.0
    with pytest.raises(MountError, match="parked"):
        mount.home()


# -- tracking errors and guiding ------------------------------------------------------

def test_guide_pulses_move_by_expected_arcsec(clock, wall):
    mount = make_mount(clock)
    unparked_tracking_at(clock, wall, mount, -20.0, 30.0)
    before = mount.status()
    mount.guide(1000.0, -2000.0)
    after = mount.status()
    step = 0.5 * 15.041067 * ARCSEC   # per second of pulse at 0.5 x sidereal
    assert ang_diff(after["ra_deg"], before["ra_deg"]) == pytest.approx(step, rel=1e-6)
    assert after["dec_deg"] - before["dec_deg"] == pytest.approx(-2.0 * step, rel=1e-6)


def test_guide_corrects_drift(clock, wall):
    mount = make_mount(clock, drift_ra_arcsec_per_min=6.0, drift_dec_arcsec_per_min=-3.0)
    ra, dec = unparked_tracking_at(clock, wall, mount, -20.0, 30.0)
    start = mount.status()
    wall.t += 600.0
    drifted = mount.status()
    assert ang_diff(drifted["ra_deg"], start["ra_deg"]) / ARCSEC == pytest.approx(60.0)
    assert (drifted["dec_deg"] - start["dec_deg"]) / ARCSEC == pytest.approx(-30.0)
    ms_per_arcsec = 1000.0 / (0.5 * SIDEREAL_RATE_DEG_S * 3600.0)
    mount.guide(-60.0 * ms_per_arcsec, 30.0 * ms_per_arcsec)
    corrected = mount.status()
    assert ang_diff(corrected["ra_deg"], start["ra_deg"]) / ARCSEC == pytest.approx(0.0, abs=1e-6)
    assert (corrected["dec_deg"] - start["dec_deg"]) / ARCSEC == pytest.approx(0.0, abs=1e-6)


def test_guide_needs_tracking(clock):
    mount = make_mount(clock)
    with pytest.raises(MountError, match="guiding needs tracking"):
        mount.guide(100.0, 0.0)


# -- persistence ------------------------------------------------------------------

def test_state_survives_reconstruction_mid_slew(clock, wall, tmp_path):
    state_file = tmp_path / "mount" / "state.json"
    mount = make_mount(clock, state_file=state_file)
    assert state_file.exists()
    mount.unpark()
    ra, dec = sky_target(clock, 30.0, 40.0)
    duration = mount.slew_to(ra, dec)
    wall.t += duration / 2
    mid = mount.status()
    assert mid["state"] == "slewing"

    reborn = make_mount(clock, state_file=state_file)
    assert reborn.status() == mid
    wall.t += duration
    st = reborn.status()
    assert st["state"] == "tracking"
    assert (st["ra_deg"], st["dec_deg"]) == pytest.approx((ra, dec), abs=1e-9)
    # No temporary files are left behind by the atomic writes.
    assert sorted(p.name for p in state_file.parent.iterdir()) == ["state.json"]


def test_state_survives_reconstruction_parked_and_stopped(clock, wall, tmp_path):
    state_file = tmp_path / "state.json"
    mount = make_mount(clock, state_file=state_file)
    unparked_tracking_at(clock, wall, mount, 10.0, 10.0)
    mount.set_tracking(False)
    wall.t += 100.0
    assert make_mount(clock, state_file=state_file).status() == mount.status()
    mount.park()
    wall.t += 100.0
    reborn = make_mount(clock, state_file=state_file)
    assert reborn.status()["state"] == "parked"
    assert reborn.status() == mount.status()


def test_corrupt_state_file_starts_parked_and_is_kept_aside(clock, tmp_path, caplog):
    state_file = tmp_path / "state.json"
    state_file.write_text("{not json")
    with caplog.at_level("WARNING"):
        mount = make_mount(clock, state_file=state_file)
    assert mount.status()["state"] == "parked"
    assert str(state_file) in caplog.text
    assert (tmp_path / "state.json.corrupt").read_text() == "{not json"
    assert json.loads(state_file.read_text())["segment"]["state"] == "parked"


def test_works_with_a_fast_clock(wall):
    # Simulated time runs 600x faster than the wall: a 60 s slew takes 0.1 s of wall time.
    fast = SimClock(start_unix=START, speed=600.0, wall_origin=0.0)
    mount = SimulatedMount({}, fast, LAT, LON)
    mount.unpark()
    duration = mount.slew_to(*sky_target(fast, -20.0, 30.0))
    wall.t += fast.wall_seconds(duration)
    assert mount.status()["state"] == "tracking"
    assert math.isclose(fast.wall_seconds(duration), duration / 600.0)

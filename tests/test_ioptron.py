"""The real iOptron driver against the iOptron protocol simulator, over TCP
(and a pty), in-process: the same driver code that runs on a telescope."""
from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.ioptron import IOptronMount, MountError
from observatory.clock import SimClock, parse_iso
from simulators.ioptron import IOptronSimulator
from simulators.mount import GUIDE_RATE_FACTOR, SIDEREAL_RATE_DEG_S, SimulatedMount, local_sidereal_deg

ROOT = Path(__file__).resolve().parent.parent
LAT, LON = 19.54, -155.58
SPEED = 100.0
TIMEOUT = 0.3
RETRIES = 1
ARCSEC = 1 / 3600


@pytest.fixture
def clock():
    return SimClock.starting_now(parse_iso("2026-11-24T10:00:00"), speed=SPEED)


@pytest.fixture
def model(clock):
    return SimulatedMount({}, clock, LAT, LON)


@pytest.fixture
def sim(model, clock):
    s = IOptronSimulator(model, clock).start()
    try:
        yield s
    finally:
        s.stop()


def make_driver(url, clock, **extra):
    return IOptronMount({"port": url, "timeout_s": TIMEOUT, "retries": RETRIES, **extra}, clock, LAT, LON)


@pytest.fixture
def mount(sim, clock):
    d = make_driver(sim.url, clock)
    try:
        d.connect()
        yield d
    finally:
        d.close()


def wait_sim(clock, sim_seconds):
    time.sleep(clock.wall_seconds(sim_seconds) + 0.05)


def lst(clock):
    return local_sidereal_deg(clock.now(), LON)


def slew_and_wait(mount, clock, ha_deg, dec_deg):
    expected = mount.slew_to((lst(clock) - ha_deg) % 360.0, dec_deg)
    wait_sim(clock, expected)
    return expected


# -- handshake and settings ---------------------------------------------------------------


def test_handshake_checks_model_and_sets_site_and_time(sim, model, clock):
    model.latitude_deg, model.longitude_deg = 0.0, 0.0   # the mount forgot its site
    d = make_driver(sim.url, clock)
    try:
        info = d.connect()
    finally:
        d.close()
    assert info["model_code"] == "0040" and info["model"].startswith("CEM40")
    assert info["firmware"]["mainboard"] == "210105"
    assert info["site"]["latitude_deg"] == pytest.approx(LAT, abs=ARCSEC)
    assert info["altitude_limit_deg"] == 10.0
    assert (model.latitude_deg, model.longitude_deg) == pytest.approx((LAT, LON), abs=ARCSEC)
    sent = {c[:4] for c in sim.commands_seen}
    for prefix in (":Mou", ":SLO", ":SLA", ":SUT", ":SG+", ":SDS", ":RT0", ":SAL", ":RG5"):
        assert prefix in sent


def test_handshake_refuses_unexpected_model(sim, clock):
    d = make_driver(sim.url, clock, expected_models=["0120"])
    try:
        with pytest.raises(MountError, match=r"model code 0040 .*expected one of 0120"):
            d.connect()
    finally:
        d.close()


def test_settings_are_validated_without_touching_hardware(clock):
    with pytest.raises(ValueError, match="port is required"):
        IOptronMount({}, clock, LAT, LON)
    with pytest.raises(ValueError, match="unknown ioptron setting.*baud"):
        IOptronMount({"port": "/dev/null", "baud": 9600}, clock, LAT, LON)
    IOptronMount({"port": "/dev/does-not-exist"}, clock, LAT, LON)   # constructing opens nothing


# -- motion ----------------------------------------------------------------------------------


def test_slew_reads_back_target_with_pier_side(mount, clock, model):
    assert mount.status()["parked"]
    with pytest.raises(MountError, match="unpark"):
        mount.slew_to((lst(clock) - 30) % 360, 20)
    mount.unpark()
    assert mount.status()["state"] == "stopped"

    ra = (lst(clock) - 30.0) % 360.0      # west of the meridian
    expected = mount.slew_to(ra, 20.0)
    st = mount.status()
    assert st["state"] == "slewing" and 0 < st["slew_remaining_s"] <= expected
    assert expected == pytest.approx(model.status()["slew_remaining_s"], abs=1.0)
    wait_sim(clock, expected)
    st = mount.status()
    assert st["state"] == "tracking" and st["tracking"]
    assert st["ra_deg"] == pytest.approx(ra, abs=ARCSEC)
    assert st["dec_deg"] == pytest.approx(20.0, abs=ARCSEC)
    assert st["ha_deg"] == pytest.approx(30.0, abs=0.5)
    assert st["pier_side"] == "east"
    assert (st["target_ra_deg"], st["target_dec_deg"]) == pytest.approx((ra, 20.0))
    assert st["alt_deg"] == pytest.approx(model.status()["alt_deg"], abs=0.01)
    assert st["az_deg"] == pytest.approx(model.status()["az_deg"], abs=0.01)

    slew_and_wait(mount, clock, -30.0, 10.0)   # east of the meridian
    st = mount.status()
    assert st["state"] == "tracking" and st["pier_side"] == "west"


def test_park_and_unpark(mount, clock):
    assert mount.park() == 0.0                 # already parked
    mount.unpark()
    slew_and_wait(mount, clock, 20.0, 30.0)
    expected = mount.park()
    assert expected > 0
    st = mount.status()
    assert st["state"] == "parking" and not st["parked"] and st["target_ra_deg"] is None
    assert mount.park() == pytest.approx(st["slew_remaining_s"], abs=1.0)
    with pytest.raises(MountError, match="parking"):
        mount.unpark()
    wait_sim(clock, expected)
    st = mount.status()
    assert st["parked"] and st["state"] == "parked" and not st["tracking"]
    assert st["dec_deg"] == pytest.approx(90.0, abs=ARCSEC)
    mount.unpark()
    assert mount.status()["state"] == "stopped"


def test_stop_halts_a_slew(mount, clock):
    mount.unpark()
    expected = mount.slew_to((lst(clock) - 60) % 360, -10)
    wait_sim(clock, expected / 3)
    mount.stop()
    first = mount.status()
    assert first["state"] == "stopped" and not first["tracking"]
    wait_sim(clock, 30)
    second = mount.status()
    assert second["state"] == "stopped"
    assert second["dec_deg"] == pytest.approx(first["dec_deg"], abs=ARCSEC)
    assert second["ha_deg"] == pytest.approx(first["ha_deg"], abs=ARCSEC)   # axes fixed
    mount.stop()                               # harmless when stopped, and when parked
    mount.park()
    mount.stop()


def test_tracking_on_and_off(mount, clock):
    with pytest.raises(MountError, match="parked"):
        mount.set_tracking(True)
    mount.unpark()
    slew_and_wait(mount, clock, 10.0, 40.0)
    mount.set_tracking(False)
    st = mount.status()
    assert st["state"] == "stopped" and not st["tracking"]
    wait_sim(clock, 60)
    drifted = mount.status()
    assert drifted["ra_deg"] != pytest.approx(st["ra_deg"], abs=5 * ARCSEC)  # RA runs away
    mount.set_tracking(True)
    on = mount.status()
    assert on["state"] == "tracking"
    wait_sim(clock, 60)
    assert mount.status()["ra_deg"] == pytest.approx(on["ra_deg"], abs=ARCSEC)
    mount.set_tracking(True)                   # idempotent


def test_guide_pulse_moves_by_the_expected_amount(mount, clock, sim):
    mount.unpark()
    with pytest.raises(MountError, match="guiding needs tracking"):
        mount.guide(100, 100)
    slew_and_wait(mount, clock, 15.0, 25.0)
    before = mount.status()
    mount.guide(2000, -1000)
    after = mount.status()
    deg_per_ms = GUIDE_RATE_FACTOR * SIDEREAL_RATE_DEG_S / 1000.0
    assert after["ra_deg"] - before["ra_deg"] == pytest.approx(2000 * deg_per_ms, abs=0.02 * ARCSEC)
    assert after["dec_deg"] - before["dec_deg"] == pytest.approx(-1000 * deg_per_ms, abs=0.02 * ARCSEC)
    assert ":ZS02000#" in sim.commands_seen and ":ZC01000#" in sim.commands_seen
    with pytest.raises(MountError, match="longer than"):
        mount.guide(100000, 0)


def test_altitude_limit_refuses_without_moving(mount, clock, sim, model):
    mount.unpark()
    low = ((lst(clock) - 100.0) % 360.0, -30.0)      # well below the horizon
    sent_before = len(sim.commands_seen)
    with pytest.raises(MountError, match="below the limit of 10.0"):
        mount.check_target(*low)
    assert len(sim.commands_seen) == sent_before       # nothing was sent
    with pytest.raises(MountError, match="altitude"):
        mount.slew_to(*low)
    assert not any(c.startswith((":SRA", ":MS1")) for c in sim.commands_seen)
    assert mount.status()["state"] == "stopped"
    # The mount itself refuses too (reply 0) if asked directly.
    ra, dec = low
    mount.command(f":SRA{round(ra * 360000):09d}#", 1)
    mount.command(f":Sd{round(dec * 360000):+09d}#", 1)
    assert mount.command(":MS1#", 1) == "0"
    assert model.status()["state"] == "stopped"


# -- misbehaviour ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, message", [
    ("silent", r"no reply to :GLS# within 0.3 s \(2 attempts\)"),
    ("garbage", r"unexpected reply to :GLS#: b'[^']*#'"),
    ("half", r"incomplete reply to :GLS#: b'[+-]\d+' after 0.3 s"),
    ("slow", r"no reply to :GLS# within 0.3 s"),
])
def test_misbehaviour_gives_clear_error_then_recovers(mount, sim, mode, message):
    sim.set_misbehaviour(mode, delay_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(MountError, match=message):
        mount.status()
    # Bounded by the timeouts (with slack for a loaded machine), never a hang.
    assert time.monotonic() - t0 < (RETRIES + 1) * TIMEOUT + 3.0
    sim.behave()
    assert mount.status()["parked"]
    mount.unpark()
    assert mount.status()["state"] == "stopped"


def test_one_bad_reply_is_retried_for_queries_only(mount, sim):
    sim.set_misbehaviour("garbage", times=1)
    assert mount.status()["parked"]              # the retry got a good reply
    sim.set_misbehaviour("garbage", times=1)
    with pytest.raises(MountError, match=r"unexpected reply to :MH#"):
        mount.command(":MH#", 1, pattern=re.compile("[01]"))


def test_vanished_mount_gives_clear_error_then_recovers(mount, sim):
    sim.set_misbehaviour("vanish")
    t0 = time.monotonic()
    with pytest.raises(MountError, match=r"link to the mount|cannot open the mount port"):
        mount.status()
    with pytest.raises(MountError, match=r"cannot open the mount port socket://127.0.0.1"):
        mount.status()
    assert time.monotonic() - t0 < 2 * (RETRIES + 1) * TIMEOUT + 4.0
    sim.behave()                                  # listening again on the same port
    assert mount.status()["parked"]


# -- other transports ----------------------------------------------------------------------


def test_driver_over_a_pty(sim, clock):
    path = sim.open_pty()
    d = make_driver(path, clock)
    try:
        assert d.connect()["model_code"] == "0040"
        assert d.status()["parked"]
    finally:
        d.close()


def test_cli_prints_url_and_serves(clock):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "simulators.ioptron", "--port", "0",
                             "--speed", str(SPEED), "--start", "2026-11-24T10:00:00",
                             "--wall-origin", str(clock.wall_origin), "--lat", str(LAT), "--lon", str(LON)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    d = None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "simulator printed nothing"
        url = proc.stdout.readline().strip()
        assert url.startswith("socket://127.0.0.1:")
        d = make_driver(url, clock)
        assert d.connect()["model_code"] == "0040"
        st = d.status()
        assert st["parked"] and st["dec_deg"] == pytest.approx(90.0)
        assert st["ha_deg"] == pytest.approx(0.0, abs=0.01)   # same clock in both processes
    finally:
        if d is not None:
            d.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

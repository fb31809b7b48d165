"""The unit's own device actors driving the INDI simulators through indiserver:
choosing INDI for a device is configuration only."""
from __future__ import annotations

import os
import time

import pytest

from actors.camera import CameraActor
from actors.mount import MountActor
from actors.weather import WeatherActor
from drivers.indi_devices import _lst_deg
from messages import (DeviceStatus, ExposureComplete, ExposureStarted, GetStatus, MountArrived, MountMoving,
                      ReadWeather, SlewTo, StartExposure, WeatherReading)
from observatory.clock import SimClock
from tests.indi_server import SIMULATORS, IndiServer
from tests.test_actors import SITE, ask, asys, start_actor, wait_reply, warm_astropy  # noqa: F401 (fixtures)
from tests.test_indi import _require_indi

DRIVERS = [SIMULATORS[k][0] for k in ("mount", "camera", "weather")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require_indi()
    with IndiServer(DRIVERS, tmp_path_factory.mktemp("indi-actors")) as srv:
        yield srv


def wall_clock_init(**kw):
    # INDI devices run on the wall clock: the unit must too (speed 1, now).
    return dict(start=time.time(), speed=1.0, **kw)


def test_mount_actor_slews_an_indi_mount(asys, server, tmp_path):
    addr, init = start_actor(asys, MountActor, "mount", "mount",
                             {"driver": "indi", "settings": {"port": server.port}}, tmp_path, **wall_clock_init())
    assert init.info["connect"]["device"] == "Telescope Simulator"
    clock = SimClock.starting_now()
    ra = (_lst_deg(clock.now(), SITE["longitude"]) - 90.0) % 360.0      # hour angle +90, near the pole
    with asys.private() as p:
        slew = SlewTo(ra_deg=ra, dec_deg=80.0)
        p.tell(addr, slew)
        moving = wait_reply(p, slew.request_id, 10.0, (MountMoving,))
        assert moving.action == "slew" and moving.expected_s > 0
        status = ask(asys, addr, GetStatus(), timeout=5.0)       # answered while the mount moves
        assert isinstance(status, DeviceStatus)
        arrived = wait_reply(p, slew.request_id, 90.0, (MountArrived,))
    assert arrived.action == "slew", arrived
    assert abs(arrived.status["dec_deg"] - 80.0) < 0.1
    assert abs((arrived.status["ra_deg"] - ra + 180.0) % 360.0 - 180.0) < 0.2


def test_camera_actor_exposes_on_an_indi_camera(asys, server, tmp_path):
    addr, init = start_actor(asys, CameraActor, "cam00", "camera",
                             {"driver": "indi", "settings": {"port": server.port, "readout_time": 1.0}},
                             tmp_path, **wall_clock_init())
    path = tmp_path / "images" / "cam00.fits"
    with asys.private() as p:
        start = StartExposure(exposure_id="e1", exptime=1.0, path=str(path), image_type="science",
                              ra_deg=10.0, dec_deg=20.0, header={"OBJECT": "indi-test"})
        p.tell(addr, start)
        assert isinstance(wait_reply(p, start.request_id, 10.0, (ExposureStarted,)), ExposureStarted)
        done = wait_reply(p, start.request_id, 60.0, (ExposureComplete,))
    assert done.path == str(path) and os.path.exists(path)
    from astropy.io import fits
    assert fits.getheader(path)["OBJECT"] == "indi-test"


def test_weather_actor_reads_an_indi_station(asys, server, tmp_path):
    addr, init = start_actor(asys, WeatherActor, "weather", "weather",
                             {"driver": "indi", "sample_interval": 1.0, "settings": {"port": server.port}},
                             tmp_path, **wall_clock_init())
    deadline = time.time() + 20
    reading = None
    while time.time() < deadline and not reading:
        reply = ask(asys, addr, ReadWeather(), timeout=5.0)
        assert isinstance(reply, WeatherReading)
        reading = reply.reading
        time.sleep(0.5)
    assert reading and {"timestamp", "wind_kph", "rain"} <= set(reading)

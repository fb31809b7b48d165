"""Fault injection 'driver_death' on INDI devices: the driver finds its own
driver process under the local indiserver (two copies of the CCD simulator,
told apart by INDIDEV) and kills exactly that one; indiserver restarts it.
Real (non-simulator) drivers and remote servers are refused."""
from __future__ import annotations

import os
import time

import pytest

from drivers.indi import IndiError
from drivers.indi_devices import IndiCamera, IndiFocuser, local_driver_pid
from observatory.clock import SimClock
from tests.indi_server import SIMULATORS, IndiServer
from tests.test_indi import _require_indi


def _with_env(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read()


def test_driver_death_kills_that_devices_driver_and_indiserver_restarts_it(tmp_path):
    _require_indi()
    second = tmp_path / "indi_ccd_two"
    second.write_text('#!/bin/sh\nINDIDEV="CCD Two" exec indi_simulator_ccd "$@"\n')
    second.chmod(0o755)
    drivers = [SIMULATORS["camera"][0], str(second), SIMULATORS["focuser"][0]]
    with IndiServer(drivers, tmp_path / "indi") as server:
        clock = SimClock(time.time(), 1.0)
        cam = IndiCamera({"port": server.port, "device": "CCD Two", "reconnect_device": True}, clock, name="cam01")
        try:
            info = cam.connect()
            assert info["driver_exec"] == "indi_simulator_ccd" and cam.is_simulator()
            before = set(server.driver_pids("indi_simulator_ccd"))
            assert len(before) == 2
            target = local_driver_pid("indi_simulator_ccd", "CCD Two", server.port)
            assert b"INDIDEV=CCD Two" in _with_env(target)
            # The plain one (no INDIDEV) is "CCD Simulator".
            plain = local_driver_pid("indi_simulator_ccd", "CCD Simulator", server.port)
            assert plain != target and plain in before

            assert cam.kill_driver() == target
            deadline = time.time() + 15
            while time.time() < deadline:
                now = set(server.driver_pids("indi_simulator_ccd"))
                if target not in now and len(now) == 2:
                    break
                time.sleep(0.1)
            now = set(server.driver_pids("indi_simulator_ccd"))
            assert target not in now and plain in now and len(now) == 2, (before, now, server.log_tail())
            # The device comes back (disconnected, its state lost): the driver reconnects it.
            cam.connect()
            assert cam.status()
        finally:
            cam.close()

        # Another port: no such server.
        with pytest.raises(IndiError, match="found 0"):
            local_driver_pid("indi_simulator_ccd", "CCD Two", server.port + 1)


def test_driver_death_is_refused_for_real_drivers_and_remote_servers(monkeypatch):
    clock = SimClock(time.time(), 1.0)
    real = IndiFocuser({"device": "MoonLite"}, clock)
    monkeypatch.setattr(real, "driver_exec", lambda: "indi_moonlite_focus")
    assert not real.is_simulator()
    with pytest.raises(IndiError, match="not an INDI simulator"):
        real.kill_driver()
    remote = IndiFocuser({"device": "Focuser Simulator", "host": "pier.example.org"}, clock)
    monkeypatch.setattr(remote, "driver_exec", lambda: "indi_simulator_focus")
    with pytest.raises(IndiError, match="not this machine"):
        remote.kill_driver()
    assert os.getpid()      # nothing was killed here

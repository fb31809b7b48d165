"""A whole (short) night with every device on INDI: mount, two cameras, a
focuser, the filter wheel and the dome are Debian's INDI simulators behind
one indiserver, driven by the unit's own actors at speed 1 (INDI devices live
on the wall clock).

The site is placed so that the night ends a few minutes from now. During it
one camera's driver is killed in the middle of an exposure, by the unit's
own fault injection (`fault cam01 driver_death`; indiserver restarts it; the other camera keeps observing; the first comes back), then
the whole indiserver dies and returns (the unit stops, parks when it can, and
resumes once the devices answer). The night ends parked with the dome closed,
the summary written and run_unit.py exiting 0."""
from __future__ import annotations

import json
import math
import os
import time

import pytest
import yaml

from observatory import control
from observatory.astro import Ephemeris, Site, lst_deg
from observatory.clock import iso
from tests.indi_server import SIMULATORS, IndiServer, free_port
from tests.test_indi import _require_indi
from tests.unit_runner import RunningUnit
from tests.test_unit_faults import science_count

LATITUDE = 19.54
DARK_LEFT_S = 200.0        # simulated (= wall) seconds of night left when the unit starts


def _longitude_where_dark_ends_in(seconds: float) -> float:
    """A longitude where, at this latitude, astronomical dawn comes ``seconds`` from now."""
    from astropy.coordinates import get_sun
    from astropy.time import Time
    t_end = time.time() + seconds
    sun = get_sun(Time(t_end, format="unix"))        # apparent (geocentric) place
    ra, dec, lat = sun.ra.deg, sun.dec.deg, math.radians(LATITUDE)
    cos_h = (math.sin(math.radians(-18.0)) - math.sin(lat) * math.sin(math.radians(dec))) / (
        math.cos(lat) * math.cos(math.radians(dec)))
    hour_angle = -math.degrees(math.acos(cos_h))            # rising: east of the meridian
    lon = (ra + hour_angle - lst_deg(t_end, 0.0) + 180.0) % 360.0 - 180.0
    for _ in range(3):                                      # refine against the unit's own ephemeris
        end = Ephemeris(Site("test", LATITUDE, lon, 100.0)).dark_interval(time.time(), -18.0)[1]
        lon += (end - t_end) / 240.0                        # later dawn: move east
    return float(lon)


def _pid_with_env(server: IndiServer, driver: str, marker: bytes) -> int:
    for pid in server.driver_pids(driver):
        with open(f"/proc/{pid}/environ", "rb") as f:
            if marker in f.read().split(b"\0"):
                return pid
    raise AssertionError(f"no {driver} with {marker!r}: {server.log_tail()}")


def _exposure_started_after(unit, camera: str, wall: float) -> bool:
    from datetime import datetime
    log = unit.pandir / "logs" / "unit.jsonl"
    for line in reversed(log.read_text().splitlines()[-400:]):
        rec = json.loads(line)
        if rec.get("actor") == camera and rec.get("event") == "exposure_started":
            return datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp() > wall
    return False


def _indi_drivers(workdir) -> list[str]:
    second_ccd = workdir / "indi_ccd_two"
    second_ccd.write_text('#!/bin/sh\nINDIDEV="CCD Two" exec indi_simulator_ccd "$@"\n')
    second_ccd.chmod(0o755)
    return [SIMULATORS[k][0] for k in ("mount", "camera", "focuser", "wheel", "dome")] + [str(second_ccd)]


@pytest.mark.timeout(900)       # a real-time night: DARK_LEFT_S of it, plus start-up and housekeeping
def test_a_night_on_indi_devices_through_driver_and_server_failures(tmp_path):
    _require_indi()
    lon = _longitude_where_dark_ends_in(DARK_LEFT_S)
    start = time.time()
    lst = float(lst_deg(start, lon))
    fields = [{"field": {"name": f"West {i}", "position": f"{(lst - 15 - 5 * i) % 360:.4f} {LATITUDE - 5:.4f}"},
               "observation": {"priority": 100 - i, "exptime": 6, "min_nexp": 40, "exp_set_size": 4}}
              for i in range(2)]
    fields_file = tmp_path / "fields.yaml"
    fields_file.write_text(yaml.safe_dump(fields))
    port = free_port()
    common = {"port": port, "reconnect_device": True, "timeout_s": 3.0, "connect_timeout_s": 10.0}
    overrides = {
        "location.longitude": lon, "location.latitude": LATITUDE, "location.elevation": 100.0,
        "scheduler.fields_file": str(fields_file),
        "mount": {"driver": "indi", "settings": {**common, "slew_rate_deg_s": 5.0}},
        "cameras": [{"name": "cam00", "driver": "indi", "primary": True,
                     "settings": {**common, "device": "CCD Simulator", "readout_time": 2.0}},
                    {"name": "cam01", "driver": "indi", "settings": {**common, "device": "CCD Two",
                                                                      "readout_time": 2.0}}],
        "focusers": [{"name": "foc00", "camera": "cam00", "driver": "indi", "position": 42000, "limits": [0, 100000],
                      "settings": common}],
        "filterwheel": {"driver": "indi", "filter": "2", "settings": common},
        "dome": {"driver": "indi", "settings": common, "timeout": 60.0},
        "observing.pointing_exptime": 3.0, "observing.retry_after_fault": 10.0,
        "observing.plate_solve": False, "calibration.darks": False,   # the INDI CCD simulator draws no real sky
        "observing.readout_margin": 20.0, "observing.slew_margin": 30.0,
        "weather.sample_interval": 5.0, "safety.reopen_after": 0.0, "scheduler.set_overhead": 20.0,
    }
    drivers = _indi_drivers(tmp_path)
    with IndiServer(drivers, tmp_path / "indi-a", port=port) as server:
        unit = RunningUnit(tmp_path, start=iso(start), speed=1.0, nights=1, overrides=overrides)
        try:
            unit.wait_for(lambda: science_count(unit, "cam01") >= 2, 120, "science frames from cam01")
            events = lambda sql, *a: unit.query(f"SELECT message FROM events WHERE {sql}", a)  # noqa: E731
            assert events("message='dome: open done'"), "the dome opened before observing"
            assert events("message='foc00: focus done'") and events("message='filterwheel: filter done'")

            # 1. cam01's driver dies in the middle of an exposure.
            marker = time.time()
            unit.wait_for(lambda: _exposure_started_after(unit, "cam01", marker), 30, "a cam01 exposure")
            time.sleep(1.5)                                  # well inside the 6 s exposure
            killed_wall = time.time()
            # Through the unit's own fault injection (INDI simulators count as simulation):
            # the camera actor finds its driver's process under indiserver and kills it.
            driver_pid = _pid_with_env(server, "indi_simulator_ccd", b"INDIDEV=CCD Two")
            reply = control.request(unit.pandir, "fault", {"target": "cam01", "kind": "driver_death"})
            assert reply["ok"], reply
            unit.wait_for(lambda: not os.path.exists(f"/proc/{driver_pid}") or
                          open(f"/proc/{driver_pid}/stat").read().split()[2] == "Z", 10, "cam01's driver killed")
            unit.wait_for(lambda: events("message LIKE 'cam01: %failed%' AND wall_unix > ?", killed_wall),
                          30, "cam01's failure reported")
            assert science_count(unit, "cam00", after=killed_wall) >= 0
            unit.wait_for(lambda: science_count(unit, "cam00", after=killed_wall) >= 1, 40,
                          "cam00 observing on")
            unit.wait_for(lambda: science_count(unit, "cam01", after=killed_wall) >= 1, 60,
                          "cam01 back once indiserver restarted its driver")
        except BaseException:
            unit.kill()
            raise

    # 2. The whole indiserver is gone (the `with` above ended it) ...
    try:
        gone_wall = time.time()
        unit.wait_for(lambda: events("kind='error' AND wall_unix > ?", gone_wall), 30, "the loss reported")
        time.sleep(3)
        # ... and comes back on the same port, its devices reset (mount parked, dome closed).
        with IndiServer(drivers, tmp_path / "indi-b", port=port):
            back_wall = time.time()
            unit.wait_for(lambda: science_count(unit, "cam00", after=back_wall) >= 1
                          and science_count(unit, "cam01", after=back_wall) >= 1,
                          120, "both cameras observing after the server came back")
            reopened = events("message='dome: open done' AND wall_unix > ?", back_wall)
            assert reopened, "the dome, reset to closed by the restart, was opened again"

            # 3. Dawn: park, close, summary, exit 0.
            assert unit.wait(DARK_LEFT_S + 120) == 0, unit.output()[-3000:]
        final = unit.status()
        assert final["mount"]["parked"] and final["devices"]["dome"]["shutter"] == "closed"
        states = [m for (m,) in unit.query("SELECT message FROM events WHERE kind='state' ORDER BY id")]
        assert any("-> parked" in s for s in states[-4:]), states[-6:]
        night = unit.query("SELECT night FROM observations LIMIT 1")[0][0]
        assert (unit.pandir / "reports" / night / "summary.json").exists()
        # Every frame on disk is in the DB, and every DB frame is on disk.
        paths = {p for (p,) in unit.query("SELECT path FROM exposures")}
        on_disk = {str(p) for p in (unit.pandir / "images").rglob("*.fits")}
        assert paths == on_disk
    finally:
        unit.kill()

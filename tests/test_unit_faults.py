"""Faults in the middle of a night: a camera actor killed, the weather turning."""
import os
import signal
import time

import yaml

from observatory.clock import iso
from tests.unit_runner import RunningUnit

DARK_START = "2026-11-24T08:00:00"     # 22:00 at Mauna Loa: dark, fields up


def sim_now(unit) -> float:
    """The unit's simulated time, from any event's (simulated, wall) pair."""
    t, w = unit.query("SELECT time_unix, wall_unix FROM events ORDER BY id LIMIT 1")[0]
    return t + (time.time() - w) * unit.speed


def science_count(unit, camera, after=0.0) -> int:
    rows = unit.query("SELECT COUNT(*) FROM exposures WHERE camera=? AND image_type='science' AND start_unix > ?",
                      (camera, after))
    return rows[0][0] if rows else 0


def test_killed_camera_is_restarted_and_the_night_goes_on(tmp_path):
    unit = RunningUnit(tmp_path, start=DARK_START, speed=300)
    try:
        unit.wait_for(lambda: science_count(unit, "cam01") >= 2, 90, "cam01 science frames")
        victim = unit.actor_pid("cam01")
        killed_at = sim_now(unit)
        os.kill(victim, signal.SIGKILL)

        restarts = unit.wait_for(lambda: unit.query(
            "SELECT message FROM events WHERE kind='restart' AND json_extract(data, '$.child')='cam01'"),
            30, "the restart event")
        assert "cam01 restarted" in restarts[0][0]
        unit.wait_for(lambda: science_count(unit, "cam01", after=killed_at) >= 2, 60, "cam01 frames after the restart")
        unit.wait_for(lambda: science_count(unit, "cam00", after=killed_at) >= 2, 30, "cam00 frames after the restart")

        cam01 = next(a for a in unit.status()["actors"] if a["name"] == "cam01")
        assert cam01["pid"] != victim and cam01["restarts"] == 1 and cam01["ready"]
        died = unit.query("SELECT COUNT(*) FROM events WHERE kind='error' AND message LIKE 'cam01 actor died%'")
        assert died[0][0] == 1
        assert unit.terminate() == 0
        assert "unit stopped (parked)" in unit.output()
    finally:
        unit.kill()


def test_weather_turning_unsafe_mid_exposure_parks_within_a_second(tmp_path):
    timeline = tmp_path / "weather.yaml"
    timeline.write_text("timeline: []\n")
    unit = RunningUnit(tmp_path, start=DARK_START, speed=60,
                       overrides={"weather.timeline": str(timeline), "weather.sample_interval": 5.0,
                                  "safety.reopen_after": 120.0})
    try:
        # Wait until both cameras are in the middle of a science exposure.
        unit.wait_for(lambda: science_count(unit, "cam00") >= 1, 90, "a first science frame")
        unit.wait_for(lambda: unit.status().get("state") == "observing", 30, "an exposure in progress",
                      interval=0.02)
        now = sim_now(unit)
        timeline.write_text(yaml.safe_dump({"timeline": [
            {"at": iso(now), "conditions": "rain"},
            {"at": iso(now + 600), "conditions": "clear"}]}))
        turned_wall = time.time()

        parked = unit.wait_for(lambda: unit.query(
            "SELECT wall_unix, time_unix FROM events WHERE kind='mount' AND message='mount parked'"
            " AND time_unix >= ?", (now,)), 30, "the mount parked")
        assert parked[0][0] - turned_wall < 1.0, f"parked {parked[0][0] - turned_wall:.2f} s after the rain began"
        aborted = unit.query("SELECT COUNT(*) FROM events WHERE kind='exposure' AND message LIKE '%aborted'"
                             " AND time_unix >= ?", (now,))[0][0]
        assert aborted == 2, "both cameras' exposures should have been aborted"
        reasons = unit.query("SELECT message FROM events WHERE kind='safety' AND time_unix >= ?", (now,))
        assert "rain" in reasons[0][0]

        # Clear again after 10 simulated minutes, reopen after 2 more: observing resumes.
        unit.wait_for(lambda: science_count(unit, "cam00", after=now + 600) >= 1, 60, "observing after the rain")
        assert unit.terminate() == 0
    finally:
        unit.kill()


def test_restart_budget_spent_escalates_to_parking_and_a_clear_error(tmp_path):
    unit = RunningUnit(tmp_path, start=DARK_START, speed=300,
                       overrides={"supervision.max_restarts": 1, "supervision.restart_period": 600.0})

    def kill_until_failed(camera):
        for _ in range(2):
            pid = unit.wait_for(lambda: next((a["pid"] for a in unit.status().get("actors", [])
                                              if a["name"] == camera and a["ready"]), None),
                                30, f"{camera} ready")
            os.kill(pid, signal.SIGKILL)
            unit.wait_for(lambda: unit.actor_pid(camera) != pid or next(
                a["failed"] for a in unit.status()["actors"] if a["name"] == camera), 30, f"{camera} replaced")

    try:
        unit.wait_for(lambda: science_count(unit, "cam00") >= 1, 90, "a first science frame")
        kill_until_failed("cam01")
        spent = unit.wait_for(lambda: unit.query(
            "SELECT message FROM events WHERE message LIKE 'cam01: restart budget spent%'"), 30, "cam01 failed")
        assert "carrying on with 1 camera(s)" in spent[0][0]
        before = science_count(unit, "cam00")
        unit.wait_for(lambda: science_count(unit, "cam00") > before, 60, "observing on with cam00 alone")

        kill_until_failed("cam00")
        rc = unit.wait(60)
        assert rc == 1, unit.output()[-2000:]
        out = unit.output()
        assert "unit failed: cam00 failed: restart budget spent" in out
        assert "unit stopped (parked)" in out
        assert unit.status()["mount"]["parked"] is True
    finally:
        unit.kill()


def test_hung_camera_is_killed_and_restarted(tmp_path):
    """A stopped process answers nothing, like an actor stuck in a driver call:
    the supervisor notices the missing heartbeats, kills it by pid and restarts it."""
    unit = RunningUnit(tmp_path, start=DARK_START, speed=300,
                       overrides={"supervision.heartbeat_interval": 0.5, "supervision.heartbeat_timeout": 3.0})
    try:
        unit.wait_for(lambda: science_count(unit, "cam01") >= 1, 90, "cam01 science frames")
        victim = unit.actor_pid("cam01")
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.time()
        hung = unit.wait_for(lambda: unit.query(
            "SELECT wall_unix, message FROM events WHERE message LIKE 'cam01 hung%'"), 30, "the hang noticed")
        assert f"killing pid {victim}" in hung[0][1]
        assert hung[0][0] - stopped_at < 3.0 + 2.0
        unit.wait_for(lambda: unit.query("SELECT 1 FROM events WHERE kind='restart' AND message LIKE 'cam01%'"),
                      30, "cam01 restarted")
        after = sim_now(unit)
        unit.wait_for(lambda: science_count(unit, "cam01", after=after) >= 1, 60, "cam01 frames after the restart")
        assert unit.terminate() == 0
    finally:
        unit.kill()

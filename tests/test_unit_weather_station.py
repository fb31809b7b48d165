"""The weather station at the wire: the CloudWatcher driver talking to its simulator
inside a running unit: rain parks, a silent station goes stale and parks."""
import time

import yaml

from observatory.clock import iso
from tests.unit_runner import RunningUnit
from tests.test_unit_faults import DARK_START, sim_now, science_count

CW = {"weather.driver": "cloudwatcher",
      "weather.settings": {"port": "simulator", "timeout_s": 0.3, "retries": 1},
      "weather.sample_interval": 5.0, "safety.reopen_after": 120.0,
      # The station goes offline 600 s after the rain stops: clear the rain (and
      # its clouds) well before that, not after the default 600 s of dry readings.
      "safety.rain_clear_after": 120.0, "safety.cloud_clear_after": 120.0}


def test_cloudwatcher_rain_parks_and_offline_goes_stale(tmp_path):
    timeline = tmp_path / "weather.yaml"
    timeline.write_text("timeline: []\n")
    unit = RunningUnit(tmp_path, start=DARK_START, speed=60,
                       overrides={**CW, "weather.timeline": str(timeline)})
    try:
        unit.wait_for(lambda: science_count(unit, "cam00") >= 1, 90, "a first science frame")
        unit.wait_for(lambda: unit.status().get("state") == "observing", 30, "an exposure in progress",
                      interval=0.02)
        now = sim_now(unit)
        timeline.write_text(yaml.safe_dump({"timeline": [
            {"at": iso(now), "conditions": "rain"},
            {"at": iso(now + 600), "conditions": "clear"},
            {"at": iso(now + 1200), "conditions": "offline"},
        ]}))
        turned_wall = time.time()
        parked = unit.wait_for(lambda: unit.query(
            "SELECT wall_unix, time_unix FROM events WHERE kind='mount' AND message='mount parked'"
            " AND time_unix >= ?", (now,)), 30, "the mount parked")
        assert parked[0][0] - turned_wall < 1.0
        reasons = unit.query("SELECT message FROM events WHERE kind='safety' AND time_unix >= ?", (now,))
        assert "rain" in reasons[0][0]
        unit.wait_for(lambda: science_count(unit, "cam00", after=now + 600) >= 1, 60, "observing after the rain")
        stale = unit.wait_for(lambda: unit.query(
            "SELECT message, time_unix FROM events WHERE kind='safety' AND message LIKE '%stale%' AND time_unix >= ?",
            (now + 1200,)), 60, "stale weather")
        assert stale[0][1] - (now + 1200) < 180 + 60
        assert unit.terminate() == 0
    finally:
        unit.kill()

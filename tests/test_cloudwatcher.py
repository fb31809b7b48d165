"""The CloudWatcher driver against the CloudWatcher simulator, over real TCP
(and a pty): readings follow the timeline, time stamps come from the clock,
every misbehaviour ends in a clear error within the timeout, and the driver
recovers."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from drivers.cloudwatcher import CloudWatcher, CloudWatcherError
from observatory.clock import SimClock, parse_iso
from observatory.weather_rules import evaluate_weather
from simulators.cloudwatcher import HANDSHAKE, CloudWatcherSimulator, block, black_anemometer_count
from simulators.weather import WeatherTimeline

ROOT = Path(__file__).resolve().parent.parent
START = parse_iso("2026-11-24T06:00:00")
TIMEOUT = 0.3
RETRIES = 1
# Worst case for one failing command: every attempt times out, plus slack.
BOUND = (1 + RETRIES) * TIMEOUT + 0.5

TIMELINE = [
    {"after": "1h", "conditions": "cloudy"},
    {"after": "2h", "conditions": "rain"},
    {"after": "3h", "conditions": "windy"},
    {"after": "4h", "conditions": "offline"},
    {"after": "5h", "conditions": "clear"},
]


@pytest.fixture
def clock(wall):
    """Simulated time moved by hand: wall.t = seconds after START."""
    wall.t = 0.0
    return SimClock(start_unix=START, speed=1.0, wall_origin=0.0)


@pytest.fixture
def sim(clock):
    s = CloudWatcherSimulator(WeatherTimeline.from_list(TIMELINE, START), clock).start()
    try:
        yield s
    finally:
        s.stop()


def make_driver(port: str, clock, **extra) -> CloudWatcher:
    return CloudWatcher({"port": port, "timeout_s": TIMEOUT, "retries": RETRIES, **extra}, clock)


@pytest.fixture
def driver(sim, clock):
    d = make_driver(sim.url, clock)
    try:
        yield d
    finally:
        d.close()


# -- settings ------------------------------------------------------------------------


def test_unknown_settings_are_refused_without_opening_the_port(clock):
    with pytest.raises(ValueError, match="unknown cloudwatcher setting.*baud_rate"):
        CloudWatcher({"port": "socket://127.0.0.1:1", "baud_rate": 9600}, clock)
    with pytest.raises(ValueError, match="port is required"):
        CloudWatcher({}, clock)
    with pytest.raises(ValueError, match="anemometer"):
        CloudWatcher({"port": "/dev/null-x", "anemometer": "purple"}, clock)
    with pytest.raises(ValueError, match="retries must be an integer"):
        CloudWatcher({"port": "/dev/null-x", "retries": "2"}, clock)
    d = CloudWatcher({"port": "/dev/does-not-exist"}, clock)     # nothing opened yet
    assert d._serial is None


# -- the protocol alone -----------------------------------------------------------------


def test_simulator_wire_format(sim):
    assert HANDSHAKE == b"!\x11            0" and len(HANDSHAKE) == 15
    assert sim.handle("A!") == b"!N CloudWatcher" + HANDSHAKE
    sky = sim.handle("S!")
    assert len(sky) == 30 and sky.startswith(b"!1 ") and sky.endswith(HANDSHAKE)
    assert int(sky[3:15]) == pytest.approx((8.0 - 35.0) * 100, abs=150)
    assert sim.handle("z!") == HANDSHAKE
    assert sim.handle("nonsense!") == HANDSHAKE
    assert sim.handle("P0200!") == block("Q", 200) + HANDSHAKE
    assert sim.split(b"\x00xx S!T!E") == (["S!", "T!"], b"E")
    assert black_anemometer_count(2.0) == 0
    assert black_anemometer_count(10.0) * 0.84 + 3 == pytest.approx(10.0, abs=0.42)


# -- readings follow the timeline -------------------------------------------------------


def test_connect_reports_identity(driver):
    info = driver.connect()
    assert info["name"] == "CloudWatcher"
    assert info["firmware"] == "5.89"
    assert info["serial"] == "1234"
    assert driver.connected


def test_readings_follow_the_timeline(driver, clock, wall):
    driver.connect()
    wall.t = 600.0
    r = driver.read()
    assert set(r) == {"timestamp", "sky_minus_ambient_c", "ambient_c", "wind_kph", "gust_kph",
                      "rain", "conditions"}
    assert r["timestamp"] == clock.now() == START + 600     # stamped by the clock when read
    assert r["sky_minus_ambient_c"] == pytest.approx(-35.0, abs=1.5)
    assert r["ambient_c"] == pytest.approx(8.0, abs=0.5)
    assert r["wind_kph"] == pytest.approx(10.0, abs=4.0)
    assert r["rain"] is False and r["conditions"] == "clear"
    assert evaluate_weather(r, clock.now()) == (True, ())

    wall.t = 3600 + 60
    r = driver.read()
    assert r["conditions"] == "cloudy" and not r["rain"]
    safe, reasons = evaluate_weather(r, clock.now())
    assert not safe and [x.split()[0] for x in reasons] == ["cloudy"]

    wall.t = 2 * 3600 + 60
    r = driver.read()
    assert r["rain"] is True and r["conditions"] == "rain"
    safe, reasons = evaluate_weather(r, clock.now())
    assert not safe and "rain" in reasons

    wall.t = 3 * 3600 + 60
    r = driver.read()
    assert r["conditions"] == "windy" and r["wind_kph"] == pytest.approx(60.0, abs=4.0)
    assert r["gust_kph"] >= r["wind_kph"]
    safe, reasons = evaluate_weather(r, clock.now())
    assert not safe and reasons[0].startswith("windy")


def test_gust_is_the_highest_wind_in_the_window(driver, wall):
    wall.t = 3 * 3600 + 60
    windy = driver.read()
    wall.t = 5 * 3600 + 60            # calm again, hours later: the windy reading is out of the window
    calm = driver.read()
    assert calm["gust_kph"] == calm["wind_kph"]
    wall.t += 120
    assert driver.read()["gust_kph"] >= calm["wind_kph"]
    d2 = make_driver(driver.settings["port"], driver._clock, gust_window_s=3 * 3600.0)
    try:
        wall.t = 3 * 3600 + 60
        d2.read()
        wall.t = 5 * 3600 + 60
        assert d2.read()["gust_kph"] == windy["wind_kph"]
    finally:
        d2.close()


def test_offline_station_raises_then_recovers_and_the_last_reading_goes_stale(driver, clock, wall):
    wall.t = 4 * 3600 - 60
    last = driver.read()
    wall.t = 4 * 3600 + 600            # offline
    t0 = time.monotonic()
    with pytest.raises(CloudWatcherError, match=r"no reply to S! within 0.3 s \(2 attempts\)"):
        driver.read()
    assert time.monotonic() - t0 < BOUND
    # The caller keeps its last good reading: the safety rules see it stale.
    safe, reasons = evaluate_weather(last, clock.now())
    assert not safe and reasons[0].startswith("stale")
    wall.t = 5 * 3600 + 60             # back online
    r = driver.read()
    assert r["conditions"] == "clear" and r["timestamp"] == clock.now()
    assert evaluate_weather(r, clock.now())[0]


# -- misbehaviour -------------------------------------------------------------------


@pytest.mark.parametrize("mode, message", [
    ("silent", r"no reply to S! within 0.3 s"),
    ("garbage", r"unexpected reply to S!: b'"),
    ("half", r"incomplete reply to S!: b'!1 "),
    ("slow", r"no reply to S! within 0.3 s"),
    ("vanish", r"(cannot open the weather station port|link to the weather station .* failed during S!)"),
])
def test_misbehaviour_gives_a_clear_error_and_the_driver_recovers(driver, sim, mode, message):
    driver.connect()
    assert driver.read()["conditions"] == "clear"
    sim.set_misbehaviour(mode, delay_s=2 * TIMEOUT)
    t0 = time.monotonic()
    with pytest.raises(CloudWatcherError, match=message) as err:
        driver.read()
    assert time.monotonic() - t0 < BOUND
    assert sim.url in str(err.value)
    sim.behave()
    assert driver.read()["conditions"] == "clear"
    assert driver.connect()["name"] == "CloudWatcher"


def test_one_bad_reply_is_retried_within_the_same_read(driver, sim):
    driver.connect()
    sim.set_misbehaviour("garbage", times=1)
    assert driver.read()["conditions"] == "clear"
    sim.set_misbehaviour("half", times=1)
    assert driver.read()["conditions"] == "clear"
    assert sim.misbehaviour == "normal"


def test_no_anemometer_is_refused_at_connect(clock):
    s = CloudWatcherSimulator(WeatherTimeline.from_list([], START), clock, anemometer="none").start()
    d = make_driver(s.url, clock)
    try:
        with pytest.raises(CloudWatcherError, match="no anemometer"):
            d.connect()
    finally:
        d.close()
        s.stop()


# -- timeline file, pty, CLI ---------------------------------------------------------------


def test_timeline_file_is_reread_when_it_changes(tmp_path, clock, wall):
    path = tmp_path / "weather.yaml"
    path.write_text("timeline: []\n")
    s = CloudWatcherSimulator.from_file(path, clock).start()
    d = make_driver(s.url, clock)
    try:
        wall.t = 120
        assert d.read()["conditions"] == "clear"
        path.write_text(yaml.safe_dump({"timeline": [{"after": 60, "conditions": "rain"}]}))
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
        assert d.read()["rain"] is True
        path.write_text("timeline: [broken\n")
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
        assert d.read()["rain"] is True          # the last good timeline is kept
    finally:
        d.close()
        s.stop()


def test_driver_over_a_pty(sim, clock):
    path = sim.open_pty()
    d = make_driver(path, clock)
    try:
        assert d.connect()["serial"] == "1234"
        assert d.read()["conditions"] == "clear"
    finally:
        d.close()


def test_cli_prints_url_and_serves(tmp_path):
    timeline = tmp_path / "weather.yaml"
    timeline.write_text(yaml.safe_dump({"timeline": [{"after": "1h", "conditions": "rain"}]}))
    wall_origin = time.time()
    clock = SimClock(start_unix=START, speed=1.0, wall_origin=wall_origin)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "simulators.cloudwatcher", "--port", "0",
                             "--timeline", str(timeline), "--speed", "1",
                             "--start", "2026-11-24T06:00:00", "--wall-origin", repr(wall_origin)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    d = None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "simulator printed nothing"
        url = proc.stdout.readline().strip()
        assert url.startswith("socket://127.0.0.1:")
        d = make_driver(url, clock)
        assert d.connect()["name"] == "CloudWatcher"
        r = d.read()
        assert r["conditions"] == "clear" and abs(r["timestamp"] - clock.now()) < 2
        assert evaluate_weather(r, clock.now())[0]
    finally:
        if d is not None:
            d.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def test_cli_rejects_a_broken_timeline(tmp_path):
    timeline = tmp_path / "weather.yaml"
    timeline.write_text("timeline: [{after: 1h, conditions: snow}]\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "simulators.cloudwatcher", "--timeline", str(timeline)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 2 and "unknown conditions 'snow'" in out.stderr and out.stdout == ""

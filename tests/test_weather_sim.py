"""Weather timeline parsing, the simulated station, and the pure safety rules."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The repository root is not installed in the venv; make its packages importable.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from observatory.clock import SimClock, parse_iso  # noqa: E402
from observatory.weather_rules import WeatherLimits, evaluate_weather  # noqa: E402
from simulators.weather import (  # noqa: E402
    SimulatedWeatherStation, TimelineError, WeatherTimeline, parse_duration)

START = parse_iso("2026-11-24T03:00:00")
EXPECTED_NAMES = "clear, cloudy, very_cloudy, windy, rain, offline"


@pytest.fixture
def clock(wall):
    return SimClock(start_unix=START, speed=1.0, wall_origin=0.0)


# -- durations and timeline parsing ------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    (90, 90.0), (12.5, 12.5), ("90", 90.0), ("90s", 90.0), ("45m", 2700.0), ("2h30m", 9000.0),
    ("2h 30m 15s", 9015.0), ("1.5h", 5400.0), ("1h", 3600.0), ("0", 0.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "h", "2x", "30m2h", "-5", -5, True, None, [1]])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_from_list_after_and_at_and_overrides():
    tl = WeatherTimeline.from_list([
        {"after": "1h", "conditions": "cloudy"},
        {"at": "2026-11-24T05:00:00", "conditions": "windy", "wind_kph": 55},
        {"after": 7200 + 1800, "conditions": "rain", "sky_minus_ambient_c": -2.0},
    ], START)
    assert [e.unix for e in tl.entries] == [START + 3600, START + 7200, START + 9000]
    assert [e.conditions for e in tl.entries] == ["cloudy", "windy", "rain"]
    windy = tl.conditions_at(START + 7300)
    assert windy["wind_kph"] == 55.0 and windy["gust_kph"] == 80.0
    rain = tl.conditions_at(START + 9000)
    assert rain["rain"] is True and rain["sky_minus_ambient_c"] == -2.0


def test_conditions_at_boundaries():
    tl = WeatherTimeline.from_list([
        {"after": "1h", "conditions": "cloudy"},
        {"after": "2h", "conditions": "clear"},
    ], START)
    assert tl.conditions_at(START - 86400)["conditions"] == "clear"   # before the first entry
    assert tl.conditions_at(START + 3599.999)["conditions"] == "clear"
    at_entry = tl.conditions_at(START + 3600)                         # inclusive at its time
    assert at_entry == {"conditions": "cloudy", "sky_minus_ambient_c": -15.0, "ambient_c": 8.0,
                        "wind_kph": 10.0, "gust_kph": 15.0, "rain": False}
    assert tl.conditions_at(START + 7199.9)["conditions"] == "cloudy"
    assert tl.conditions_at(START + 7200)["conditions"] == "clear"
    assert tl.conditions_at(START + 10 * 86400)["conditions"] == "clear"


def test_named_conditions_values():
    names = ["clear", "cloudy", "very_cloudy", "windy", "rain", "offline"]
    tl = WeatherTimeline.from_list(
        [{"after": f"{i + 1}h", "conditions": n} for i, n in enumerate(names)], START)
    got = {n: tl.conditions_at(START + (i + 1) * 3600) for i, n in enumerate(names)}
    assert got["clear"]["sky_minus_ambient_c"] == -35.0 and got["clear"]["rain"] is False
    assert got["cloudy"]["sky_minus_ambient_c"] == -15.0
    assert got["very_cloudy"]["sky_minus_ambient_c"] == -5.0
    assert (got["windy"]["wind_kph"], got["windy"]["gust_kph"]) == (60.0, 80.0)
    assert got["rain"]["rain"] is True and got["rain"]["sky_minus_ambient_c"] > -25.0
    assert got["offline"]["conditions"] == "offline" and got["offline"]["sky_minus_ambient_c"] is None


def test_unknown_conditions_error_text():
    with pytest.raises(TimelineError) as info:
        WeatherTimeline.from_list([
            {"after": "1h", "conditions": "cloudy"},
            {"after": "2h", "conditions": "snowy"},
        ], START, source="conf/weather/x.yaml")
    assert str(info.value) == (
        f"conf/weather/x.yaml: entry 2: unknown conditions 'snowy' (expected one of {EXPECTED_NAMES})")
    assert isinstance(info.value, ValueError)


def test_out_of_order_entries_are_rejected():
    with pytest.raises(TimelineError) as info:
        WeatherTimeline.from_list([
            {"after": "2h", "conditions": "cloudy"},
            {"at": "2026-11-24T04:00:00", "conditions": "clear"},    # = after 1h
        ], START, source="t.yaml")
    text = str(info.value)
    assert text.startswith("t.yaml: entry 2: time 2026-11-24T04:00:00")
    assert "not after entry 1" in text and "time order" in text
    with pytest.raises(TimelineError, match="entry 2: .*not after entry 1"):
        WeatherTimeline.from_list([{"after": 60, "conditions": "cloudy"},
                                   {"after": "1m", "conditions": "clear"}], START)


@pytest.mark.parametrize("entry, message", [
    ({"conditions": "cloudy"}, "entry 1: needs exactly one of 'after'"),
    ({"after": 1, "at": "2026-11-24T04:00:00", "conditions": "cloudy"}, "entry 1: needs exactly one"),
    ({"after": "soon", "conditions": "cloudy"}, "entry 1: invalid duration 'soon'"),
    ({"at": "tomorrow", "conditions": "cloudy"}, "entry 1: invalid time 'tomorrow'"),
    ({"after": 10}, f"entry 1: missing conditions \\(expected one of {EXPECTED_NAMES}\\)"),
    ({"after": 10, "conditions": "cloudy", "humidity": 3}, "entry 1: unknown key\\(s\\) humidity"),
    ({"after": 10, "conditions": "offline", "wind_kph": 3}, "entry 1: offline entries take no values"),
    ({"after": 10, "conditions": "clear", "rain": "yes"}, "entry 1: rain must be true or false"),
    ({"after": 10, "conditions": "clear", "wind_kph": "x"}, "entry 1: wind_kph must be a number"),
    ({"after": 10, "conditions": "clear", "gust_kph": 5}, "entry 1: gust_kph 5 is below wind_kph 10"),
    ("cloudy", "entry 1: expected a mapping"),
])
def test_entry_errors(entry, message):
    with pytest.raises(TimelineError, match=f"^<inline>: {message}"):
        WeatherTimeline.from_list([entry], START)


def test_load_yaml_file_names_file_in_errors(tmp_path):
    good = tmp_path / "night.yaml"
    good.write_text(
        "timeline:\n"
        "  - after: 2h30m\n"
        "    conditions: very_cloudy\n"
        "  - at: 2026-11-24T06:00:00      # unquoted: YAML makes it a datetime\n"
        "    conditions: clear\n")
    tl = WeatherTimeline.load(good, START)
    assert tl.source == str(good)
    assert [e.unix for e in tl.entries] == [START + 9000, parse_iso("2026-11-24T06:00:00")]

    bare_list = tmp_path / "list.yaml"
    bare_list.write_text("- {after: 45m, conditions: windy}\n")
    assert WeatherTimeline.load(bare_list, START).conditions_at(START + 2700)["conditions"] == "windy"

    bad = tmp_path / "bad.yaml"
    bad.write_text("timeline:\n  - {after: 1h, conditions: clear}\n  - {after: 2h, conditions: snowy}\n")
    with pytest.raises(TimelineError, match=f"^{bad}: entry 2: unknown conditions 'snowy'"):
        WeatherTimeline.load(bad, START)

    broken = tmp_path / "broken.yaml"
    broken.write_text("timeline: [\n")
    with pytest.raises(TimelineError, match=f"^{broken}: invalid YAML"):
        WeatherTimeline.load(broken, START)

    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("clear\n")
    with pytest.raises(TimelineError, match=f"^{scalar}: expected a list of entries"):
        WeatherTimeline.load(scalar, START)


def test_shipped_timelines():
    clear = WeatherTimeline.load(REPO / "conf/weather/clear.yaml", START)
    assert clear.entries == ()
    default = WeatherTimeline.load(REPO / "conf/weather/default.yaml", START)
    # Walk the night minute by minute: one unsafe spell of about 40 minutes near 6h30m.
    unsafe_minutes = [m for m in range(0, 14 * 60)
                      if not evaluate_weather({"timestamp": START + 60 * m,
                                               **default.conditions_at(START + 60 * m)},
                                              START + 60 * m)[0]]
    assert 35 <= len(unsafe_minutes) <= 45
    assert unsafe_minutes == list(range(unsafe_minutes[0], unsafe_minutes[-1] + 1))
    assert abs((unsafe_minutes[0] + unsafe_minutes[-1]) / 2 - 390) <= 15
    kinds = {default.conditions_at(START + 60 * m)["conditions"] for m in unsafe_minutes}
    assert kinds == {"cloudy", "rain"}


# -- the station --------------------------------------------------------------------

def test_station_timestamps_are_floored_and_noise_is_deterministic(clock, wall):
    station = SimulatedWeatherStation(WeatherTimeline.from_list([], START), clock, sample_interval_s=30.0)
    wall.t = 75.0
    first = station.read()
    assert first["timestamp"] == START + 60.0
    assert set(first) == {"timestamp", "sky_minus_ambient_c", "ambient_c", "wind_kph", "gust_kph",
                          "rain", "conditions"}
    assert first["conditions"] == "clear" and first["rain"] is False
    assert first["sky_minus_ambient_c"] == pytest.approx(-35.0, abs=2.0)
    assert first["wind_kph"] == pytest.approx(10.0, abs=6.0)
    assert first["gust_kph"] >= first["wind_kph"]
    wall.t = 89.9
    assert station.read() == first                          # same interval, same sample
    other = SimulatedWeatherStation(WeatherTimeline.from_list([], START), clock)
    assert other.read() == first                            # seeded by the timestamp only
    wall.t = 90.0
    second = station.read()
    assert second["timestamp"] == START + 90.0
    assert second != first                                  # a new sample has its own noise


def test_station_follows_the_timeline(clock, wall):
    tl = WeatherTimeline.from_list([{"after": "10m", "conditions": "rain"},
                                    {"after": "20m", "conditions": "windy"}], START)
    station = SimulatedWeatherStation(tl, clock)
    wall.t = 599.0
    assert station.read()["conditions"] == "clear"
    wall.t = 600.0
    reading = station.read()
    assert reading["conditions"] == "rain" and reading["rain"] is True
    wall.t = 1230.0
    reading = station.read()
    assert reading["conditions"] == "windy" and reading["wind_kph"] > 50.0


def test_offline_station_repeats_its_last_sample_going_stale(clock, wall):
    tl = WeatherTimeline.from_list([
        {"after": 100, "conditions": "cloudy"},
        {"after": 1000, "conditions": "offline"},
        {"after": 2000, "conditions": "clear"},
    ], START)
    station = SimulatedWeatherStation(tl, clock, sample_interval_s=30.0)
    wall.t = 995.0
    last_good = station.read()
    assert last_good["timestamp"] == START + 990.0 and last_good["conditions"] == "cloudy"

    for t in (1000.0, 1100.0, 1500.0, 2009.0):
        wall.t = t
        assert station.read() == last_good                  # frozen, old timestamp
    wall.t = 1100.0
    safe, reasons = evaluate_weather(station.read(), clock.now())
    assert reasons == ("cloudy (sky-ambient %.1f C > -25.0 C)" % last_good["sky_minus_ambient_c"],)
    wall.t = 1500.0
    safe, reasons = evaluate_weather(station.read(), clock.now())
    assert not safe and reasons[0] == "stale (reading 510 s old > 180 s)"

    # Back online: the first sample on the 30 s grid at or after the entry.
    wall.t = 2010.0
    back = station.read()
    assert back["timestamp"] == START + 2010.0 and back["conditions"] == "clear"
    assert evaluate_weather(back, clock.now()) == (True, ())


def test_offline_on_a_sample_boundary_keeps_the_previous_sample(clock, wall):
    assert START % 30 == 0
    boundary = 600.0                                   # offline exactly at a sample time
    tl = WeatherTimeline.from_list([{"after": boundary, "conditions": "offline"}], START)
    station = SimulatedWeatherStation(tl, clock)
    wall.t = boundary + 500
    assert station.read()["timestamp"] == START + boundary - 30.0


def test_station_offline_from_the_start_has_no_reading(clock, wall):
    tl = WeatherTimeline.from_list([{"after": 0, "conditions": "offline"}], START)
    station = SimulatedWeatherStation(tl, clock)
    wall.t = 300.0
    assert station.read() is None
    assert evaluate_weather(station.read(), clock.now()) == (False, ("no reading",))


# -- safety rules -------------------------------------------------------------------

NOW = START + 1000.0


def reading(**overrides):
    base = {"timestamp": NOW - 30.0, "sky_minus_ambient_c": -35.0, "ambient_c": 8.0,
            "wind_kph": 10.0, "gust_kph": 15.0, "rain": False, "conditions": "clear"}
    return {**base, **overrides}


def test_evaluate_weather_safe_and_reasons():
    assert evaluate_weather(reading(), NOW) == (True, ())
    assert evaluate_weather(None, NOW) == (False, ("no reading",))
    assert evaluate_weather({}, NOW) == (False, ("no reading",))
    assert evaluate_weather(reading(rain=True), NOW) == (False, ("rain",))
    assert evaluate_weather(reading(sky_minus_ambient_c=-12.0), NOW) == (
        False, ("cloudy (sky-ambient -12.0 C > -25.0 C)",))
    assert evaluate_weather(reading(wind_kph=60.0), NOW) == (False, ("windy (wind 60.0 kph > 50.0 kph)",))
    assert evaluate_weather(reading(gust_kph=80.0), NOW) == (False, ("gusty (gust 80.0 kph > 70.0 kph)",))
    assert evaluate_weather(reading(timestamp=NOW - 240.0), NOW) == (
        False, ("stale (reading 240 s old > 180 s)",))


def test_evaluate_weather_lists_every_reason_in_order():
    safe, reasons = evaluate_weather(
        reading(timestamp=NOW - 600, rain=True, sky_minus_ambient_c=-5.0, wind_kph=70.0, gust_kph=90.0), NOW)
    assert not safe
    assert [r.split(" ")[0] for r in reasons] == ["stale", "rain", "cloudy", "windy", "gusty"]


def test_evaluate_weather_limits_are_exclusive_and_configurable():
    at_limits = reading(timestamp=NOW - 180.0, sky_minus_ambient_c=-25.0, wind_kph=50.0, gust_kph=70.0)
    assert evaluate_weather(at_limits, NOW) == (True, ())
    strict = WeatherLimits(max_sky_minus_ambient_c=-40.0, max_wind_kph=5.0, max_gust_kph=100.0, max_age_s=10.0)
    safe, reasons = evaluate_weather(reading(), NOW, strict)
    assert not safe
    assert reasons == ("stale (reading 30 s old > 10 s)", "cloudy (sky-ambient -35.0 C > -40.0 C)",
                       "windy (wind 10.0 kph > 5.0 kph)")


def test_evaluate_weather_missing_values_are_unsafe():
    safe, reasons = evaluate_weather(reading(sky_minus_ambient_c=None, rain=None), NOW)
    assert not safe and reasons == ("missing rain", "missing sky_minus_ambient_c")
    no_gust = reading()
    del no_gust["gust_kph"]
    assert evaluate_weather(no_gust, NOW) == (True, ())

"""Simulated weather station (AAG CloudWatcher class) following a scripted timeline.

A timeline is a list of entries, each switching the conditions at a moment of
simulated time::

    timeline:
      - after: 6h15m          # offset from the simulation start: 90, "90s", "45m", "2h30m"
        conditions: cloudy
      - at: 2026-11-24T09:30:00   # or an absolute ISO UTC time
        conditions: rain
        wind_kph: 25            # optional overrides of the raw values

An entry may also say ``power: mains`` or ``power: battery``: the mains power
of the unit from that entry on (absent: mains), which the simulated UPS of
the safety kernel follows (``drivers/ups.py``); the weather station itself
ignores it. ``offline`` entries may carry it too.

Before the first entry the conditions are ``clear`` and the power is mains. Entries must be in
strictly increasing time order. The file may also be a bare list of entries, or
empty (clear all night). Entries are counted from 1 in error messages, as a
person reading the file would count them.

Readings are a pure function of simulated time: ``read()`` returns the sample
of the current sample interval, time-stamped with the start of that interval,
with small noise seeded by that timestamp (so the same moment always gives the
same reading). While the conditions are ``offline`` the station keeps returning
the last sample taken before it went offline, with its old timestamp, so
consumers see the data going stale exactly as with a dead serial link.
"""
from __future__ import annotations

import bisect
import datetime as _dt
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from observatory.clock import SimClock, parse_iso

RAW_KEYS = ("sky_minus_ambient_c", "ambient_c", "wind_kph", "gust_kph", "rain")

# Raw values of each named condition; None marks the station not reporting.
CONDITIONS: dict[str, dict | None] = {
    "clear": {"sky_minus_ambient_c": -35.0, "ambient_c": 8.0, "wind_kph": 10.0, "gust_kph": 15.0, "rain": False},
    "cloudy": {"sky_minus_ambient_c": -15.0, "ambient_c": 8.0, "wind_kph": 10.0, "gust_kph": 15.0, "rain": False},
    "very_cloudy": {"sky_minus_ambient_c": -5.0, "ambient_c": 8.0, "wind_kph": 10.0, "gust_kph": 15.0, "rain": False},
    "windy": {"sky_minus_ambient_c": -35.0, "ambient_c": 8.0, "wind_kph": 60.0, "gust_kph": 80.0, "rain": False},
    "rain": {"sky_minus_ambient_c": -15.0, "ambient_c": 8.0, "wind_kph": 10.0, "gust_kph": 15.0, "rain": True},
    "offline": None,
}

POWER_STATES = ("mains", "battery")
_ENTRY_KEYS = {"after", "at", "conditions", "power", *RAW_KEYS}
_DURATION_RE = re.compile(
    r"^\s*(?:(?P<h>\d+(?:\.\d*)?)\s*h)?\s*(?:(?P<m>\d+(?:\.\d*)?)\s*m)?\s*(?:(?P<s>\d+(?:\.\d*)?)\s*s)?\s*$")


class TimelineError(ValueError):
    """A weather timeline is malformed; the message names the source, entry and problem."""


def parse_duration(value) -> float:
    """Seconds from a number or a text like "90", "90s", "45m", "2h30m", "1.5h"."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION_RE.match(text)
            if not text or match is None or not any(match.groupdict().values()):
                raise ValueError(f"invalid duration {value!r} (expected seconds or a text like 2h30m, 45m, 90s)")
            parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
            seconds = parts["h"] * 3600.0 + parts["m"] * 60.0 + parts["s"]
    else:
        raise ValueError(f"invalid duration {value!r} (expected seconds or a text like 2h30m, 45m, 90s)")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r} (must be a finite number of seconds >= 0)")
    return seconds


@dataclass(frozen=True)
class TimelineEntry:
    unix: float
    conditions: str
    values: dict | None  # complete raw values, None when offline
    power: str = "mains"  # the unit's mains power from this entry on (simulated UPS)


class WeatherTimeline:
    def __init__(self, entries: list[TimelineEntry], start_unix: float, source: str = "<inline>"):
        self.entries = tuple(entries)
        self.start_unix = float(start_unix)
        self.source = source
        self._times = [e.unix for e in self.entries]

    @classmethod
    def load(cls, path: str | Path, start_unix: float) -> "WeatherTimeline":
        source = str(path)
        text = Path(path).read_text(encoding="utf-8")
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TimelineError(f"{source}: invalid YAML: {exc}") from None
        if isinstance(document, dict):
            unknown = sorted(set(document) - {"timeline", "description"})
            if unknown:
                raise TimelineError(f"{source}: unknown top-level key(s) {', '.join(unknown)} "
                                    f"(expected timeline, description)")
            document = document.get("timeline")
        if document is None:
            document = []
        if not isinstance(document, list):
            raise TimelineError(f"{source}: expected a list of entries, got {type(document).__name__}")
        return cls.from_list(document, start_unix, source=source)

    @classmethod
    def from_list(cls, entries: list, start_unix: float, source: str = "<inline>") -> "WeatherTimeline":
        parsed: list[TimelineEntry] = []
        for number, raw in enumerate(entries, start=1):
            entry = _parse_entry(raw, start_unix, f"{source}: entry {number}")
            if parsed and entry.unix <= parsed[-1].unix:
                raise TimelineError(
                    f"{source}: entry {number}: time {_describe(entry.unix, start_unix)} is not after "
                    f"entry {number - 1} ({_describe(parsed[-1].unix, start_unix)}); "
                    f"entries must be in time order")
            parsed.append(entry)
        return cls(parsed, start_unix, source)

    def _index_at(self, unix: float) -> int:
        """Index of the entry in force at ``unix``; -1 before the first."""
        return bisect.bisect_right(self._times, unix) - 1

    def conditions_at(self, unix: float) -> dict:
        """{'conditions': name, and the raw values (None while offline)}.
        An entry takes effect at its own time, inclusive."""
        index = self._index_at(unix)
        if index < 0:
            return {"conditions": "clear", **CONDITIONS["clear"]}
        entry = self.entries[index]
        values = entry.values if entry.values is not None else dict.fromkeys(RAW_KEYS)
        return {"conditions": entry.conditions, **values}

    def power_at(self, unix: float) -> str:
        """'mains' or 'battery': the power of the entry in force at ``unix``."""
        index = self._index_at(unix)
        return "mains" if index < 0 else self.entries[index].power

    def offline_since(self, unix: float) -> float | None:
        """When the offline spell in force at ``unix`` began, or None if online."""
        index = self._index_at(unix)
        if index < 0 or self.entries[index].values is not None:
            return None
        while index > 0 and self.entries[index - 1].values is None:
            index -= 1
        return self.entries[index].unix


def _describe(unix: float, start_unix: float) -> str:
    offset = unix - start_unix
    stamp = _dt.datetime.fromtimestamp(unix, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp} = start {'+' if offset >= 0 else '-'}{abs(offset):.0f} s"


def _parse_entry(raw, start_unix: float, where: str) -> TimelineEntry:
    if not isinstance(raw, dict):
        raise TimelineError(f"{where}: expected a mapping like {{after: 2h, conditions: cloudy}}, got {raw!r}")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise TimelineError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} "
                            f"(expected after or at, conditions, power, {', '.join(RAW_KEYS)})")
    if ("after" in raw) == ("at" in raw):
        raise TimelineError(f"{where}: needs exactly one of 'after' (duration from start) or 'at' (ISO UTC time)")
    if "after" in raw:
        try:
            unix = float(start_unix) + parse_duration(raw["after"])
        except ValueError as exc:
            raise TimelineError(f"{where}: {exc}") from None
    else:
        unix = _parse_at(raw["at"], where)

    name = raw.get("conditions")
    if not isinstance(name, str) or name not in CONDITIONS:
        label = "missing conditions" if name is None else f"unknown conditions {name!r}"
        raise TimelineError(f"{where}: {label} (expected one of {', '.join(CONDITIONS)})")
    power = raw.get("power", "mains")
    if power not in POWER_STATES:
        raise TimelineError(f"{where}: power must be {' or '.join(POWER_STATES)}, got {power!r}")
    overrides = {k: raw[k] for k in RAW_KEYS if k in raw}
    if CONDITIONS[name] is None:
        if overrides:
            raise TimelineError(f"{where}: offline entries take no values, got {', '.join(overrides)}")
        return TimelineEntry(unix, name, None, power)

    values = dict(CONDITIONS[name])
    for key, value in overrides.items():
        if key == "rain":
            if not isinstance(value, bool):
                raise TimelineError(f"{where}: rain must be true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TimelineError(f"{where}: {key} must be a number, got {value!r}")
        elif key in ("wind_kph", "gust_kph") and value < 0:
            raise TimelineError(f"{where}: {key} must be >= 0, got {value!r}")
        values[key] = value if key == "rain" else float(value)
    if "gust_kph" in overrides:
        if values["gust_kph"] < values["wind_kph"]:
            raise TimelineError(f"{where}: gust_kph {values['gust_kph']:g} is below wind_kph {values['wind_kph']:g}")
    else:
        # Gusts are never weaker than the mean wind.
        values["gust_kph"] = max(values["gust_kph"], values["wind_kph"])
    return TimelineEntry(unix, name, values, power)


def _parse_at(value, where: str) -> float:
    # YAML turns an unquoted ISO time into a datetime already.
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.timestamp()
    if isinstance(value, str):
        try:
            return parse_iso(value)
        except ValueError:
            pass
    raise TimelineError(f"{where}: invalid time {value!r} for 'at' (expected ISO UTC like 2026-11-24T09:30:00)")


class SimulatedWeatherStation:
    """Samples a timeline every ``sample_interval_s`` simulated seconds."""

    def __init__(self, timeline: WeatherTimeline, clock: SimClock, sample_interval_s: float = 30.0):
        if not sample_interval_s > 0:
            raise ValueError(f"sample_interval_s must be > 0, got {sample_interval_s}")
        self.timeline = timeline
        self._clock = clock
        self.sample_interval_s = float(sample_interval_s)
        # The station starts reporting with the simulation; nothing exists before.
        self._first_sample = self._floor(timeline.start_unix)

    def _floor(self, unix: float) -> float:
        return math.floor(unix / self.sample_interval_s) * self.sample_interval_s

    def read(self) -> dict | None:
        """The latest sample, or None if the station has been offline since it
        started (it has never reported)."""
        return self.sample_at(self._clock.now())

    def sample_at(self, unix: float) -> dict | None:
        stamp = self._floor(unix)
        offline_since = self.timeline.offline_since(stamp)
        if offline_since is not None:
            # The last sample strictly before the station went quiet.
            stamp = math.ceil(offline_since / self.sample_interval_s) * self.sample_interval_s \
                - self.sample_interval_s
            if stamp < self._first_sample:
                return None
        return self._sample(stamp)

    def _sample(self, stamp: float) -> dict:
        base = self.timeline.conditions_at(stamp)
        rng = random.Random(round(stamp * 1000))
        wind = max(0.0, base["wind_kph"] + rng.gauss(0.0, 1.0))
        gust = max(wind, base["gust_kph"] + rng.gauss(0.0, 1.5))
        return {
            "timestamp": stamp,
            "sky_minus_ambient_c": round(base["sky_minus_ambient_c"] + rng.gauss(0.0, 0.3), 2),
            "ambient_c": round(base["ambient_c"] + rng.gauss(0.0, 0.1), 2),
            "wind_kph": round(wind, 1),
            "gust_kph": round(gust, 1),
            "rain": bool(base["rain"]),
            "conditions": base["conditions"],
        }

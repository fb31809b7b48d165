"""Is the weather safe? Pure rules over one weather reading.

A reading is the dict a weather station returns: ``timestamp`` (Unix seconds
of the measurement itself, not of its arrival), ``sky_minus_ambient_c``,
``wind_kph``, ``gust_kph`` and ``rain``. Every failed check adds a reason;
the weather is safe only when there are none. A stale reading is unsafe, and
its values are still checked, so the reasons also say what the last known
conditions were. Each reason starts with a fixed word (``no reading``,
``stale``, ``rain``, ``cloudy``, ``windy``, ``gusty``, ``missing``) so callers
can match on it; the rest is for people.

Limits are exclusive: a value equal to its limit is safe.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeatherLimits:
    # A warm sky relative to the ground means clouds radiating back: unsafe.
    max_sky_minus_ambient_c: float = -25.0
    max_wind_kph: float = 50.0
    max_gust_kph: float = 70.0
    max_age_s: float = 180.0


def _number(reading: dict, key: str) -> float | None:
    value = reading.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def evaluate_weather(reading: dict | None, now_unix: float,
                     limits: WeatherLimits = WeatherLimits()) -> tuple[bool, tuple[str, ...]]:
    """(safe, reasons) for ``reading`` judged at ``now_unix``."""
    if not reading:
        return False, ("no reading",)
    reasons: list[str] = []

    timestamp = _number(reading, "timestamp")
    if timestamp is None:
        reasons.append("missing timestamp")
    else:
        age = now_unix - timestamp
        if age > limits.max_age_s:
            reasons.append(f"stale (reading {age:.0f} s old > {limits.max_age_s:.0f} s)")

    rain = reading.get("rain")
    if rain is None:
        reasons.append("missing rain")
    elif rain:
        reasons.append("rain")

    sky = _number(reading, "sky_minus_ambient_c")
    if sky is None:
        reasons.append("missing sky_minus_ambient_c")
    elif sky > limits.max_sky_minus_ambient_c:
        reasons.append(f"cloudy (sky-ambient {sky:.1f} C > {limits.max_sky_minus_ambient_c:.1f} C)")

    wind = _number(reading, "wind_kph")
    if wind is None:
        reasons.append("missing wind_kph")
    elif wind > limits.max_wind_kph:
        reasons.append(f"windy (wind {wind:.1f} kph > {limits.max_wind_kph:.1f} kph)")

    # Not every station measures gusts; a missing gust is not by itself unsafe.
    gust = _number(reading, "gust_kph")
    if gust is not None and gust > limits.max_gust_kph:
        reasons.append(f"gusty (gust {gust:.1f} kph > {limits.max_gust_kph:.1f} kph)")

    return not reasons, tuple(reasons)

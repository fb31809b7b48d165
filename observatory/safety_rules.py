"""The safety kernel's rules: pure functions of their inputs and of the time
they are given, with no actor code, so that every rule and every hold can be
tested with a manual clock.

A *condition* is one reason not to observe, under a fixed key:

=============  ==============================================================
``no_reading``  the weather station has never answered
``stale``       the newest reading is older than ``max_weather_age_s``
``missing``     the reading lacks a value the rules need (timestamp, rain,
                sky-ambient, wind)
``rain``        the rain sensor is wet
``cloudy``      sky minus ambient is above its limit (warm sky: clouds)
``windy``       the mean wind is above its limit
``gusty``       a gust is above its limit
``sun``         the sun is above the observing horizon
``disk``        free space under PANDIR is below ``min_free_disk_gb`` (or
                cannot be read)
``power``       on battery for ``max_on_battery_s`` or longer, or the UPS
                does not answer
``device:X``    the safety-critical device X (mount, dome) has not answered
                a status request for more than ``device_timeout_s`` wall s
=============  ==============================================================

Hysteresis: every condition turns unsafe at once (power and devices carry
their own delay in the rule itself), and clears only after its own
``clear_after`` period of good data. Weather conditions count that period in
*measurement* time: the timestamps of the readings, so a station that goes
quiet while the rain clears does not clear the rain by silence (and
``stale`` holds meanwhile); every other condition counts in the time of the
evaluation. A condition that turns bad again while clearing starts its period
anew. Limits are exclusive: a value equal to its limit is safe.

While a condition clears, its reason says so, e.g. ``rain: waiting for 540 s
more of dry readings``; an active condition keeps the wording of
``observatory.weather_rules`` (``rain``, ``cloudy (sky-ambient ...)``, ...)
so that callers matching on those words keep working.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

WEATHER_KEYS = ("no_reading", "stale", "missing", "rain", "cloudy", "windy", "gusty")
OTHER_KEYS = ("sun", "disk", "power")

# Condition key -> the settings key of its clear-after period (simulated seconds).
CLEAR_AFTER_SETTINGS = {
    "no_reading": "stale_clear_after", "stale": "stale_clear_after", "missing": "stale_clear_after",
    "rain": "rain_clear_after", "cloudy": "cloud_clear_after", "windy": "wind_clear_after",
    "gusty": "gust_clear_after", "disk": "disk_clear_after", "power": "power_clear_after",
    "device": "device_clear_after",
}
DEFAULT_CLEAR_AFTER = {
    "no_reading": 0.0, "stale": 0.0, "missing": 0.0, "rain": 600.0, "cloudy": 300.0, "windy": 600.0,
    "gusty": 600.0, "sun": 0.0, "disk": 0.0, "power": 0.0, "device": 0.0,
}
# What a clearing condition waits for, in its reason.
_WAITING_FOR = {
    "no_reading": "readings", "stale": "fresh readings", "missing": "complete readings",
    "rain": "dry readings", "cloudy": "clear-sky readings", "windy": "readings below the wind limit",
    "gusty": "readings without gusts above the limit", "sun": "darkness",
    "disk": "free space above the limit", "power": "mains power", "device": "answers",
}


@dataclass(frozen=True)
class SafetyLimits:
    max_sky_minus_ambient_c: float = -25.0
    max_wind_kph: float = 50.0
    max_gust_kph: float = 70.0
    max_weather_age_s: float = 60.0
    horizon_deg: float = -18.0
    min_free_disk_gb: float = 1.0
    max_on_battery_s: float = 0.0
    device_timeout_s: float = 5.0          # wall seconds
    clear_after: dict = field(default_factory=lambda: dict(DEFAULT_CLEAR_AFTER))

    @classmethod
    def from_settings(cls, s: dict, horizon_deg: float) -> "SafetyLimits":
        """From the ``safety`` configuration section (keys as in observatory.config.SafetyConfig)."""
        clear = dict(DEFAULT_CLEAR_AFTER)
        for key, setting in CLEAR_AFTER_SETTINGS.items():
            if setting in s:
                clear[key] = float(s[setting])
        return cls(max_sky_minus_ambient_c=float(s["max_sky_minus_ambient"]), max_wind_kph=float(s["max_wind"]),
                   max_gust_kph=float(s["max_gust"]), max_weather_age_s=float(s["max_weather_age"]),
                   horizon_deg=float(horizon_deg), min_free_disk_gb=float(s.get("min_free_disk_gb", 1.0)),
                   max_on_battery_s=float(s.get("max_on_battery_s", 0.0)),
                   device_timeout_s=float(s.get("device_timeout", 5.0)), clear_after=clear)

    def clear_after_for(self, key: str) -> float:
        return float(self.clear_after.get(key.split(":", 1)[0], 0.0))


@dataclass(frozen=True)
class SafetyInputs:
    """Everything one evaluation looks at.

    ``reading_age_s``: how old the reading is judged to be (the caller may
    forgive delivery delays at high simulation speed); None: now - timestamp.
    ``power``: None (no UPS watched), 'mains', 'battery' or 'unknown' (the UPS
    does not answer); ``on_battery_s``: for how long it has been on battery.
    ``devices``: name -> seconds (wall) that a status request has gone
    unanswered (0 or None when the device answers), for every safety-critical
    device the unit has.
    """
    now: float
    reading: dict | None
    sun_alt_deg: float
    free_disk_gb: float | None = math.inf
    power: str | None = None
    on_battery_s: float = 0.0
    devices: dict = field(default_factory=dict)
    device_errors: dict = field(default_factory=dict)
    reading_age_s: float | None = None
    power_error: str = ""


def _number(reading: dict, key: str) -> float | None:
    value = reading.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def weather_values(reading: dict, limits: SafetyLimits) -> dict[str, str | None]:
    """The value conditions of one reading: key -> reason when bad, None when
    good; a key is absent when the reading cannot tell (value missing)."""
    out: dict[str, str | None] = {}
    missing = []
    if _number(reading, "timestamp") is None:
        missing.append("timestamp")
    rain = reading.get("rain")
    if rain is None:
        missing.append("rain")
    else:
        out["rain"] = "rain" if rain else None
    sky = _number(reading, "sky_minus_ambient_c")
    if sky is None:
        missing.append("sky_minus_ambient_c")
    else:
        out["cloudy"] = (f"cloudy (sky-ambient {sky:.1f} C > {limits.max_sky_minus_ambient_c:.1f} C)"
                         if sky > limits.max_sky_minus_ambient_c else None)
    wind = _number(reading, "wind_kph")
    if wind is None:
        missing.append("wind_kph")
    else:
        out["windy"] = (f"windy (wind {wind:.1f} kph > {limits.max_wind_kph:.1f} kph)"
                        if wind > limits.max_wind_kph else None)
    # Not every station measures gusts: a missing gust is no reason by itself.
    gust = _number(reading, "gust_kph")
    out["gusty"] = (f"gusty (gust {gust:.1f} kph > {limits.max_gust_kph:.1f} kph)"
                    if gust is not None and gust > limits.max_gust_kph else None)
    out["missing"] = "missing " + ", ".join(missing) if missing else None
    return out


def other_conditions(inputs: SafetyInputs, limits: SafetyLimits) -> dict[str, str | None]:
    """Sun, disk, power and device conditions: key -> reason when bad, None when good."""
    out: dict[str, str | None] = {}
    alt = inputs.sun_alt_deg
    out["sun"] = (f"sun up (altitude {alt:.1f} > {limits.horizon_deg:.1f} deg)"
                  if alt > limits.horizon_deg else None)
    free = inputs.free_disk_gb
    if free is None:
        out["disk"] = "disk: cannot read the free space under PANDIR"
    else:
        out["disk"] = (f"disk: {free:.2f} GB free under PANDIR < {limits.min_free_disk_gb:.2f} GB"
                       if free < limits.min_free_disk_gb else None)
    if inputs.power == "battery" and inputs.on_battery_s >= limits.max_on_battery_s:
        out["power"] = f"power: on battery for {inputs.on_battery_s:.0f} s"
    elif inputs.power == "unknown":
        out["power"] = "power: the UPS does not answer" + (f" ({inputs.power_error})" if inputs.power_error else "")
    else:
        out["power"] = None
    for name, silent in sorted(inputs.devices.items()):
        error = inputs.device_errors.get(name)
        if silent is not None and silent > limits.device_timeout_s:
            out[f"device:{name}"] = (f"{name} not answering (no status for {silent:.0f} s"
                                     + (f", last error: {error})" if error else ")"))
        else:
            out[f"device:{name}"] = None
    return out


@dataclass
class Condition:
    """One condition's hold: bad since ``since``; good again since ``clear_since``
    (None while still bad). Times in the condition's own time base."""
    key: str
    reason: str
    since: float
    clear_since: float | None = None
    last_t: float | None = None

    @property
    def phase(self) -> str:
        return "unsafe" if self.clear_since is None else "clearing"

    def to_dict(self) -> dict:
        return {"key": self.key, "reason": self.reason, "since": self.since, "clear_since": self.clear_since,
                "last_t": self.last_t}

    @classmethod
    def from_dict(cls, d: dict) -> "Condition":
        return cls(str(d["key"]), str(d["reason"]), float(d["since"]),
                   None if d.get("clear_since") is None else float(d["clear_since"]),
                   None if d.get("last_t") is None else float(d["last_t"]))


@dataclass(frozen=True)
class Assessment:
    safe: bool
    weather_safe: bool
    reasons: tuple
    conditions: dict          # key -> {"phase", "reason", "since", "clear_since"}
    signature: tuple          # ((key, phase), ...): what a change of verdict or reasons means
    changes: dict             # {"added": [...], "cleared": [...], "clearing": [...], "unsafe_again": [...]}


class SafetyKernel:
    """Holds every condition's hysteresis between evaluations."""

    def __init__(self, limits: SafetyLimits):
        self.limits = limits
        self.held: dict[str, Condition] = {}
        self.last_weather_stamp: float | None = None
        self.last_signature: tuple | None = None

    # -- hysteresis ------------------------------------------------------------

    def _update(self, key: str, reason: str | None, t: float) -> None:
        held = self.held.get(key)
        if reason:
            if held is None:
                self.held[key] = Condition(key, reason, since=t, last_t=t)
            else:
                held.reason, held.clear_since, held.last_t = reason, None, t
            return
        if held is None:
            return
        if held.clear_since is None:
            held.clear_since = t
        held.last_t = t
        if t - held.clear_since >= self.limits.clear_after_for(key):
            del self.held[key]

    def _reason(self, c: Condition) -> str:
        if c.clear_since is None:
            return c.reason
        needed = self.limits.clear_after_for(c.key)
        remaining = max(0.0, needed - ((c.last_t if c.last_t is not None else c.clear_since) - c.clear_since))
        what = _WAITING_FOR.get(c.key.split(":", 1)[0], "good readings")
        return f"{c.key}: waiting for {math.ceil(remaining):.0f} s more of {what} ({needed:.0f} s needed)"

    # -- evaluation ------------------------------------------------------------

    def assess(self, inputs: SafetyInputs) -> Assessment:
        now = inputs.now
        reading = inputs.reading or None
        self._update("no_reading", None if reading else "no reading", now)
        if reading:
            stamp = _number(reading, "timestamp")
            age = inputs.reading_age_s if inputs.reading_age_s is not None else (
                now - stamp if stamp is not None else None)
            self._update("stale", f"stale (reading {age:.0f} s old > {self.limits.max_weather_age_s:.0f} s)"
                         if age is not None and age > self.limits.max_weather_age_s else None, now)
            # A measurement counts once, in its own time; a reading without a
            # timestamp cannot be ordered and counts at every evaluation.
            if stamp is None or self.last_weather_stamp is None or stamp > self.last_weather_stamp:
                t = now if stamp is None else stamp
                for key, reason in weather_values(reading, self.limits).items():
                    self._update(key, reason, t)
                if stamp is not None:
                    self.last_weather_stamp = stamp
        else:
            self._update("stale", None, now)
        present = set()
        for key, reason in other_conditions(inputs, self.limits).items():
            present.add(key)
            self._update(key, reason, now)
        for key in [k for k in self.held if k.startswith("device:") and k not in present]:
            del self.held[key]          # a device the unit no longer has

        order = {k: i for i, k in enumerate(WEATHER_KEYS + OTHER_KEYS)}
        keys = sorted(self.held, key=lambda k: (order.get(k, len(order)), k))
        conditions = {k: {"phase": self.held[k].phase, "reason": self._reason(self.held[k]),
                          "since": self.held[k].since, "clear_since": self.held[k].clear_since} for k in keys}
        signature = tuple((k, self.held[k].phase) for k in keys)
        before = dict(self.last_signature or ())
        after = dict(signature)
        changes = {
            "added": [k for k in after if k not in before],
            "cleared": [k for k in before if k not in after],
            "clearing": [k for k in after if after[k] == "clearing" and before.get(k) == "unsafe"],
            "unsafe_again": [k for k in after if after[k] == "unsafe" and before.get(k) == "clearing"],
        }
        self.last_signature = signature
        return Assessment(safe=not keys, weather_safe=not any(k in WEATHER_KEYS for k in keys),
                          reasons=tuple(c["reason"] for c in conditions.values()), conditions=conditions,
                          signature=signature, changes=changes)

    # -- persistence (a restarted kernel must not forget a hold) ---------------

    def to_dict(self) -> dict:
        return {"held": [c.to_dict() for c in self.held.values()], "last_weather_stamp": self.last_weather_stamp}

    def restore(self, state: dict) -> None:
        self.held = {}
        for d in state.get("held", []):
            c = Condition.from_dict(d)
            if not c.key.startswith("device:"):     # device health is re-measured, not remembered
                self.held[c.key] = c
        stamp = state.get("last_weather_stamp")
        self.last_weather_stamp = None if stamp is None else float(stamp)

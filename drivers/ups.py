"""Is the unit on mains or on battery? The UPS drivers the safety kernel reads.

Every driver has ``read() -> dict`` returning at least ``{"power": "mains" |
"battery" | "unknown"}`` (plus what the UPS tells: charge, runtime, its raw
status, an ``error`` when it could not be read). ``read()`` never raises: a
UPS that cannot be read is ``unknown``, which the safety rules treat as
unsafe.

Drivers (``safety.ups_driver``):

``none``
    No UPS is watched; the power rule is off. ``make_ups`` returns None.
``simulator``
    Follows the ``power: mains|battery`` keys of a weather timeline file
    (``simulators/weather.py``; absent keys mean mains), re-read whenever the
    file changes, so a test or an operator can cut the power of a running
    simulation. The file is ``safety.ups_timeline``, else the unit's weather
    timeline when the supervisor passes it (setting ``weather_timeline``);
    with neither, the simulated UPS is on mains all the time.
``nut``
    Network UPS Tools: runs ``upsc <ups_name>`` (``safety.ups_command``,
    default ``upsc``; ``ups_name`` default ``ups@localhost``) with a timeout
    and reads ``ups.status``: a status with ``OB`` (on battery) is
    ``battery``, with ``OL`` (on line) ``mains``; anything else, a failed
    command or a timeout is ``unknown``.
"""
from __future__ import annotations

import os
import subprocess

UPS_DRIVERS = ("none", "simulator", "nut")


def parse_upsc(text: str) -> dict:
    """``upsc`` output (``key: value`` lines) -> {"power", "status", "charge_pct", "runtime_s", "raw"}."""
    raw = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            raw[key.strip()] = value.strip()
    status = raw.get("ups.status", "")
    flags = status.split()
    power = "battery" if "OB" in flags else "mains" if "OL" in flags else "unknown"
    out = {"power": power, "status": status, "raw": raw}
    for key, name in (("battery.charge", "charge_pct"), ("battery.runtime", "runtime_s")):
        try:
            out[name] = float(raw[key])
        except (KeyError, ValueError):
            pass
    if power == "unknown":
        out["error"] = f"ups.status {status!r} says neither OL nor OB" if status else "no ups.status in upsc output"
    return out


class NutUPS:
    def __init__(self, ups_name: str = "ups@localhost", command: str = "upsc", timeout_s: float = 3.0):
        self.ups_name, self.command, self.timeout_s = ups_name, command, float(timeout_s)

    def read(self) -> dict:
        try:
            done = subprocess.run([self.command, self.ups_name], capture_output=True, text=True,
                                  timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {"power": "unknown", "error": f"{self.command} {self.ups_name}: no answer in {self.timeout_s:g} s"}
        except OSError as e:
            return {"power": "unknown", "error": f"{self.command}: {e.strerror or e}"}
        if done.returncode != 0:
            err = (done.stderr or done.stdout).strip().splitlines()
            return {"power": "unknown",
                    "error": f"{self.command} {self.ups_name} exited {done.returncode}: {err[-1] if err else ''}"}
        return parse_upsc(done.stdout)


class SimulatedUPS:
    """Power from a weather timeline's ``power`` keys, at the clock's time."""

    def __init__(self, clock, timeline_path: str | None = None, start_unix: float | None = None):
        self.clock = clock
        self.path = timeline_path
        if isinstance(start_unix, str):
            from observatory.clock import parse_iso
            start_unix = parse_iso(start_unix)
        self.start_unix = clock.start_unix if start_unix is None else float(start_unix)
        self._mtime = None
        self._timeline = None
        self.error = ""

    def _load(self):
        from simulators.weather import TimelineError, WeatherTimeline
        if not self.path:
            return
        try:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime != self._mtime:
                self._timeline = WeatherTimeline.load(self.path, self.start_unix)
                self._mtime, self.error = mtime, ""
        except (OSError, TimelineError) as e:
            # Keep the last good timeline (as the weather actor does); say why.
            self.error = str(e)

    def read(self) -> dict:
        self._load()
        now = self.clock.now()
        power = self._timeline.power_at(now) if self._timeline is not None else "mains"
        out = {"power": power, "timestamp": now}
        if self.error:
            out["error"] = self.error
        return out


def make_ups(settings: dict, clock):
    """The UPS driver ``settings`` (the safety section) ask for, or None for ``none``."""
    driver = settings.get("ups_driver", "simulator")
    if driver == "none":
        return None
    if driver == "simulator":
        path = settings.get("ups_timeline") or settings.get("weather_timeline")
        return SimulatedUPS(clock, path, settings.get("timeline_start_unix"))
    if driver == "nut":
        return NutUPS(settings.get("ups_name", "ups@localhost"), settings.get("ups_command", "upsc"),
                      settings.get("ups_timeout", 3.0))
    raise ValueError(f"unknown UPS driver {driver!r} (expected one of {', '.join(UPS_DRIVERS)})")


class BatteryClock:
    """Since when (simulated time) the power has been on battery."""

    def __init__(self):
        self.since: float | None = None

    def update(self, power: str | None, now: float) -> float:
        if power == "battery":
            if self.since is None:
                self.since = now
            return now - self.since
        self.since = None
        return 0.0


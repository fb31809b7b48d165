"""Simulated dome, focuser and filter wheel on the shared simulated clock.

Like the simulated mount, motion is a pure function of simulated time: a
command records where the device was, where it is going and when it started;
``status()`` works out where it is now. No threads, no sleeps, so they run at
any clock speed and an actor polls them without blocking.

Their driver interface is the one the INDI drivers in ``drivers/indi_devices.py``
offer, so an actor does not know which it drives:

    dome         connect(), status() -> {"shutter": open|closed|opening|closing},
                 open_shutter(wait=False), close_shutter(wait=False), disconnect()
    focuser      connect(), status() -> {"position", "target", "moving"},
                 move_to(position, wait=False), disconnect()
    filter wheel connect(), status() -> {"slot", "filter", "moving"}, names(),
                 set_filter(name_or_slot, wait=False), disconnect()

With ``state_file`` the state is kept on disk (the hardware remembers where it
is when the actor driving it restarts); an unreadable file is moved aside and
the device starts at its rest position (dome closed, focuser at 0, slot 1).
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from drivers.accessory import AccessoryError, slot_for
from observatory.clock import SimClock

log = logging.getLogger(__name__)


def _number(kind: str, key: str, value, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{kind} setting {key} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{kind} setting {key} must be >= {minimum}, got {value}")
    return float(value)


class _Accessory:
    kind = "device"
    DEFAULTS: dict = {}

    def __init__(self, settings: dict | None, clock: SimClock, state_file: str | Path | None = None):
        given = dict(settings or {})
        unknown = sorted(set(given) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(f"unknown simulated {self.kind} setting(s) {', '.join(unknown)} "
                             f"(known: {', '.join(self.DEFAULTS)})")
        self.settings = self._validated({**self.DEFAULTS, **given})
        self._clock = clock
        self._connected = False
        # One motion: from `start` at t0 towards `goal` at `rate` units per simulated second.
        self._start, self._goal, self._t0 = self._rest(), self._rest(), clock.now()
        self.state_file = Path(state_file) if state_file is not None else None
        if self.state_file is not None:
            self._load()

    # -- for subclasses
    def _validated(self, s: dict) -> dict:
        return s

    def _rest(self) -> float:
        return 0.0

    def _rate(self) -> float:
        raise NotImplementedError

    # -- common
    def connect(self) -> dict:
        self._connected = True
        return {"model": f"simulated {self.kind}", **self.status()}

    def disconnect(self) -> None:
        self._connected = False

    def _ready(self) -> None:
        if not self._connected:
            raise AccessoryError(f"simulated {self.kind} is not connected")

    def _now_value(self) -> float:
        elapsed = max(0.0, self._clock.now() - self._t0)
        travel = self._rate() * elapsed
        delta = self._goal - self._start
        return self._start + math.copysign(min(travel, abs(delta)), delta)

    def _moving(self) -> bool:
        return self._now_value() != self._goal

    def _move(self, goal: float) -> None:
        self._ready()
        self._start, self._goal, self._t0 = self._now_value(), float(goal), self._clock.now()
        self._save()

    def seconds_to_arrive(self) -> float:
        return abs(self._goal - self._now_value()) / self._rate()

    # -- persistence
    def _save(self) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"start": self._start, "goal": self._goal, "t0": self._t0}))
        os.replace(tmp, self.state_file)

    def _load(self) -> None:
        path = self.state_file
        if not path.exists():
            self._save()
            return
        try:
            doc = json.loads(path.read_text())
            start, goal, t0 = float(doc["start"]), float(doc["goal"]), float(doc["t0"])
            if not all(map(math.isfinite, (start, goal, t0))):
                raise ValueError("non-finite value")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = path.with_name(path.name + ".corrupt")
            log.warning("%s state file %s is unreadable (%s); moved it to %s", self.kind, path, exc, aside)
            os.replace(path, aside)
            self._save()
            return
        self._start, self._goal, self._t0 = start, goal, t0


class SimulatedDome(_Accessory):
    """A dome or roll-off roof shutter. Position 0 = closed, 1 = open.

    Settings: shutter_time_s (60.0) simulated seconds for a full open or close.
    """
    kind = "dome"
    DEFAULTS = {"shutter_time_s": 60.0}

    def _validated(self, s):
        s["shutter_time_s"] = _number("dome", "shutter_time_s", s["shutter_time_s"], 0.0)
        return s

    def _rate(self):
        return 1.0 / max(self.settings["shutter_time_s"], 1e-6)

    def shutter_state(self) -> str:
        value = self._now_value()
        if value == self._goal:
            return "open" if value >= 1.0 else "closed" if value <= 0.0 else "unknown"
        return "opening" if self._goal > value else "closing"

    def status(self) -> dict:
        return {"shutter": self.shutter_state(), "remaining_s": round(self.seconds_to_arrive(), 2)}

    def open_shutter(self, wait: bool = False) -> str:
        self._move(1.0)
        return self.shutter_state()

    def close_shutter(self, wait: bool = False) -> str:
        self._move(0.0)
        return self.shutter_state()


class SimulatedFocuser(_Accessory):
    """An absolute focuser in steps.

    Settings: max_position (10000), speed_steps_s (500.0), initial_position (0).
    """
    kind = "focuser"
    DEFAULTS = {"max_position": 10000, "speed_steps_s": 500.0, "initial_position": 0}

    def _validated(self, s):
        for key in ("max_position", "initial_position"):
            if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 0:
                raise ValueError(f"focuser setting {key} must be a whole number >= 0, got {s[key]!r}")
        if s["initial_position"] > s["max_position"]:
            raise ValueError(f"focuser setting initial_position {s['initial_position']} is beyond "
                             f"max_position {s['max_position']}")
        s["speed_steps_s"] = _number("focuser", "speed_steps_s", s["speed_steps_s"], 1e-6)
        return s

    def _rest(self):
        return float(self.settings["initial_position"])

    def _rate(self):
        return self.settings["speed_steps_s"]

    def position(self) -> int:
        return int(round(self._now_value()))

    def status(self) -> dict:
        return {"position": self.position(), "target": int(self._goal), "moving": self._moving()}

    def move_to(self, position: int, wait: bool = False) -> int:
        if isinstance(position, bool) or not isinstance(position, (int, float)) or not math.isfinite(position):
            raise AccessoryError(f"invalid focuser position {position!r}")
        target = int(round(position))
        if not 0 <= target <= self.settings["max_position"]:
            raise AccessoryError(f"focuser position {target} is outside 0-{self.settings['max_position']}")
        self._move(target)
        return target


class SimulatedFilterWheel(_Accessory):
    """A filter wheel; slots are counted from 1.

    Settings: filters (["L", "R", "G", "B"]), seconds_per_slot (1.0).
    """
    kind = "filter wheel"
    DEFAULTS = {"filters": ["L", "R", "G", "B"], "seconds_per_slot": 1.0}

    def _validated(self, s):
        f = s["filters"]
        if not isinstance(f, list) or not f or not all(isinstance(n, str) and n for n in f):
            raise ValueError(f"filter wheel setting filters must be a list of filter names, got {f!r}")
        if len(set(f)) != len(f):
            raise ValueError(f"filter wheel setting filters has duplicate names: {f}")
        s["seconds_per_slot"] = _number("filter wheel", "seconds_per_slot", s["seconds_per_slot"], 1e-6)
        return s

    def _rest(self):
        return 1.0

    def _rate(self):
        return 1.0 / self.settings["seconds_per_slot"]

    def names(self) -> list[str]:
        return list(self.settings["filters"])

    def status(self) -> dict:
        slot = int(round(self._now_value()))
        return {"slot": slot, "filter": self.settings["filters"][slot - 1], "moving": self._moving()}

    def set_filter(self, which, wait: bool = False) -> int:
        slot = slot_for(which, self.names(), "simulated filter wheel")
        self._move(slot)
        return slot


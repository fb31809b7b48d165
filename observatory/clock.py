"""One clock for the whole unit, with a speed factor.

Every process (supervisor, device actors, simulators) builds its own
``SimClock`` from the same three numbers, so they all agree on the simulated
time without talking to each other: simulated time advances ``speed`` seconds
per wall second from ``start_unix`` at wall time ``wall_origin``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone


@dataclass(frozen=True)
class SimClock:
    start_unix: float
    speed: float = 1.0
    wall_origin: float = 0.0

    @classmethod
    def starting_now(cls, start_unix: float | None = None, speed: float = 1.0) -> "SimClock":
        wall = time.time()
        if speed <= 0:
            raise ValueError(f"clock speed must be > 0, got {speed}")
        return cls(start_unix=wall if start_unix is None else float(start_unix),
                   speed=float(speed), wall_origin=wall)

    def to_dict(self) -> dict:
        return {"start_unix": self.start_unix, "speed": self.speed, "wall_origin": self.wall_origin}

    @classmethod
    def from_dict(cls, d: dict) -> "SimClock":
        return cls(float(d["start_unix"]), float(d["speed"]), float(d["wall_origin"]))

    def now(self) -> float:
        """Simulated time now, as Unix seconds (UTC)."""
        return self.start_unix + (time.time() - self.wall_origin) * self.speed

    def sim_at_wall(self, wall_unix: float) -> float:
        return self.start_unix + (wall_unix - self.wall_origin) * self.speed

    def wall_at_sim(self, sim_unix: float) -> float:
        return self.wall_origin + (sim_unix - self.start_unix) / self.speed

    def wall_seconds(self, sim_seconds: float) -> float:
        """How long ``sim_seconds`` of simulated time lasts on the wall clock."""
        return max(0.0, sim_seconds / self.speed)

    def sleep(self, sim_seconds: float) -> None:
        time.sleep(self.wall_seconds(sim_seconds))

    def sleep_until(self, sim_unix: float) -> None:
        delay = self.wall_at_sim(sim_unix) - time.time()
        if delay > 0:
            time.sleep(delay)

    def now_iso(self) -> str:
        return iso(self.now())


def iso(unix: float) -> str:
    """ISO 8601 UTC with millisecond precision, e.g. 2026-11-24T03:00:00.000"""
    return datetime.fromtimestamp(unix, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def parse_iso(text: str) -> float:
    """Parse an ISO UTC time (naive means UTC) into Unix seconds."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()

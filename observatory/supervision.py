"""Child specifications and restart policy, in the style of Erlang/OTP
supervisors: each child of the unit's supervisor is described by data (how
to restart it, how often it may crash, how long to wait between restarts),
and a pure ``RestartPolicy`` decides, crash by crash, what to do.

Restart kinds
    permanent  always restarted (every device and service of the unit)
    transient  restarted only after an abnormal end (a crash, a kill, a hang)
    temporary  never restarted: the first crash marks it failed

Budget and back-off
    At most ``max_restarts`` restarts within ``period_s`` wall seconds; one
    more crash in that window spends the budget (the caller escalates). The
    first restart after a quiet spell is immediate (a killed camera is back in
    well under a second); each further crash inside the window waits twice
    as long as the previous one, from ``backoff_initial_s`` up to
    ``backoff_max_s``, so a device that crashes on start-up does not spin.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

RestartKind = Literal["permanent", "transient", "temporary"]


@dataclass(frozen=True)
class ChildSpec:
    name: str
    role: str
    restart: RestartKind = "permanent"
    max_restarts: int = 5
    period_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    vital: bool = False          # without it the unit cannot observe: a spent budget parks and ends the run

    def __post_init__(self):
        if self.restart not in ("permanent", "transient", "temporary"):
            raise ValueError(f"{self.name}: restart must be permanent, transient or temporary, got {self.restart!r}")
        if self.max_restarts < 0 or self.period_s <= 0 or self.backoff_initial_s < 0 \
                or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"{self.name}: bad restart budget or back-off")


@dataclass(frozen=True)
class Decision:
    action: Literal["restart", "give_up", "ignore"]
    delay_s: float = 0.0
    reason: str = ""


@dataclass
class RestartPolicy:
    spec: ChildSpec
    history: deque = field(default_factory=deque)     # wall times of the restarts inside the window

    def on_exit(self, now: float, abnormal: bool = True) -> Decision:
        """The child ended (``abnormal``: crashed, was killed, hung). What now?"""
        s = self.spec
        if s.restart == "temporary":
            return Decision("give_up", reason=f"{s.name} is temporary: not restarted")
        if s.restart == "transient" and not abnormal:
            return Decision("ignore", reason=f"{s.name} ended normally (transient)")
        while self.history and now - self.history[0] > s.period_s:
            self.history.popleft()
        if len(self.history) >= s.max_restarts:
            return Decision("give_up", reason=f"restart budget spent ({s.max_restarts} restarts in "
                                              f"{s.period_s:.0f} s)")
        recent = len(self.history)
        delay = 0.0 if recent == 0 else min(s.backoff_max_s, s.backoff_initial_s * 2 ** (recent - 1))
        self.history.append(now + delay)
        return Decision("restart", delay_s=delay,
                        reason=f"restart {recent + 1} of {s.max_restarts} within {s.period_s:.0f} s"
                               + (f", after {delay:g} s back-off" if delay else ""))

    @property
    def restarts_in_window(self) -> int:
        return len(self.history)


def child_specs(children: list[tuple[str, str]], supervision: dict, vital_roles) -> dict[str, ChildSpec]:
    """Specs for (name, role) pairs from the ``supervision`` configuration: the
    unit-wide budget, overridden per child by ``supervision.children.<name>``."""
    per_child = supervision.get("children") or {}
    specs = {}
    for name, role in children:
        base = dict(max_restarts=supervision["max_restarts"], period_s=supervision["restart_period"],
                    backoff_initial_s=supervision.get("backoff_initial", 0.5),
                    backoff_max_s=supervision.get("backoff_max", 30.0))
        base.update({k: v for k, v in (per_child.get(name) or {}).items() if v is not None})
        specs[name] = ChildSpec(name=name, role=role, vital=role in vital_roles, **base)
    return specs


class StuckWatch:
    """Notices a sequence step that waits for nothing. ``observe`` is called on
    every tick with whether anything is under way (a deadline, exposures, a
    focus run, an operator hold...) and the step's identity (state and when it
    was entered); it returns the seconds the step has been idle, simulated,
    once it has been idle for both ``sim_s`` simulated and ``wall_s`` wall
    seconds, and None otherwise. A new step, or anything under way, starts the
    count again; after it fires, the count starts again too."""

    def __init__(self, sim_s: float, wall_s: float):
        self.sim_s, self.wall_s = sim_s, wall_s
        self.since: tuple | None = None       # (step, sim, wall)

    def observe(self, busy: bool, step, sim: float, wall: float) -> float | None:
        if busy:
            self.since = None
            return None
        if self.since is None or self.since[0] != step:
            self.since = (step, sim, wall)
            return None
        _, since_sim, since_wall = self.since
        if sim - since_sim >= self.sim_s and wall - since_wall >= self.wall_s:
            self.since = None
            return sim - since_sim
        return None

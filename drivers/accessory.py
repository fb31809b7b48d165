"""What the dome, focuser and filter wheel drivers (simulated and INDI) share."""
from __future__ import annotations

from pathlib import Path


class AccessoryError(RuntimeError):
    """A dome, focuser or filter wheel refused a command (bad argument, out of range, not connected)."""


def slot_for(which, names: list[str], device: str) -> int:
    """The slot (counted from 1) for a filter given by name or by slot number."""
    if isinstance(which, str) and which in names:
        return names.index(which) + 1
    if isinstance(which, str) and which.isdigit():
        which = int(which)
    if isinstance(which, int) and not isinstance(which, bool) and 1 <= which <= len(names):
        return which
    raise AccessoryError(f"{device}: no filter {which!r} (filters: {', '.join(names)})")


def make_accessory_driver(role: str, name: str, settings: dict, clock, pandir: str | None):
    driver = settings.get("driver", "simulator")
    own = settings.get("settings", {})
    if driver == "simulator":
        from simulators import accessories as sim
        cls = {"dome": sim.SimulatedDome, "focuser": sim.SimulatedFocuser,
               "filterwheel": sim.SimulatedFilterWheel}[role]
        # The state file is the hardware's memory: it outlives this actor.
        state_file = Path(pandir) / "run" / "sim" / f"{name}.json" if pandir else None
        return cls(own, clock, state_file=state_file)
    if driver == "indi":
        from drivers import indi
        cls = {"dome": indi.IndiDome, "focuser": indi.IndiFocuser, "filterwheel": indi.IndiFilterWheel}[role]
        return cls(own, clock)
    raise ValueError(f"unknown {role} driver {driver!r}")

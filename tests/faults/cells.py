"""The shapes of the matrix's cells, shared by the device modules."""
from __future__ import annotations

import time

DIED = {"kill": "{t} actor died%", "exit": "{t} actor died%", "hang": "{t} hung (no heartbeat%"}


def process_fault(fired, target: str, kind: str) -> None:
    """The actor's process is killed, exits or hangs: it is restarted through
    the normal path, re-synced, and the unit observes again."""
    wall, sim = fired.inject(target, kind)
    fired.wait_restarted(target, wall, timeout=40)
    fired.wait_observing(sim)
    fired.assert_explained(wall, target, kind, DIED[kind].format(t=target), f"{target} restarted%")
    fired.assert_files_agree()


def raised_fault(fired, target: str, failed: str) -> None:
    """The actor's next command raises: the sender gets CommandFailed, the
    actor lives on (no restart), and the unit observes again."""
    pid = fired.actor(target)["pid"]
    wall, sim = fired.inject(target, "raise")
    fired.unit.wait_for(lambda: fired.events_after(wall, "message LIKE ?", (failed,)), 90, f"{failed!r}")
    fired.wait_observing(sim)
    fired.assert_explained(wall, target, "raise", failed)
    assert fired.actor(target)["pid"] == pid, "a raised exception must not cost the actor its process"
    fired.assert_files_agree()


def wire_fault(fired, target: str, kind: str, *, hold_s: float = 0.0, explained=(), **params) -> None:
    """The device's simulator misbehaves at the wire (for ``times`` replies, or
    until told to behave after ``hold_s``): the driver reports it, the unit
    stays safe, and it observes again once the device answers."""
    wall, sim = fired.inject(target, kind, **params)
    if hold_s:
        time.sleep(hold_s)
        _, sim = fired.inject(target, "behave", settle=False)
    fired.wait_observing(sim, timeout=120)
    fired.assert_explained(wall, target, kind, *explained)
    fired.assert_files_agree()

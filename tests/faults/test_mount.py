"""Faults x the mount (the iOptron driver talking to its wire simulator)."""
import pytest

from tests.faults.cells import process_fault, wire_fault


@pytest.mark.parametrize("kind", ["kill", "exit", "hang"])
def test_mount_process(fired, kind):
    process_fault(fired, "mount", kind)


@pytest.mark.parametrize("kind", ["timeout", "garbage", "half", "slow"])
def test_mount_wire(fired, kind):
    wire_fault(fired, "mount", kind, times=4, delay_s=1.5)


def test_mount_disconnect(fired):
    # The port vanishes for a while: the mount's health check fails (unsafe:
    # the unit parks, and cannot while the port is gone), then it comes back.
    wire_fault(fired, "mount", "disconnect", hold_s=8.0, explained=("%mount not answering%",))

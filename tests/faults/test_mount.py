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


def test_mount_exit_slow_to_reconnect(fired):
    # The mount actor dies and its successor takes longer to reconnect (replies
    # late): the frame loop reaches tracking while no mount actor is ready. Once
    # the mount is back the unit must track and observe again at once, not wait
    # in tracking for a confirmation nobody will send (a CI run lost its night
    # that way). The safety kernel may park meanwhile if the mount is silent past
    # its device_timeout; no other timeout or backstop may be needed.
    wall, _ = fired.inject("mount", "slow", times=2, delay_s=0.7)
    _, sim = fired.inject("mount", "exit", settle=False)
    fired.wait_restarted("mount", wall, timeout=60)
    fired.wait_observing(sim, timeout=60)
    fired.assert_explained(wall, "mount", "exit", "mount actor died%", "mount restarted%")
    parked = [m for _, m in fired.events_after(wall, "kind='state' AND message LIKE ?", ("%-> parking%",))
              if "mount not answering" not in m]
    assert not parked, f"the unit parked while the mount reconnected: {parked}"
    assert not fired.events_after(wall, "message LIKE ? OR message LIKE ?",
                                  ("nothing under way%", "timed out waiting for the mount back%"))
    fired.assert_files_agree()

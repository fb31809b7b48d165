"""Faults x the dome and a focuser."""
import pytest

from tests.faults.cells import process_fault


@pytest.mark.parametrize("kind", ["kill", "exit", "hang"])
def test_dome_process(fired, kind):
    process_fault(fired, "dome", kind)


@pytest.mark.parametrize("kind", ["kill", "exit", "hang"])
def test_focuser_process(fired, kind):
    process_fault(fired, "foc00", kind)
    # The focuser came back where the unit wants it.
    assert fired.unit.status()["devices"]["foc00"]["position"] == 5000

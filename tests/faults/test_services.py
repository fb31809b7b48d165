"""Faults x the unit's services: scheduler, weather station, safety kernel,
archive (the single DB writer) and analysis."""
import pytest

from tests.faults.cells import process_fault, raised_fault, wire_fault


@pytest.mark.parametrize("target", ["scheduler", "weather", "safety", "archive", "analysis"])
@pytest.mark.parametrize("kind", ["kill", "exit", "hang"])
def test_service_process(fired, target, kind):
    process_fault(fired, target, kind)


def test_scheduler_raise(fired):
    raised_fault(fired, "scheduler", "scheduler: % failed: RuntimeError: injected fault%")


def test_analysis_raise(fired):
    raised_fault(fired, "analysis", "analysis: AnalyzeFrame failed: RuntimeError: injected fault%")


def test_weather_station_garbage(fired):
    wire_fault(fired, "weather", "garbage", times=6)


def test_weather_station_disconnect_goes_stale_and_parks(fired):
    wire_fault(fired, "weather", "disconnect", hold_s=6.0, explained=("UNSAFE: %stale%",))


def test_weather_unsafe_parks_within_the_bound_and_resumes(fired):
    wall, sim = fired.inject("weather", "unsafe", seconds=120)
    parked = fired.unit.wait_for(lambda: fired.events_after(
        wall, "kind='state' AND message LIKE ?", ("%-> parked%",)), 30, "parked")
    parked_wall = fired.unit.query("SELECT MIN(wall_unix) FROM events WHERE kind='state' AND message LIKE "
                                   "'%-> parked%' AND wall_unix >= ?", (wall,))[0][0]
    assert parked_wall - wall < 10.0, "parked and closed within 10 wall s (600 simulated s) of the rain"
    assert parked
    closed = fired.events_after(wall, "message = 'dome: close done'")
    assert closed, "the dome closed with the park"
    fired.wait_observing(sim + 120, timeout=120)
    fired.assert_explained(wall, "weather", "unsafe", "UNSAFE: %rain%", "safe")
    fired.assert_files_agree()


def test_disk_full_parks_and_resumes_when_space_returns(fired):
    wall, sim = fired.inject("safety", "disk_full", seconds=120)
    fired.unit.wait_for(lambda: fired.events_after(wall, "kind='state' AND message LIKE ?", ("%-> parked%",)),
                        30, "parked while the disk is full")
    fired.wait_observing(sim + 120, timeout=120)
    fired.assert_explained(wall, "safety", "disk_full", "UNSAFE: %disk%")
    fired.assert_files_agree()

"""Faults x the cameras (simulated DSLRs): the primary and the second camera."""
import pytest

from tests.faults.cells import process_fault, raised_fault


@pytest.mark.parametrize("camera", ["cam00", "cam01"])
@pytest.mark.parametrize("kind", ["kill", "exit", "hang"])
def test_camera_process(fired, camera, kind):
    process_fault(fired, camera, kind)


@pytest.mark.parametrize("camera", ["cam00", "cam01"])
def test_camera_raise(fired, camera):
    raised_fault(fired, camera, f"{camera}: StartExposure failed: RuntimeError: injected fault%")


@pytest.mark.parametrize("camera", ["cam00", "cam01"])
def test_camera_readout_error(fired, camera):
    wall, sim = fired.inject(camera, "error")
    fired.unit.wait_for(lambda: fired.events_after(wall, "message LIKE ?", (f"{camera}: exposure failed%",)),
                        60, "the failed readout reported")
    fired.wait_observing(sim, frames=2)
    fired.assert_explained(wall, camera, "error", f"{camera}: exposure failed%")
    fired.assert_files_agree()


def test_camera_readout_hang(fired):
    # The readout never ends: the round's deadline drops the camera, its
    # exposure is aborted, and it is used again from the next round.
    wall, sim = fired.inject("cam01", "hang_readout")
    fired.unit.wait_for(lambda: fired.events_after(wall, "message LIKE ?", ("cam01: no frame within the deadline%",)),
                        60, "the hung readout dropped")
    fired.unit.wait_for(lambda: fired.science_after(sim, "cam01") >= 1, 90, "cam01 delivering again")
    fired.assert_explained(wall, "cam01", "hang_readout", "cam01: no frame within the deadline%")
    fired.assert_files_agree()


def test_cloud_over_one_camera_flags_its_frames(fired):
    # Clouds the sky sensor does not see (a local patch): the star count drops
    # on cam01, its frames are flagged in the database, the unit goes on.
    wall, sim = fired.inject("cam01", "cloud", transparency=0.02, seconds=400)
    flagged = fired.unit.wait_for(lambda: fired.unit.query(
        "SELECT COUNT(*) FROM exposures WHERE camera='cam01' AND cloud_flag=1")[0][0], 90, "a cloud flag")
    assert flagged >= 1
    assert not fired.unit.query("SELECT 1 FROM exposures WHERE camera='cam00' AND cloud_flag=1")
    fired.assert_explained(wall, "cam01", "cloud", "cam01: % stars in % typical: cloud flag")
    fired.assert_files_agree()

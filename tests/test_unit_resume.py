"""A whole-service crash in the middle of an observation (every process of the
unit SIGKILLed at once, as in a power cut or an OOM kill), then a new run on
the same data directory: the unit resumes the interrupted observation where
it stopped, and every frame on disk has exactly one record."""
import os
import signal
import time

from observatory.clock import iso
from tests.test_unit_faults import DARK_START, science_count, sim_now
from tests.unit_runner import RunningUnit, own_processes


def _kill_everything(unit) -> None:
    for pid in own_processes(str(unit.pandir)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    unit.proc.wait(10)
    deadline = time.time() + 10
    while own_processes(str(unit.pandir)) and time.time() < deadline:
        time.sleep(0.1)
    assert not own_processes(str(unit.pandir))


def test_whole_service_crash_resumes_the_observation_and_loses_no_frame(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = RunningUnit(tmp_path / "a", start=DARK_START, speed=60)
    try:
        # Two rounds of the observation under way, and its next exposure started (an
        # observation cut short earlier, e.g. by a pause on a busy machine, does not count).
        first.wait_for(lambda: science_count(first, "cam00") >= 3, 150, "three science rounds")
        first.wait_for(lambda: (first.status().get("observation") or {}).get("frames", 0) >= 2
                       and first.status().get("state") == "observing", 120,
                       "an exposure under way after two rounds of one observation", interval=0.02)
        time.sleep(0.3)
        observation = first.status()["observation"]
        crashed_at = sim_now(first)
        _kill_everything(first)
    finally:
        first.kill()
    frames_before = observation["frames"]
    assert frames_before >= 2

    second = RunningUnit(tmp_path / "b", start=iso(crashed_at), speed=60, pandir=first.pandir,
                         config=first.config)
    try:
        resumed = second.wait_for(lambda: second.query(
            "SELECT message FROM events WHERE kind='resume' AND message LIKE 'resuming %'"), 90, "the resume")
        # status.json lags the journal by up to half a second: a round may have been
        # counted between reading it and the crash.
        assert any(f"resuming {observation['field']} at frame {n} " in resumed[0][0]
                   for n in (frames_before, frames_before + 1)), resumed
        second.wait_for(lambda: second.query(
            "SELECT COUNT(*) FROM exposures WHERE observation_id=? AND camera='cam00' AND image_type='science' "
            "AND start_unix > ?", (observation["id"], crashed_at))[0][0] >= 2, 90,
            "the same observation going on after the restart")
        assert second.terminate() == 0
    finally:
        second.kill()

    # One record per frame on disk, one frame per record, nothing half-written.
    rows = second.query("SELECT id, path FROM exposures")
    paths = [p for _, p in rows]
    on_disk = {str(p) for p in (first.pandir / "images").rglob("*.fits")}
    assert len(paths) == len(set(paths)) and set(paths) == on_disk
    assert not list((first.pandir / "images").rglob(".*.part"))
    status = second.query("SELECT status, exposures FROM observations WHERE id=?", (observation["id"],))[0]
    assert status[1] >= frames_before + 2
    # The crash itself is explained: the in-flight exposures were either recorded or declared lost.
    settled = second.query("SELECT message FROM events WHERE kind='resume' AND (message LIKE '%recorded' "
                           "OR message LIKE '%lost in the restart%')")
    assert settled, "the exposures under way at the crash are accounted for"

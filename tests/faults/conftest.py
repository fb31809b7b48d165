"""The fault-injection matrix: one running unit per test module (a device
group), faults injected through the operator channel (`fault TARGET KIND`),
one test per cell of faults x devices.

Every cell asserts the same four things:
  1. the fault was injected (the supervisor accepted it, and says so in the event log);
  2. the unit recovers or degrades as designed (a restart, an error then
     recovery, or parking while unsafe and resuming), and observes again;
  3. the event log explains what happened after the injection;
  4. the database and the files agree one for one (no frame lost, duplicated
     or half-written).
At the end of each module the unit is stopped and must end parked, with the
dome closed.
"""
from __future__ import annotations

import time

import pytest

from observatory import control
from tests.test_unit_faults import DARK_START, sim_now
from tests.unit_runner import RunningUnit

FAST_SUPERVISION = {
    "supervision.heartbeat_interval": 0.5, "supervision.heartbeat_timeout": 3.0,
    "supervision.max_restarts": 8, "supervision.restart_period": 60.0,
    "observing.retry_after_fault": 120.0, "observing.retry_after_no_target": 120.0,
    "safety.reopen_after": 60.0, "safety.rain_clear_after": 120.0, "weather.sample_interval": 5.0,
    "dome": {"settings": {"shutter_time_s": 30.0}},
    "focusers": [{"name": "foc00", "camera": "cam00", "position": 5000}],
}


class UnitUnderFire:
    def __init__(self, unit: RunningUnit):
        self.unit = unit
        self.pandir = unit.pandir

    # -- reading -------------------------------------------------------------
    def events_after(self, wall: float, sql: str = "1", args=()) -> list[tuple]:
        return self.unit.query(f"SELECT kind, message FROM events WHERE wall_unix >= ? AND ({sql}) ORDER BY id",
                               (wall, *args))

    def science_after(self, sim: float, camera: str | None = None) -> int:
        cams = "" if camera is None else " AND camera=?"
        rows = self.unit.query(f"SELECT COUNT(*) FROM exposures WHERE image_type='science' AND start_unix > ?{cams}",
                               (sim,) if camera is None else (sim, camera))
        return rows[0][0] if rows else 0

    def actor(self, name: str) -> dict:
        return next((a for a in self.unit.status().get("actors", []) if a["name"] == name), {})

    # -- acting ----------------------------------------------------------------
    def inject(self, target: str, kind: str, *, settle: bool = True, **params) -> tuple[float, float]:
        """Inject (once the unit observes: each cell starts from the same place);
        returns (wall, simulated) time of the injection."""
        if settle:
            self.unit.wait_for(lambda: self.unit.status().get("state") in ("observing", "analyzing", "tracking"),
                               180, "the unit observing before the fault", interval=0.05)
        wall, sim = time.time(), sim_now(self.unit)
        reply = control.request(self.pandir, "fault", {"target": target, "kind": kind, "params": params})
        assert reply["ok"], reply
        return wall, sim

    def wait_observing(self, sim_after: float, timeout: float = 90.0, frames: int = 1) -> None:
        self.unit.wait_for(lambda: self.science_after(sim_after) >= frames, timeout,
                           f"science frames after simulated {sim_after:.0f}")

    def wait_restarted(self, name: str, wall: float, timeout: float = 30.0) -> None:
        self.unit.wait_for(lambda: self.events_after(wall, "kind='restart' AND message LIKE ?", (f"{name} restarted%",)),
                           timeout, f"{name} restarted")
        self.unit.wait_for(lambda: self.actor(name).get("ready"), timeout, f"{name} ready again")

    def assert_explained(self, wall: float, target: str, kind: str, *patterns: str) -> None:
        injected = self.events_after(wall, "kind='fault' AND message LIKE ?", (f"fault injected: {kind} in {target}%",))
        assert injected, f"no event for the injected {kind} in {target}"
        for pattern in patterns:
            # Records sent to a dying archive arrive a moment later, through its successor.
            deadline = time.time() + 15
            while not self.events_after(wall, "message LIKE ?", (pattern,)) and time.time() < deadline:
                time.sleep(0.25)
            assert self.events_after(wall, "message LIKE ?", (pattern,)), \
                f"no event matching {pattern!r} after the fault; events: {self.events_after(wall)[:30]}"

    def assert_files_agree(self, timeout: float = 20.0) -> None:
        """Each frame on disk (``.fits``, or ``.fits.fz`` with images.compress) has
        one exposure row and each row its file (a frame being written, recorded or
        compressed right now is given a moment). Once the unit has stopped, a
        frame left in both forms by a compression the stop cut short counts as
        the one its row names: the next start removes the other."""
        images = self.pandir / "images"

        def disagreement():
            rows = [p for (p,) in self.unit.query("SELECT path FROM exposures")]
            on_disk = frames_on_disk(images)
            extra = on_disk - set(rows)
            if self.unit.proc.poll() is not None:
                extra = {p for p in extra if twin_of(p) not in rows}
            return rows, on_disk, extra, set(rows) - on_disk, [str(p) for p in images.rglob(".*.part")]

        deadline = time.time() + timeout
        while True:
            rows, on_disk, only_disk, only_db, parts = disagreement()
            if len(rows) == len(set(rows)) and not only_disk and not only_db and not parts:
                return
            if time.time() > deadline:
                raise AssertionError(f"DB and files disagree: only on disk {sorted(only_disk)[:5]}, "
                                     f"only in DB {sorted(only_db)[:5]}, "
                                     f"duplicates {len(rows) - len(set(rows))}, half-written {parts[:5]}")
            time.sleep(0.5)


def frames_on_disk(images) -> set[str]:
    """Every frame file under images/: plain FITS and fpack-compressed."""
    return {str(p) for pattern in ("*.fits", "*.fits.fz") for p in images.rglob(pattern)}


def twin_of(path: str) -> str:
    """x.fits <-> x.fits.fz"""
    return path[:-3] if path.endswith(".fz") else f"{path}.fz"


@pytest.fixture(scope="module")
def fired(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    unit = RunningUnit(tmp, start=DARK_START, speed=60, overrides=dict(FAST_SUPERVISION))
    under = UnitUnderFire(unit)
    try:
        unit.wait_for(lambda: under.science_after(0) >= 2, 180, "the unit observing")
        yield under
        assert unit.terminate() == 0, unit.output()[-3000:]
        final = unit.status()
        assert final["mount"]["parked"], final["mount"]
        assert final["devices"]["dome"]["shutter"] == "closed", final["devices"]
        under.assert_files_agree(timeout=5)
    finally:
        unit.kill()


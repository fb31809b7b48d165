"""A disk that really fills: the unit's PANDIR is a small tmpfs of its own.

1. A ballast file brings the free space below `safety.min_free_disk_gb`: the
   safety kernel (reading the real filesystem) calls it unsafe, the unit
   parks and closes, and frames and records agree.
2. The ballast goes: the kernel clears and the unit observes again.
3. With the limit set to 0 (live, through the control socket) the disk fills
   to the last megabyte: frames can no longer be written. The unit keeps
   running (its journal, status file and database on the same full disk),
   says why frames fail, leaves no half-written file, and observes again once
   space is freed.

Mounting a tmpfs needs root (CAP_SYS_ADMIN); elsewhere the module skips, saying so."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time

import pytest

from observatory import control
from tests.faults.conftest import UnitUnderFire
from tests.test_unit_faults import DARK_START, sim_now
from tests.unit_runner import RunningUnit

MB = 1024 * 1024
SIZE_MB = 96
LIMIT_MB = 24


def _cameras():
    base = {"width": 1200, "height": 800, "pixel_size_um": 18.0, "readout_time": 2.0, "limit_mag": 9.0}
    return [{"name": "cam00", "primary": True, "settings": {**base, "seed": 5}},
            {"name": "cam01", "settings": {**base, "seed": 6}}]


def _fill(path, leave_mb: float) -> None:
    """Grow the ballast file until at most ``leave_mb`` MB are free on its
    filesystem. The unit writes meanwhile: a write that finds the disk already
    full means the ballast has done its job."""
    with open(path, "ab", buffering=0) as f:
        try:
            while True:
                excess = shutil.disk_usage(path.parent).free - int(leave_mb * MB)
                if excess <= 0:
                    break
                f.write(b"\0" * min(excess, 8 * MB))     # real blocks (tmpfs has no holes to cheat with)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
        try:
            os.fsync(f.fileno())
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for PANDIR needs root")
    mountpoint = tmp_path_factory.mktemp("smalldisk")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


@pytest.fixture(scope="module")
def unit_on_small_disk(small_disk, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diskfull")
    overrides = {"cameras": _cameras(), "observing.plate_solve": False, "calibration.darks": False,
                 "safety.min_free_disk_gb": LIMIT_MB * MB / 1e9, "safety.reopen_after": 0.0,
                 "observing.retry_after_fault": 60.0}
    unit = RunningUnit(tmp, start=DARK_START, speed=60, overrides=overrides, pandir=small_disk / "pandir")
    under = UnitUnderFire(unit)
    try:
        unit.wait_for(lambda: under.science_after(0) >= 2, 180, "the unit observing")
        yield under
        assert unit.terminate() == 0, unit.output()[-3000:]
        assert unit.status()["mount"]["parked"]
        under.assert_files_agree(timeout=5)
    finally:
        unit.kill()


def _disk_events(under, wall):
    return under.events_after(wall, "kind='safety' AND message LIKE '%disk%'")


def test_low_free_space_parks_and_frees_space_resumes(unit_on_small_disk):
    under = unit_on_small_disk
    ballast = under.pandir.parent / "ballast"
    wall = time.time()
    _fill(ballast, LIMIT_MB + 6)         # two or three more frames, then below the limit
    under.unit.wait_for(lambda: _disk_events(under, wall), 120, "the safety kernel calling the disk full")
    under.unit.wait_for(lambda: under.unit.status().get("state") == "parked", 90, "parked for the full disk")
    status = under.unit.status()
    assert status["mount"]["parked"]
    assert any("disk" in r for r in status["safety"]["reasons"]), status["safety"]
    under.assert_files_agree()
    audit = under.unit.query("SELECT COUNT(*) FROM safety_audit WHERE reasons LIKE '%disk%'")
    assert audit and audit[0][0] >= 1

    ballast.unlink()
    sim = sim_now(under.unit)
    under.wait_observing(sim, timeout=120)
    under.assert_files_agree()


def test_a_disk_full_to_the_last_block_fails_frames_cleanly_and_the_unit_lives_on(unit_on_small_disk):
    under = unit_on_small_disk
    reply = control.request(under.pandir, "config-set", {"key": "safety.min_free_disk_gb", "value": 0.0})
    assert reply["ok"], reply
    ballast = under.pandir.parent / "ballast"
    under.wait_observing(sim_now(under.unit), timeout=120)
    wall, sim = time.time(), sim_now(under.unit)
    try:
        _fill(ballast, 1.0)                 # less than one frame
        # Nothing new can reach the database now: watch the unit through the control socket.
        deadline = time.time() + 60
        while time.time() < deadline:
            assert under.unit.proc.poll() is None, under.unit.output()[-3000:]
            reply = control.request(under.pandir, "status")
            assert reply["ok"], reply
            time.sleep(2)
        images = under.pandir / "images"
        assert not list(images.rglob(".*.part")), "half-written files left"
        assert under.science_after(sim, "cam00") <= 2, "frames keep being recorded on a full disk?"
    finally:
        ballast.unlink(missing_ok=True)
    freed = sim_now(under.unit)
    under.wait_observing(freed, timeout=240)
    under.assert_files_agree()
    # What happened meanwhile reached the event log once the disk had room again.
    under.unit.wait_for(lambda: under.events_after(wall, "message LIKE '%No space left%'"), 90,
                        "the failed frames explained")
    under.unit.wait_for(lambda: under.events_after(wall, "message LIKE '%records held meanwhile are written%'"),
                        90, "the archive's held records written")
    journal = (under.pandir / "run" / "journal.jsonl").read_text().splitlines()
    assert all(line.startswith("{") and line.endswith("}") for line in journal), "a torn journal line"

"""Disk housekeeping (observatory/retention.py) on real FITS files and a real store."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from messages import RecordExposure
from observatory.archive import Archive
from observatory.clock import parse_iso
from observatory.headers import image_path
from observatory.imaging import write_fits_atomic
from observatory.retention import (GB, RetentionError, RetentionPolicy, apply, copy_to_archive, list_frames,
                                   plan, verified_copy)

T0 = parse_iso("2026-11-24T06:00:00")
HOUR = 3600.0


@pytest.fixture
def unit(tmp_path):
    """Five frames taken an hour apart (names sort against time), each recorded
    in the exposures table, plus one older frame with no row (its mtime counts)."""
    pandir = tmp_path / "pandir"
    archive = Archive(pandir / "db" / "unit.sqlite")
    frames = []
    for i in range(5):
        field = f"F{9 - i}"                      # F9 is the oldest: alphabetical order is reversed
        path = image_path(pandir, field, "cam00", f"seq{i}", f"cam00_{i}")
        write_fits_atomic(path, np.full((40 + 10 * i, 50), i, dtype=np.int16), {"FIELD": field})
        archive.record_exposure(RecordExposure(
            exposure_id=f"e{i}", observation_id=None, camera="cam00", image_type="science", path=str(path),
            start_unix=T0 + i * HOUR, end_unix=T0 + i * HOUR + 125, exptime=120.0, ra_deg=0.0, dec_deg=0.0,
            set_index=0, frame_index=i))
        frames.append(path)
    archive.close()
    stray = image_path(pandir, "Stray", "cam01", "seqS", "cam01_s")
    write_fits_atomic(stray, np.zeros((30, 30), dtype=np.int16))
    old = T0 - 10 * 86400.0
    os.utime(stray, (old, old))
    # A frame being written: hidden, never a frame.
    (stray.parent / ".cam01_t.fits.x1y2.part").write_bytes(b"partial")
    return pandir, [stray] + frames, tmp_path / "archive"


def sizes(paths):
    return [p.stat().st_size for p in paths]


def test_frames_oldest_first(unit):
    pandir, frames, _ = unit
    listed = list_frames(pandir)
    assert [f.path for f in listed] == frames
    assert [f.time_source for f in listed] == ["mtime"] + ["exposures"] * 5
    assert listed[1].time_unix == T0 and listed[-1].time_unix == T0 + 4 * HOUR
    assert listed[1].relative == "F9/cam00/seq0/cam00_0.fits"


def test_nothing_deleted_without_archive_dir(unit):
    pandir, frames, _ = unit
    policy = RetentionPolicy(min_free_gb=1e6, max_age_days=0.001)
    assert policy.archive_dir is None
    assert plan(pandir, policy, free_bytes=0) == []
    assert copy_to_archive(pandir, policy) == []
    assert all(p.exists() for p in frames)


def test_copy_to_archive_is_idempotent(unit):
    pandir, frames, archive = unit
    archive.mkdir()
    policy = RetentionPolicy(archive_dir=archive)
    made = copy_to_archive(pandir, policy)
    assert made == [archive / p.relative_to(pandir / "images") for p in frames]
    for src, dst in zip(frames, made):
        assert dst.read_bytes() == src.read_bytes()
        assert dst.stat().st_mtime_ns == src.stat().st_mtime_ns
    assert copy_to_archive(pandir, policy) == []
    assert not [p for p in archive.rglob(".*")]                       # no temporaries left
    assert not (archive / "Stray" / "cam01" / "seqS" / ".cam01_t.fits.x1y2.part").exists()
    # A damaged copy (same size) is found and replaced, and only that one.
    damaged = made[2]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert copy_to_archive(pandir, policy) == [damaged]
    assert damaged.read_bytes() == frames[2].read_bytes()
    # A new frame is copied on the next run.
    new = image_path(pandir, "F0", "cam00", "seq9", "cam00_9")
    write_fits_atomic(new, np.ones((10, 10), dtype=np.int16))
    assert copy_to_archive(pandir, policy) == [archive / "F0/cam00/seq9/cam00_9.fits"]


def test_deletes_oldest_first_and_stops_at_target(unit):
    pandir, frames, archive = unit
    archive.mkdir()
    policy = RetentionPolicy(min_free_gb=1.0, archive_dir=archive)
    copy_to_archive(pandir, policy)
    s = sizes(frames)
    # Short of the target by one byte more than the two oldest frames hold: three must go.
    free = GB - (s[0] + s[1]) - 1
    deletions = plan(pandir, policy, free_bytes=free)
    assert [d.path for d in deletions] == frames[:3]
    assert [d.reason for d in deletions] == ["space"] * 3
    assert all(d.sha256 and d.copy.is_file() for d in deletions)
    # Exactly the two oldest meet it.
    assert [d.path for d in plan(pandir, policy, free_bytes=GB - (s[0] + s[1]))] == frames[:2]
    # Enough space already: nothing.
    assert plan(pandir, policy, free_bytes=GB) == []
    assert apply(deletions) == sum(s[:3])
    assert [p.exists() for p in frames] == [False, False, False, True, True, True]
    assert all((archive / p.relative_to(pandir / "images")).is_file() for p in frames)
    # Applying the same plan again frees nothing more.
    assert apply(deletions) == 0


def test_never_deletes_uncopied_or_mismatched(unit):
    pandir, frames, archive = unit
    archive.mkdir()
    policy = RetentionPolicy(min_free_gb=1e6, archive_dir=archive)
    copies = copy_to_archive(pandir, policy)
    copies[0].unlink()                                  # no copy
    data = bytearray(copies[1].read_bytes())            # same size, one byte differs
    data[3000] ^= 0x01
    copies[1].write_bytes(bytes(data))
    with open(copies[2], "ab") as f:                    # a different size
        f.write(b"\0")
    new = image_path(pandir, "F0", "cam00", "seq9", "cam00_9")   # never copied
    write_fits_atomic(new, np.ones((10, 10), dtype=np.int16))
    deletions = plan(pandir, policy, free_bytes=0)
    assert [d.path for d in deletions] == frames[3:]
    expected = sum(sizes(frames[3:]))
    assert apply(deletions) == expected
    assert all(p.exists() for p in frames[:3] + [new])
    # Trusting sizes alone lets the same-size damaged copy through: that is what verify_copy is for.
    weak = RetentionPolicy(min_free_gb=1e6, archive_dir=archive, verify_copy=False)
    assert [d.path for d in plan(pandir, weak, free_bytes=0)] == [frames[1]]
    assert verified_copy(frames[1], copies[1], verify=True) is None
    assert verified_copy(frames[1], copies[1], verify=False) == "size"


def test_max_age_days(unit):
    pandir, frames, archive = unit
    archive.mkdir()
    policy = RetentionPolicy(min_free_gb=0.0, max_age_days=1.0, archive_dir=archive)
    copy_to_archive(pandir, policy)
    # A day and 2.5 hours after the first recorded frame: the stray one and the first three are over a day old.
    deletions = plan(pandir, policy, free_bytes=10 * GB, now=T0 + 86400.0 + 2.5 * HOUR)
    assert [d.path for d in deletions] == frames[:4]
    assert {d.reason for d in deletions} == {"age"}
    # Without an age limit, plenty of space keeps everything.
    assert plan(pandir, RetentionPolicy(min_free_gb=0.0, archive_dir=archive), free_bytes=10 * GB) == []


def test_free_space_measured_when_not_given(unit):
    pandir, frames, archive = unit
    archive.mkdir()
    copy_to_archive(pandir, RetentionPolicy(archive_dir=archive))
    assert plan(pandir, RetentionPolicy(min_free_gb=0.0, archive_dir=archive)) == []
    everything = plan(pandir, RetentionPolicy(min_free_gb=1e9, archive_dir=archive))   # an exabyte
    assert [d.path for d in everything] == frames


def test_apply_checks_again(unit):
    pandir, frames, archive = unit
    archive.mkdir()
    policy = RetentionPolicy(min_free_gb=1e6, archive_dir=archive)
    copies = copy_to_archive(pandir, policy)
    deletions = plan(pandir, policy, free_bytes=0)
    assert len(deletions) == 6
    copies[1].unlink()                                  # the copy vanished after planning
    write_fits_atomic(frames[4], np.full((80, 50), 7, dtype=np.int16))   # the frame was rewritten
    with pytest.raises(RetentionError) as err:
        apply(deletions)
    assert err.value.path == frames[1]
    assert "2 planned frame(s) kept" in str(err.value)
    assert err.value.freed == sum(sizes(copies[i] for i in (0, 2, 3, 5)))
    assert [p.exists() for p in frames] == [False, True, False, False, True, False]


def test_errors_name_the_path(unit, tmp_path):
    pandir, frames, archive = unit
    missing = RetentionPolicy(min_free_gb=1e6, archive_dir=archive)        # not created
    for call in (lambda: plan(pandir, missing, free_bytes=0), lambda: copy_to_archive(pandir, missing)):
        with pytest.raises(RetentionError, match="does not exist") as err:
            call()
        assert err.value.path == archive
    assert not archive.exists()                                          # never created
    a_file = tmp_path / "not_a_dir"
    a_file.write_text("x")
    with pytest.raises(RetentionError, match="not a directory"):
        plan(pandir, RetentionPolicy(archive_dir=a_file), free_bytes=0)
    # A destination that cannot be written: a file where a directory must go.
    archive.mkdir()
    (archive / "Stray").write_text("in the way")
    with pytest.raises(RetentionError) as err:
        copy_to_archive(pandir, RetentionPolicy(archive_dir=archive))
    assert err.value.path == archive / "Stray/cam01/seqS/cam01_s.fits"
    assert all(p.exists() for p in frames)


def test_policy_checks():
    with pytest.raises(ValueError):
        RetentionPolicy(min_free_gb=-1)
    with pytest.raises(ValueError):
        RetentionPolicy(max_age_days=0)
    p = RetentionPolicy()
    assert (p.min_free_gb, p.max_age_days, p.archive_dir, p.verify_copy) == (5.0, None, None, True)


def test_housekeeping_applies_the_retention_policy_through_the_archive_actor(tmp_path):
    """A whole night with an archive location and a free-space target no disk
    meets: every frame is copied, then deleted locally, and its record points
    at the verified copy, so the DB and the files still agree."""
    from tests.unit_runner import RunningUnit
    store = tmp_path / "store"
    store.mkdir()
    unit = RunningUnit(tmp_path, start="2026-11-24T13:30:00", speed=600, nights=1,
                       overrides={"retention": {"archive_dir": str(store), "min_free_gb": 1e9},
                                  "calibration.darks": False})
    try:
        assert unit.wait(240) == 0, unit.output()[-3000:]
    finally:
        unit.kill()
    rows = [p for (p,) in unit.query("SELECT path FROM exposures")]
    assert rows and all(p.startswith(str(store)) for p in rows)
    assert not list((unit.pandir / "images").rglob("*.fits"))
    assert all(Path(p).exists() for p in rows)
    event = unit.query("SELECT message FROM events WHERE kind='retention'")
    assert event and f"{len(rows)} deleted after a verified copy" in event[0][0]

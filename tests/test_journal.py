"""The night journal (observatory/journal.py): lines written whole or not at
all, even when the disk refuses part of a line."""
from __future__ import annotations

import errno
import os

import pytest

from observatory import journal as journal_module
from observatory.journal import Journal, JournalState, replay


def test_lines_written_are_replayed(tmp_path):
    j = Journal(tmp_path / "journal.jsonl")
    j.write("night", 1.0, night="2026-11-24")
    j.write("state", 2.0, state="observing")
    j.close()
    state = replay(tmp_path / "journal.jsonl")
    assert state.night == "2026-11-24" and state.last_state == "observing" and state.torn_lines == 0


@pytest.mark.parametrize("short_by", [1, 10**6])
def test_a_line_the_disk_cuts_short_is_removed_and_the_journal_goes_on(tmp_path, monkeypatch, short_by):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.write("state", 1.0, state="tracking")
    before = path.read_bytes()
    real_write = os.write

    def full_disk(fd, data):
        if short_by >= len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data[:len(data) - short_by])      # a partial write, as on a nearly full disk

    monkeypatch.setattr(journal_module.os, "write", full_disk)
    with pytest.raises(OSError):
        j.write("state", 2.0, state="observing")
    assert path.read_bytes() == before, "a torn line was left behind"
    monkeypatch.setattr(journal_module.os, "write", real_write)
    j.write("state", 3.0, state="analyzing")                   # room again
    j.close()
    state = replay(path)
    assert state.last_state == "analyzing" and state.torn_lines == 0


def test_a_fresh_journal_that_cannot_be_written_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.write("night", 1.0, night="2026-11-24")
    before = path.read_bytes()

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(journal_module.os, "fsync", refuse)
    with pytest.raises(OSError):
        j.restart(JournalState(night="2026-11-25"), 2.0)
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

"""The night journal: what the supervisor is doing, persisted as it happens,
so that a unit restarted after a crash (of any actor, the supervisor, or the
whole service) can tell what was under way and resume it.

``$PANDIR/run/journal.jsonl``: one JSON object per line, appended, flushed and
fsynced before the step it describes goes ahead (a line costs well under a
millisecond). A crash can tear only the last line; ``replay`` skips it.

Entries (``kind``):
    state             {state}
    observation       the observation started: id, field, coordinates, block, seq_id, night
    command           {id, ra_deg, dec_deg}: where the mount is sent for it (pointing corrections)
    round             {id, frames, set_index, frame_in_set}: a round of exposures was counted
    exposure_started  {exposure_id, camera, path, observation_id, image_type, exptime, start_unix}
    exposure_done     {exposure_id, outcome}: recorded, failed, aborted or lost
    observation_closed {id, status}
    night             {night}: a new night began (the journal is rewritten then)
    counter           {round_index}: the highest round number used so far (in exposure ids)

``replay`` folds the entries into a ``JournalState``. The journal is pure
bookkeeping: it knows nothing of actors, and the supervisor decides what to
do with what it finds.
"""
from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class JournalState:
    last_state: str | None = None
    last_time_unix: float | None = None
    night: str | None = None
    observation: dict | None = None             # the open observation, with its last round and command
    in_flight: dict[str, dict] = field(default_factory=dict)   # exposure id -> exposure_started entry
    exposures_done: dict[str, int] = field(default_factory=dict)  # rounds per field tonight (last round entry)
    last_round_index: int = 0                  # exposure ids carry it: a resumed unit must not reuse them
    torn_lines: int = 0


class Journal:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()

    def _open(self) -> int:
        # Unbuffered: a line is either written with one write() or cut back.
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, kind: str, time_unix: float, **data) -> None:
        """Append one line and fsync it. On a write error (a full disk) the file
        is cut back to where it was, so no torn line is left in the middle of
        it, and OSError is raised for the caller to report."""
        line = json.dumps({"kind": kind, "time_unix": time_unix, "wall_unix": time.time(), **data},
                          default=str, separators=(",", ":"))
        raw = (line + "\n").encode()
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            written = os.write(self._fd, raw)
            if written != len(raw):
                raise OSError(errno.ENOSPC, f"journal line cut short ({written} of {len(raw)} bytes)")
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            raise

    def restart(self, state: JournalState, time_unix: float) -> None:
        """Begin a fresh file holding only what is still open (a new night,
        or after a resume): the journal never grows beyond a night."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for entry in _entries_for(state, time_unix):
                    f.write(json.dumps(entry, default=str, separators=(",", ":")) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        os.close(self._fd)
        os.replace(tmp, self.path)
        self._fd = self._open()

    def close(self) -> None:
        os.close(self._fd)


def replay(path: str | os.PathLike) -> JournalState:
    """What the journal says was under way when it was last written."""
    state = JournalState()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return state
    for line in lines:
        try:
            entry = json.loads(line)
            kind = entry["kind"]
        except (ValueError, KeyError, TypeError):
            state.torn_lines += 1          # a crash mid-write: only ever the last line
            continue
        state.last_time_unix = entry.get("time_unix", state.last_time_unix)
        if kind == "state":
            state.last_state = entry["state"]
        elif kind == "night":
            if entry["night"] != state.night:
                state.exposures_done = {}
            state.night = entry["night"]
        elif kind == "observation":
            state.observation = {k: v for k, v in entry.items() if k not in ("kind", "wall_unix")}
            state.observation.update(frames=0, set_index=0, frame_in_set=0)
        elif kind == "command" and state.observation and entry.get("id") == state.observation["id"]:
            state.observation.update(command_ra=entry["ra_deg"], command_dec=entry["dec_deg"])
        elif kind == "round":
            state.exposures_done = dict(entry.get("exposures_done", state.exposures_done))
            if state.observation and entry.get("id") == state.observation["id"]:
                state.observation.update(frames=entry["frames"], set_index=entry["set_index"],
                                         frame_in_set=entry["frame_in_set"])
        elif kind == "observation_closed":
            if state.observation and state.observation["id"] == entry.get("id"):
                state.observation = None
        elif kind == "exposure_started":
            state.in_flight[entry["exposure_id"]] = {k: v for k, v in entry.items() if k != "kind"}
            state.last_round_index = max(state.last_round_index, int(entry.get("round_index", 0)))
        elif kind == "exposure_done":
            state.in_flight.pop(entry.get("exposure_id"), None)
        elif kind == "counter":
            state.last_round_index = max(state.last_round_index, int(entry["round_index"]))
    return state


def _entries_for(state: JournalState, time_unix: float) -> list[dict]:
    entries = []
    if state.night:
        entries.append({"kind": "night", "time_unix": time_unix, "night": state.night})
    ob = state.observation
    if ob:
        entries.append({"kind": "observation", **{k: v for k, v in ob.items()
                                                   if k not in ("frames", "set_index", "frame_in_set",
                                                                "command_ra", "command_dec")}})
        if ob.get("command_ra") is not None:
            entries.append({"kind": "command", "time_unix": time_unix, "id": ob["id"],
                            "ra_deg": ob["command_ra"], "dec_deg": ob["command_dec"]})
        entries.append({"kind": "round", "time_unix": time_unix, "id": ob["id"], "frames": ob.get("frames", 0),
                        "set_index": ob.get("set_index", 0), "frame_in_set": ob.get("frame_in_set", 0),
                        "exposures_done": state.exposures_done})
    elif state.exposures_done:
        entries.append({"kind": "round", "time_unix": time_unix, "id": None, "frames": 0, "set_index": 0,
                        "frame_in_set": 0, "exposures_done": state.exposures_done})
    if state.last_round_index:
        entries.append({"kind": "counter", "time_unix": time_unix, "round_index": state.last_round_index})
    for exposure in state.in_flight.values():
        entries.append({"kind": "exposure_started", **exposure})
    return entries

"""The observing state table (conf/states.yaml): loaded, validated, queried."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

# The states the supervisor implements: the PANOPTES states plus focusing
# (autofocus runs) and calibrating (twilight flats). A table must define each
# of them, and no other.
STATES = ("sleeping", "ready", "scheduling", "slewing", "pointing", "tracking", "focusing",
          "observing", "analyzing", "calibrating", "parking", "parked", "housekeeping")


class StateTableError(ValueError):
    pass


@dataclass(frozen=True)
class StateTable:
    initial: str
    always_safe: frozenset
    transitions: dict          # state -> frozenset of allowed next states
    descriptions: dict

    def allowed(self, source: str, dest: str) -> bool:
        return dest in self.transitions.get(source, ())

    def is_always_safe(self, state: str) -> bool:
        return state in self.always_safe


def load_state_table(path: str | Path) -> StateTable:
    path = Path(path)
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise StateTableError(f"{where}: cannot read state table: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise StateTableError(f"{where}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise StateTableError(f"{where}: must be a mapping with 'initial', 'states' and 'transitions'")
    for key in ("initial", "states", "transitions"):
        if key not in raw:
            raise StateTableError(f"{where}: {key}: missing")
    unknown_keys = set(raw) - {"initial", "states", "transitions"}
    if unknown_keys:
        raise StateTableError(f"{where}: {sorted(unknown_keys)[0]}: unknown key")
    states = raw["states"]
    if not isinstance(states, dict):
        raise StateTableError(f"{where}: states: must be a mapping of state name to options")
    missing = [s for s in STATES if s not in states]
    if missing:
        raise StateTableError(f"{where}: states: missing {', '.join(missing)}")
    extra = [s for s in states if s not in STATES]
    if extra:
        raise StateTableError(f"{where}: states.{extra[0]}: unknown state (expected one of {', '.join(STATES)})")
    always_safe, descriptions = set(), {}
    for name, opts in states.items():
        opts = opts or {}
        if not isinstance(opts, dict):
            raise StateTableError(f"{where}: states.{name}: must be a mapping")
        bad = set(opts) - {"always_safe", "description"}
        if bad:
            raise StateTableError(f"{where}: states.{name}.{sorted(bad)[0]}: unknown option")
        if not isinstance(opts.get("always_safe", False), bool):
            raise StateTableError(f"{where}: states.{name}.always_safe: must be true or false")
        if opts.get("always_safe"):
            always_safe.add(name)
        descriptions[name] = str(opts.get("description", ""))
    if raw["initial"] not in STATES:
        raise StateTableError(f"{where}: initial: unknown state {raw['initial']!r}")
    trans = raw["transitions"]
    if not isinstance(trans, dict):
        raise StateTableError(f"{where}: transitions: must map each state to a list of next states")
    table = {}
    for src, dests in trans.items():
        if src not in STATES:
            raise StateTableError(f"{where}: transitions.{src}: unknown state")
        if not isinstance(dests, list) or not dests:
            raise StateTableError(f"{where}: transitions.{src}: must be a non-empty list of states")
        for d in dests:
            if d not in STATES:
                raise StateTableError(f"{where}: transitions.{src}: unknown next state {d!r}")
        table[src] = frozenset(dests)
    for s in STATES:
        if s not in table:
            raise StateTableError(f"{where}: transitions.{s}: missing (every state needs a way out)")
        if s not in always_safe and "parking" not in table[s]:
            raise StateTableError(f"{where}: transitions.{s}: must allow 'parking' (the state is not always_safe)")
    return StateTable(initial=raw["initial"], always_safe=frozenset(always_safe),
                      transitions=table, descriptions=descriptions)

"""The observing state table (conf/states.yaml): loading, validation, queries."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from observatory.statetable import STATES, StateTable, StateTableError, load_state_table

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "conf" / "states.yaml"
PANOPTES_STATES = {"sleeping", "ready", "scheduling", "slewing", "pointing", "tracking", "observing",
                   "analyzing", "parking", "parked", "housekeeping"}


@pytest.fixture(scope="module")
def table() -> StateTable:
    return load_state_table(SHIPPED)


def raw() -> dict:
    return copy.deepcopy(yaml.safe_load(SHIPPED.read_text()))


def write(tmp_path: Path, doc) -> Path:
    path = tmp_path / "states.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def error(path: Path) -> str:
    with pytest.raises(StateTableError) as info:
        load_state_table(path)
    text = str(info.value)
    assert str(path) in text, "the error must name the file"
    return text


# --------------------------------------------------------------------------
# The shipped table
# --------------------------------------------------------------------------

def test_shipped_table_has_the_eleven_panoptes_states_focusing_and_calibrating(table):
    assert set(STATES) == PANOPTES_STATES | {"focusing", "calibrating"} and len(STATES) == 13
    assert set(table.transitions) == set(STATES)
    assert set(table.descriptions) == set(STATES)
    assert all(table.descriptions[s] for s in STATES), "every state is described"
    assert table.initial == "sleeping"


def test_shipped_always_safe_states(table):
    assert table.always_safe == {"sleeping", "ready", "parking", "parked", "housekeeping"}
    assert table.is_always_safe("parked")
    assert not table.is_always_safe("observing")


def test_every_unsafe_state_can_park_and_parking_ends_parked(table):
    for state in PANOPTES_STATES - table.always_safe:
        assert table.allowed(state, "parking"), state
    assert table.transitions["parking"] == {"parked"}


def test_every_state_is_reachable_from_initial(table):
    seen, todo = {table.initial}, [table.initial]
    while todo:
        for nxt in table.transitions[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(STATES)


@pytest.mark.parametrize("source, dest, expected", [
    ("sleeping", "ready", True),
    ("ready", "scheduling", True),
    ("scheduling", "slewing", True),
    ("slewing", "pointing", True),
    ("pointing", "tracking", True),
    ("tracking", "observing", True),
    ("observing", "analyzing", True),
    ("analyzing", "tracking", True),
    ("analyzing", "scheduling", True),
    ("parking", "parked", True),
    ("parked", "ready", True),
    ("parked", "housekeeping", True),
    ("housekeeping", "sleeping", True),
    ("observing", "parking", True),
    # not allowed
    ("sleeping", "observing", False),
    ("ready", "slewing", False),
    ("observing", "tracking", False),
    ("parking", "ready", False),
    ("parked", "observing", False),
    ("observing", "observing", False),
    ("no-such-state", "parking", False),
    ("ready", "no-such-state", False),
])
def test_allowed(table, source, dest, expected):
    assert table.allowed(source, dest) is expected


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

def test_missing_state(tmp_path):
    doc = raw()
    del doc["states"]["housekeeping"]
    text = error(write(tmp_path, doc))
    assert "states" in text and "missing housekeeping" in text


def test_unknown_state(tmp_path):
    doc = raw()
    doc["states"]["dancing"] = {"description": "not a PANOPTES state"}
    text = error(write(tmp_path, doc))
    assert "states.dancing" in text and "unknown state" in text


def test_transition_from_unknown_state(tmp_path):
    doc = raw()
    doc["transitions"]["dancing"] = ["parking"]
    text = error(write(tmp_path, doc))
    assert "transitions.dancing" in text and "unknown state" in text


def test_transition_to_unknown_state(tmp_path):
    doc = raw()
    doc["transitions"]["ready"] = ["scheduling", "dancing", "parking"]
    text = error(write(tmp_path, doc))
    assert "transitions.ready" in text and "dancing" in text and "unknown next state" in text


def test_unsafe_state_without_a_way_to_parking(tmp_path):
    doc = raw()
    doc["transitions"]["slewing"] = ["pointing"]
    text = error(write(tmp_path, doc))
    assert "transitions.slewing" in text and "parking" in text


def test_always_safe_state_may_lack_parking(tmp_path):
    doc = raw()
    doc["transitions"]["sleeping"] = ["ready"]          # sleeping is always_safe
    table = load_state_table(write(tmp_path, doc))
    assert not table.allowed("sleeping", "parking")


def test_state_without_transitions(tmp_path):
    doc = raw()
    del doc["transitions"]["housekeeping"]
    text = error(write(tmp_path, doc))
    assert "transitions.housekeeping" in text and "missing" in text


def test_empty_transition_list(tmp_path):
    doc = raw()
    doc["transitions"]["parking"] = []
    text = error(write(tmp_path, doc))
    assert "transitions.parking" in text


def test_unknown_initial_state(tmp_path):
    doc = raw()
    doc["initial"] = "awake"
    text = error(write(tmp_path, doc))
    assert "initial" in text and "awake" in text


@pytest.mark.parametrize("key", ["initial", "states", "transitions"])
def test_missing_top_level_key(tmp_path, key):
    doc = raw()
    del doc[key]
    text = error(write(tmp_path, doc))
    assert key in text and "missing" in text


def test_unknown_top_level_key(tmp_path):
    doc = raw()
    doc["final"] = "parked"
    text = error(write(tmp_path, doc))
    assert "final" in text and "unknown key" in text


def test_unknown_option(tmp_path):
    doc = raw()
    doc["states"]["ready"]["colour"] = "red"
    text = error(write(tmp_path, doc))
    assert "states.ready.colour" in text and "unknown option" in text


def test_always_safe_must_be_boolean(tmp_path):
    doc = raw()
    doc["states"]["observing"] = {"always_safe": "sometimes"}
    text = error(write(tmp_path, doc))
    assert "states.observing.always_safe" in text


def test_bad_yaml(tmp_path):
    path = write(tmp_path, "initial: sleeping\nstates: {sleeping: [\n")
    text = error(path)
    assert "not valid YAML" in text


@pytest.mark.parametrize("doc", ["- sleeping\n- ready\n", "just text\n", ""])
def test_not_a_mapping(tmp_path, doc):
    text = error(write(tmp_path, doc))
    assert "must be a mapping" in text


def test_states_not_a_mapping(tmp_path):
    doc = raw()
    doc["states"] = list(STATES)
    text = error(write(tmp_path, doc))
    assert "states" in text and "mapping" in text


def test_unreadable_file(tmp_path):
    path = tmp_path / "absent.yaml"
    text = error(path)
    assert "cannot read" in text


def test_states_without_options_load(tmp_path):
    """A state given with no options (``ready:``) is neither described nor always safe."""
    doc = raw()
    doc["states"]["scheduling"] = None
    table = load_state_table(write(tmp_path, doc))
    assert table.descriptions["scheduling"] == ""
    assert not table.is_always_safe("scheduling")

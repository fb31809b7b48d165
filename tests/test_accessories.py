"""Dome, focusers and filter wheel: the simulated devices, their configuration,
and a unit that opens its dome to observe, closes it when the weather turns,
and writes focuser and filter into every frame."""
import pytest
import yaml
from astropy.io import fits

from drivers.accessory import AccessoryError
from observatory.clock import iso
from observatory.config import ConfigError, load_config
from simulators.accessories import SimulatedDome, SimulatedFilterWheel, SimulatedFocuser
from tests.test_unit_faults import DARK_START, science_count, sim_now
from tests.unit_runner import RunningUnit, write_config


class ManualClock:
    """Simulated time that moves only when the test moves it."""
    def __init__(self, t=1_000_000.0):
        self.t = t

    def now(self):
        return self.t


def test_dome_takes_its_shutter_time_and_remembers_across_instances(tmp_path):
    clock = ManualClock()
    state = tmp_path / "dome.json"
    dome = SimulatedDome({"shutter_time_s": 40}, clock, state_file=state)
    dome.connect()
    assert dome.status()["shutter"] == "closed"
    dome.open_shutter()
    clock.t += 20
    assert dome.status() == {"shutter": "opening", "remaining_s": 20.0}
    again = SimulatedDome({"shutter_time_s": 40}, clock, state_file=state)   # the actor restarted
    again.connect()
    assert again.status()["shutter"] == "opening"
    clock.t += 20
    assert again.status()["shutter"] == "open"
    again.close_shutter()
    clock.t += 10
    assert again.status()["shutter"] == "closing"
    clock.t += 30
    assert again.status()["shutter"] == "closed"


def test_corrupt_state_file_is_moved_aside_and_the_dome_starts_closed(tmp_path):
    state = tmp_path / "dome.json"
    state.write_text("{not json")
    dome = SimulatedDome({}, ManualClock(), state_file=state)
    dome.connect()
    assert dome.status()["shutter"] == "closed"
    assert (tmp_path / "dome.json.corrupt").exists()


def test_focuser_moves_at_its_speed_and_refuses_out_of_range():
    clock = ManualClock()
    foc = SimulatedFocuser({"speed_steps_s": 100, "max_position": 5000, "initial_position": 1000}, clock)
    foc.connect()
    foc.move_to(1500)
    clock.t += 2
    assert foc.status() == {"position": 1200, "target": 1500, "moving": True}
    clock.t += 10
    assert foc.status() == {"position": 1500, "target": 1500, "moving": False}
    with pytest.raises(AccessoryError, match="outside 0-5000"):
        foc.move_to(6000)
    with pytest.raises(ValueError, match="initial_position 9 is beyond max_position 5"):
        SimulatedFocuser({"max_position": 5, "initial_position": 9}, clock)


def test_filter_wheel_by_name_or_slot():
    clock = ManualClock()
    wheel = SimulatedFilterWheel({"filters": ["clear", "g", "r"], "seconds_per_slot": 2}, clock)
    wheel.connect()
    assert wheel.set_filter("r") == 3
    assert wheel.status()["moving"]
    clock.t += 4
    assert wheel.status() == {"slot": 3, "filter": "r", "moving": False}
    assert wheel.set_filter("2") == 2
    with pytest.raises(AccessoryError, match="no filter 'z' .*clear, g, r"):
        wheel.set_filter("z")
    with pytest.raises(AccessoryError, match="not connected"):
        SimulatedFilterWheel({}, clock).set_filter("L")


def _config(tmp_path, **sections):
    cfg = yaml.safe_load(write_config(tmp_path).read_text())
    cfg.update(sections)
    path = tmp_path / "acc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("sections, message", [
    ({"focusers": [{"name": "foc0", "camera": "cam09"}]}, r"focusers.0.camera: no camera named 'cam09'"),
    ({"focusers": [{"name": "cam01", "camera": "cam00"}]}, r"focusers.0.name: 'cam01' is already the name"),
    ({"focusers": [{"name": "f0", "camera": "cam00"}, {"name": "f1", "camera": "cam00"}]},
     r"more than one focuser for camera\(s\) \['cam00'\]"),
    ({"focusers": [{"name": "f0", "camera": "cam00", "settings": {"speed": 3}}]},
     r"focusers.0.settings: unknown simulated focuser setting\(s\) speed"),
    ({"focusers": [{"name": "f0", "camera": "cam00", "position": 20000}]}, r"position 20000 is outside the limits"),
    ({"focusers": [{"name": "f0", "camera": "cam00", "position": 12000, "limits": [0, 20000]}]},
     r"beyond the focuser's max_position"),
    ({"dome": {"driver": "ascom"}}, r"dome.driver: Input should be 'simulator' or 'indi'"),
    ({"dome": {"settings": {"shutter_time_s": -1}}}, r"dome.settings: dome setting shutter_time_s must be >= 0"),
    ({"filterwheel": {"filter": "Ha"}}, r"filterwheel.settings: filter: no filter 'Ha'"),
    ({"dome": {"driver": "indi", "settings": {"port": "x"}}}, r"dome.settings: INDI dome setting port"),
])
def test_accessory_configuration_errors_name_the_key(tmp_path, sections, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_config(tmp_path, **sections))


ACCESSORIES = {
    "dome": {"driver": "simulator", "settings": {"shutter_time_s": 90.0}},
    "focusers": [{"name": "foc00", "camera": "cam00", "position": 4200, "settings": {"speed_steps_s": 200.0}},
                 {"name": "foc01", "camera": "cam01", "position": 4300}],
    "filterwheel": {"filter": "R"},
}


def test_unit_opens_its_dome_to_observe_and_closes_it_when_the_rain_comes(tmp_path):
    timeline = tmp_path / "weather.yaml"
    timeline.write_text("timeline: []\n")
    overrides = {**ACCESSORIES, "weather.timeline": str(timeline), "weather.sample_interval": 5.0,
                 "safety.reopen_after": 120.0}
    unit = RunningUnit(tmp_path, start=DARK_START, speed=60, overrides=overrides)
    try:
        unit.wait_for(lambda: science_count(unit, "cam00") >= 2, 120, "science frames")
        # The dome opened before the first frame, and frames carry focuser and filter.
        opened = unit.query("SELECT time_unix FROM events WHERE message='dome: open done'")
        first = unit.query("SELECT MIN(start_unix) FROM exposures")[0][0]
        assert opened and opened[0][0] <= first
        path = unit.query("SELECT path FROM exposures WHERE camera='cam01' AND image_type='science' LIMIT 1")[0][0]
        hdr = fits.getheader(path)
        assert hdr["FOCUSPOS"] == 4300 and hdr["FILTER"] == "R"
        devices = unit.status()["devices"]
        assert devices["dome"]["shutter"] == "open" and devices["foc00"]["position"] == 4200

        now = sim_now(unit)
        timeline.write_text(yaml.safe_dump({"timeline": [{"at": iso(now), "conditions": "rain"},
                                                         {"at": iso(now + 900), "conditions": "clear"}]}))
        parked = unit.wait_for(lambda: unit.query(
            "SELECT time_unix FROM events WHERE kind='state' AND message LIKE '%-> parked%' AND time_unix >= ?",
            (now,)), 60, "parked with the dome closed")
        closed = unit.query("SELECT time_unix FROM events WHERE message='dome: close done' AND time_unix >= ?",
                            (now,))
        assert closed and closed[0][0] <= parked[0][0]
        assert unit.status()["devices"]["dome"]["shutter"] == "closed"
        # Safe again: the dome reopens and observing resumes.
        unit.wait_for(lambda: science_count(unit, "cam00", after=now + 900) >= 1, 90, "observing after the rain")
        assert unit.terminate() == 0
        assert unit.status()["devices"]["dome"]["shutter"] == "closed"
    finally:
        unit.kill()


def test_unit_closes_a_dome_left_open_at_start_up(tmp_path):
    # The hardware remembers: a dome left open by a crash is open when the unit starts in daytime.
    state = tmp_path / "pandir" / "run" / "sim" / "dome.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"start": 1.0, "goal": 1.0, "t0": 0.0}')
    unit = RunningUnit(tmp_path, start="2026-11-24T20:00:00", speed=60,
                       overrides={"dome": {"settings": {"shutter_time_s": 60.0}}})
    try:
        unit.wait_for(lambda: unit.status().get("devices", {}).get("dome", {}).get("shutter") == "closed"
                      and unit.status().get("state") == "sleeping", 60, "the dome closed, the unit sleeping")
        assert unit.query("SELECT COUNT(*) FROM events WHERE message='dome: close done'")[0][0] >= 1
        assert unit.terminate() == 0
    finally:
        unit.kill()



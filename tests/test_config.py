"""Unit configuration: loading conf/unit.yaml, defaults, and errors that name
the file and the key; run_unit.py refusing bad input with exit status 2."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from observatory.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
UNIT_YAML = ROOT / "conf" / "unit.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped() -> dict:
    """conf/unit.yaml with its relative paths made absolute (so a copy in tmp_path loads)."""
    cfg = yaml.safe_load(UNIT_YAML.read_text())
    cfg["states"] = str(ROOT / "conf" / "states.yaml")
    cfg["scheduler"]["fields_file"] = str(ROOT / "conf" / "fields.yaml")
    cfg["weather"]["timeline"] = str(ROOT / "conf" / "weather" / "clear.yaml")
    return cfg


def write(tmp_path: Path, cfg, name: str = "unit.yaml") -> Path:
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


# --------------------------------------------------------------------------
# Good files
# --------------------------------------------------------------------------

def test_shipped_config_loads():
    cfg = load_config(UNIT_YAML)
    assert cfg["config_file"] == str(UNIT_YAML.resolve())
    assert len(cfg["config_hash"]) == 16
    assert cfg["location"]["latitude"] == pytest.approx(19.54)
    assert cfg["location"]["longitude"] == pytest.approx(-155.58)
    assert [c["name"] for c in cfg["cameras"]] == ["cam00", "cam01"]
    assert cfg["primary_camera"] == "cam00"
    assert cfg["cameras"][0]["settings"]["width"] == 1302
    assert cfg["mount"] == {"driver": "ioptron", "settings": {"port": "simulator", "slew_rate_deg_s": 3.0}}
    # Relative paths are resolved against conf/ and exist.
    assert cfg["states"] == str((ROOT / "conf" / "states.yaml").resolve())
    assert cfg["scheduler"]["fields_file"] == str((ROOT / "conf" / "fields.yaml").resolve())
    assert cfg["weather"]["timeline"] == str((ROOT / "conf" / "weather" / "default.yaml").resolve())
    for p in (cfg["states"], cfg["scheduler"]["fields_file"], cfg["weather"]["timeline"]):
        assert Path(p).is_absolute() and Path(p).is_file()


def test_minimal_config_gets_every_default(tmp_path):
    path = write(tmp_path, {"states": str(ROOT / "conf" / "states.yaml"),
                            "scheduler": {"fields_file": str(ROOT / "conf" / "fields.yaml")},
                            "weather": {"timeline": None}})
    cfg = load_config(path)
    assert cfg["name"] == "Generic PANOPTES Unit"
    assert cfg["location"] == {"name": "Mauna Loa Observatory", "latitude": 19.54, "longitude": -155.58,
                               "elevation": 3400.0, "observe_horizon": -18.0, "min_altitude": 30.0}
    assert cfg["actor_system"]["admin_port"] == 19500
    assert cfg["mount"] == {"driver": "simulator", "settings": {}}
    assert [(c["name"], c["primary"]) for c in cfg["cameras"]] == [("cam00", True), ("cam01", False)]
    assert cfg["primary_camera"] == "cam00"
    assert cfg["weather"] == {"driver": "simulator", "settings": {}, "timeline": None, "sample_interval": 30.0}
    assert cfg["safety"]["reopen_after"] == 0.0 and cfg["safety"]["max_wind"] == 50.0
    assert cfg["scheduler"]["moon_separation"] == 15.0 and cfg["scheduler"]["hysteresis"] == 0.1
    assert cfg["observing"]["pointing_exptime"] == 30.0
    assert cfg["supervision"] == {"max_restarts": 5, "restart_period": 60.0, "init_timeout": 20.0,
                                  "heartbeat_interval": 2.0, "heartbeat_timeout": 10.0, "remote_heartbeat_timeout": 6.0, "backoff_initial": 0.5,
                                  "backoff_max": 30.0, "children": {}}


def test_relative_paths_resolve_against_the_config_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "my_fields.yaml").write_text((ROOT / "conf" / "fields.yaml").read_text())
    cfg = shipped()
    cfg["scheduler"]["fields_file"] = "sub/my_fields.yaml"
    loaded = load_config(write(tmp_path, cfg))
    assert loaded["scheduler"]["fields_file"] == str((tmp_path / "sub" / "my_fields.yaml").resolve())


def test_primary_camera_defaults_to_the_first(tmp_path):
    cfg = shipped()
    cfg["cameras"] = [{"name": "east"}, {"name": "west"}]
    cfg["focusers"] = []
    assert load_config(write(tmp_path, cfg))["primary_camera"] == "east"


def test_config_hash_follows_content(tmp_path):
    a = load_config(write(tmp_path, shipped(), "a.yaml"))["config_hash"]
    b = load_config(write(tmp_path, shipped(), "b.yaml"))["config_hash"]
    cfg = shipped()
    cfg["location"]["elevation"] = 3399.0
    c = load_config(write(tmp_path, cfg, "c.yaml"))["config_hash"]
    assert a == b != c


# --------------------------------------------------------------------------
# Bad files: each error names the file and the key
# --------------------------------------------------------------------------

def test_unknown_key(tmp_path):
    cfg = shipped()
    cfg["mount"]["speed"] = 3
    path = write(tmp_path, cfg)
    text = config_error(path)
    assert str(path) in text
    assert "mount.speed" in text and "unknown key" in text


def test_unknown_top_level_section(tmp_path):
    cfg = shipped()
    cfg["enclosure"] = {"driver": "simulator"}
    path = write(tmp_path, cfg)
    text = config_error(path)
    assert str(path) in text and "enclosure" in text and "unknown key" in text


@pytest.mark.parametrize("section, key, value", [
    ("location", "latitude", "north"),
    ("actor_system", "admin_port", "port"),
    ("safety", "max_wind", [50]),
    ("supervision", "max_restarts", 2.5),
])
def test_wrong_type(tmp_path, section, key, value):
    cfg = shipped()
    cfg[section][key] = value
    path = write(tmp_path, cfg)
    text = config_error(path)
    assert str(path) in text and f"{section}.{key}" in text


def test_wrong_type_of_a_section(tmp_path):
    cfg = shipped()
    cfg["cameras"] = "cam00"
    path = write(tmp_path, cfg)
    text = config_error(path)
    assert str(path) in text and "cameras" in text and "list" in text


def test_wrong_type_in_mount_settings(tmp_path):
    cfg = shipped()
    cfg["mount"]["settings"]["slew_rate_deg_s"] = "fast"
    path = write(tmp_path, cfg)
    text = config_error(path)
    assert str(path) in text and "mount.settings" in text and "slew_rate_deg_s" in text


@pytest.mark.parametrize("section, key, value, words", [
    ("location", "latitude", 95, "less than or equal to 90"),
    ("location", "latitude", -90.5, "greater than or equal to -90"),
    ("actor_system", "admin_port", 80, "greater than or equal to 1024"),
    ("safety", "check_interval", 0, "greater than 0"),
    ("scheduler", "hysteresis", 1.0, "less than 1"),
])
def test_out_of_range(tmp_path, section, key, value, words):
    cfg = shipped()
    cfg[section][key] = value
    path = write(tmp_path, cfg)
    text = config_error(path)
    assert str(path) in text and f"{section}.{key}" in text and words in text


def test_missing_fields_file(tmp_path):
    cfg = shipped()
    cfg["scheduler"]["fields_file"] = "no_such_fields.yaml"
    path = write(tmp_path, cfg)
    text = config_error(path)
    assert str(path) in text
    assert "scheduler.fields_file" in text and "file not found" in text
    assert str(tmp_path / "no_such_fields.yaml") in text


def test_missing_state_table_and_timeline(tmp_path):
    cfg = shipped()
    cfg["states"] = "gone.yaml"
    assert "states: file not found" in config_error(write(tmp_path, cfg, "a.yaml"))
    cfg = shipped()
    cfg["weather"]["timeline"] = "weather/gone.yaml"
    assert "weather.timeline: file not found" in config_error(write(tmp_path, cfg, "b.yaml"))


def test_duplicate_camera_names(tmp_path):
    cfg = shipped()
    cfg["cameras"][1]["name"] = "cam00"
    path = write(tmp_path, cfg)
    text = config_error(path)
    assert str(path) in text and "cameras" in text and "duplicate" in text and "cam00" in text


def test_two_primary_cameras(tmp_path):
    cfg = shipped()
    cfg["cameras"][1]["primary"] = True
    path = write(tmp_path, cfg)
    text = config_error(path)
    assert str(path) in text and "cameras" in text and "primary" in text


def test_no_camera(tmp_path):
    cfg = shipped()
    cfg["cameras"] = []
    text = config_error(write(tmp_path, cfg))
    assert "cameras" in text and "at least one camera" in text


def test_bad_camera_name(tmp_path):
    cfg = shipped()
    cfg["cameras"][0]["name"] = "cam 00/../x"
    path = write(tmp_path, cfg)
    text = config_error(path)
    assert str(path) in text and "cameras.0.name" in text


def test_yaml_syntax_error_names_the_line(tmp_path):
    text = ("name: test unit\n"
            "location:\n"
            "  latitude: 19.5\n"
            "   longitude: -155.6\n"      # bad indentation: line 4
            "  elevation: 3400\n")
    path = write(tmp_path, text)
    error = config_error(path)
    assert str(path) in error and "not valid YAML" in error
    assert "line 4" in error


@pytest.mark.parametrize("text, kind", [("- mount\n- cameras\n", "list"), ("42\n", "int"),
                                        ("just a string\n", "str")])
def test_top_level_not_a_mapping(tmp_path, text, kind):
    path = write(tmp_path, text)
    error = config_error(path)
    assert str(path) in error and "top level must be a mapping" in error and kind in error


def test_missing_config_file(tmp_path):
    path = tmp_path / "absent.yaml"
    error = config_error(path)
    assert str(path) in error and "cannot read" in error and "No such file" in error


def test_unreadable_config_file(tmp_path):
    # A directory cannot be read as a file, even by root (chmod 000 would not stop root).
    path = tmp_path / "unit.yaml"
    path.mkdir()
    error = config_error(path)
    assert str(path) in error and "cannot read" in error


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------
# Checks that load_config does not make (reported as bugs)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("driver", ["ioptron", "simulator"])
def test_zero_slew_rate_is_refused(tmp_path, driver):
    cfg = shipped()
    cfg["mount"] = {"driver": driver, "settings": {"slew_rate_deg_s": 0}}
    if driver == "ioptron":
        cfg["mount"]["settings"]["port"] = "simulator"
    path = write(tmp_path, cfg)
    text = config_error(path)
    assert "mount.settings" in text and "slew_rate_deg_s" in text


@pytest.mark.parametrize("where", ["mount", "camera"])
def test_unknown_driver_setting_is_refused_at_start(tmp_path, where):
    cfg = shipped()
    if where == "mount":
        cfg["mount"]["settings"]["slew_rate"] = 3.0
    else:
        cfg["cameras"][0]["settings"]["widht"] = 1302
    path = write(tmp_path, cfg)
    text = config_error(path)
    assert "slew_rate" in text or "widht" in text


def test_boolean_is_not_a_latitude(tmp_path):
    text = UNIT_YAML.read_text().replace("latitude: 19.54", "latitude: yes")
    path = write(tmp_path, text)
    for name in ("states.yaml", "fields.yaml"):
        (tmp_path / name).symlink_to(ROOT / "conf" / name)
    (tmp_path / "weather").symlink_to(ROOT / "conf" / "weather")
    text = config_error(path)
    assert "location.latitude" in text


def test_non_text_key_in_settings_is_a_config_error(tmp_path):
    path = write(tmp_path, "mount:\n  settings: {1: 2, slew_rate_deg_s: 3.0}\n"
                           f"states: {ROOT / 'conf' / 'states.yaml'}\n"
                           f"scheduler: {{fields_file: {ROOT / 'conf' / 'fields.yaml'}}}\n"
                           "weather: {timeline: null}\n")
    text = config_error(path)
    assert "mount.settings" in text


# --------------------------------------------------------------------------
# run_unit.py refuses bad input before starting anything
# --------------------------------------------------------------------------

def run_unit(*args, timeout=60):
    return subprocess.run([sys.executable, str(ROOT / "run_unit.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def port_listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["mount"].__setitem__("speed", 3), "mount.speed"),
    (lambda c: c["location"].__setitem__("latitude", 95), "location.latitude"),
    (lambda c: c["scheduler"].__setitem__("fields_file", "missing.yaml"), "scheduler.fields_file"),
])
def test_run_unit_bad_config_exits_2_and_starts_nothing(tmp_path, mutate, key):
    cfg = shipped()
    port = free_port()
    cfg["actor_system"] = {"admin_port": port}
    mutate(cfg)
    path = write(tmp_path, cfg)
    pandir = tmp_path / "pandir"
    result = run_unit("--config", str(path), "--pandir", str(pandir), "--speed", "600",
                      "--start", "2026-11-24T03:00:00", "--nights", "1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error:" in result.stderr and key in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert not pandir.exists(), "a data directory was made for a unit that never started"
    assert not port_listening(port), "an actor system was started"
    # (the autouse no_leaked_processes fixture checks that no process was left behind)


def test_run_unit_invalid_yaml_exits_2(tmp_path):
    path = write(tmp_path, "location: [1, 2\n")
    result = run_unit("--config", str(path), "--pandir", str(tmp_path / "pandir"))
    assert result.returncode == 2
    assert "not valid YAML" in result.stderr and "line" in result.stderr
    assert not (tmp_path / "pandir").exists()


def test_run_unit_missing_config_exits_2(tmp_path):
    result = run_unit("--config", str(tmp_path / "nope.yaml"), "--pandir", str(tmp_path / "pandir"))
    assert result.returncode == 2
    assert str(tmp_path / "nope.yaml") in result.stderr
    assert not (tmp_path / "pandir").exists()


@pytest.mark.parametrize("args, words", [
    (["--speed", "0"], "--speed"),
    (["--speed", "-3"], "--speed"),
    (["--nights", "0"], "--nights"),
    (["--start", "yesterday-ish"], "--start"),
])
def test_run_unit_bad_command_line_exits_2(tmp_path, args, words):
    result = run_unit("--config", str(UNIT_YAML), "--pandir", str(tmp_path / "pandir"), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert words in result.stderr
    assert not (tmp_path / "pandir").exists()


def test_cloudwatcher_settings_checked_at_load(tmp_path):
    base = {"states": str(ROOT / "conf" / "states.yaml"),
            "scheduler": {"fields_file": str(ROOT / "conf" / "fields.yaml")}}
    ok = load_config(write(tmp_path, {**base, "weather": {"driver": "cloudwatcher", "timeline": None,
                                                          "settings": {"port": "simulator", "retries": 1}}}))
    assert ok["weather"]["settings"] == {"port": "simulator", "retries": 1}
    with pytest.raises(ConfigError, match="weather.settings: unknown cloudwatcher setting.*timeout"):
        load_config(write(tmp_path, {**base, "weather": {"driver": "cloudwatcher", "timeline": None,
                                                         "settings": {"port": "simulator", "timeout": 1}}}))
    with pytest.raises(ConfigError, match="weather.settings: the simulator driver takes no settings"):
        load_config(write(tmp_path, {**base, "weather": {"timeline": None, "settings": {"port": "x"}}}))


def test_supervision_overrides_name_real_actors(tmp_path):
    cfg = shipped()
    cfg["supervision"]["children"] = {"cam07": {"max_restarts": 2}}
    text = config_error(write(tmp_path, cfg))
    assert "supervision.children: no actor named ['cam07']" in text
    cfg["supervision"]["children"] = {"cam01": {"restart": "sometimes"}}
    text = config_error(write(tmp_path, cfg))
    assert "supervision.children.cam01.restart" in text

"""The control channel: request validation (observatory/control.py), the socket
server on its own, and run_unit.py serving it for a real running unit."""
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
import yaml

from observatory import control
from observatory.config import ConfigError, load_config
from observatory.control import (ControlError, ControlHandler, ControlServer, apply_overrides, check_request,
                                 parse_words, validate_change)
from tests.unit_runner import ROOT, RunningUnit, write_config

DARK = "2026-11-24T08:00:00"


# ------------------------------------------------------------ validation

@pytest.mark.parametrize("request_, problem", [
    ("status", "must be a JSON object"),
    ({"args": {}}, "needs a command"),
    ({"command": "parq"}, "unknown command 'parq'; did you mean park?"),
    ({"command": "status", "verbose": True}, "unknown request field(s) verbose"),
    ({"command": "status", "args": [1]}, "args must be a JSON object"),
    ({"command": "picture", "args": {}}, "picture: missing argument exptime"),
    ({"command": "picture", "args": {"exptime": "5"}}, "picture: exptime must be a number, got '5'"),
    ({"command": "picture", "args": {"exptime": True}}, "picture: exptime must be a number"),
    ({"command": "picture", "args": {"exptime": float("nan")}}, "picture: exptime must be a number"),
    ({"command": "picture", "args": {"exptime": 0}}, "picture: exptime must be greater than 0"),
    ({"command": "picture", "args": {"exptime": 5, "camera": 3}}, "picture: camera must be text, got 3"),
    ({"command": "picture", "args": {"exptime": 5, "iso": 800}}, "picture: unknown argument(s) iso (takes: exptime, camera)"),
    ({"command": "park", "args": {"force": True}}, "park: unknown argument(s) force (takes: reason)"),
    ({"command": "unpark", "args": {"now": 1}}, "unpark: unknown argument(s) now (takes: no arguments)"),
    ({"command": "observe", "args": {"field": "  "}}, "observe: field must not be empty"),
    ({"command": "observe"}, "observe: missing argument field"),
    ({"command": "events", "args": {"since": 1.5}}, "events: since must be a whole number, got 1.5"),
    ({"command": "events", "args": {"limit": 0}}, "events: limit must be 1..1000"),
    ({"command": "events", "args": {"since": -1}}, "events: since must be 0 or more"),
    ({"command": "config-get", "args": {"key": "safety..max_wind"}}, "not a configuration key"),
    ({"command": "config-set", "args": {"key": "safety.max_wind"}}, "config-set: missing argument value"),
    ({"command": "config-set", "args": {"key": "safety.max_wind", "value": [1]}}, "value must be a scalar"),
    ({"command": "fault", "args": {"target": "mount"}}, "fault: missing argument kind"),
    ({"command": "fault", "args": {"target": "mount", "kind": "hang", "params": [1]}}, "params must be a mapping"),
])
def test_bad_requests_are_refused_naming_the_problem(request_, problem):
    with pytest.raises(ControlError) as e:
        check_request(request_)
    assert problem in str(e.value)
    assert e.value.code == "bad_request"


def test_good_requests_come_back_checked():
    assert check_request({"command": "status"}) == ("status", {})
    assert check_request({"command": "picture", "args": {"exptime": 5}}) == ("picture", {"exptime": 5.0})
    assert check_request({"command": "observe", "args": {"field": " HD 209458 "}}) == \
        ("observe", {"field": "HD 209458"})
    assert check_request({"command": "config-set", "args": {"key": "safety.max_wind", "value": None}})[1] == \
        {"key": "safety.max_wind", "value": None}
    assert check_request({"command": "events", "args": {"since": 3, "limit": None}}) == ("events", {"since": 3})


@pytest.mark.parametrize("words, request_", [
    (["status"], {"command": "status", "args": {}}),
    (["observe", "HD", "209458"], {"command": "observe", "args": {"field": "HD 209458"}}),
    (["picture", "--exptime", "5"], {"command": "picture", "args": {"exptime": 5}}),
    (["picture", "--exptime=2.5", "--camera", "cam01"], {"command": "picture",
                                                         "args": {"exptime": 2.5, "camera": "cam01"}}),
    (["config", "get", "safety.max_wind"], {"command": "config-get", "args": {"key": "safety.max_wind"}}),
    (["config", "set", "safety.max_wind", "40"], {"command": "config-set",
                                                  "args": {"key": "safety.max_wind", "value": "40"}}),
    (["config-set", "observing.pointing_exptime", "20"],
     {"command": "config-set", "args": {"key": "observing.pointing_exptime", "value": "20"}}),
    (["events", "--since", "12", "--limit", "5"], {"command": "events", "args": {"since": 12, "limit": 5}}),
    (["fault", "cam01", "hang", "seconds=3", "after=1.5", "loud=true", "note=x"],
     {"command": "fault", "args": {"target": "cam01", "kind": "hang",
                                   "params": {"seconds": 3, "after": 1.5, "loud": True, "note": "x"}}}),
    (["park", "--reason", "dome check"], {"command": "park", "args": {"reason": "dome check"}}),
])
def test_console_words_become_requests(words, request_):
    assert parse_words(words) == request_
    check_request(request_)


@pytest.mark.parametrize("words, problem", [
    ([], "no command given"),
    (["config"], "config get KEY or config set KEY VALUE"),
    (["config", "delete", "x"], "config get KEY or config set KEY VALUE"),
    (["picture", "--exptime"], "picture: --exptime needs a value"),
    (["picture", "--exptime", "long"], "picture: --exptime must be a number, got 'long'"),
    (["picture", "--iso", "800"], "picture: unknown option --iso (options: --exptime, --camera)"),
    (["events", "--since", "1.5"], "events: --since must be a whole number"),
    (["status", "now"], "status: takes no positional arguments"),
    (["stauts"], "unknown command 'stauts'; did you mean status?"),
])
def test_console_words_that_cannot_be_read(words, problem):
    with pytest.raises(ControlError) as e:
        parse_words(words)
    assert problem in str(e.value)


# ------------------------------------------------------- live configuration

@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return load_config(write_config(tmp_path_factory.mktemp("cfg")))


def test_live_changes_are_validated_with_the_section_model(config):
    assert validate_change(config, "safety.max_wind", 40)[0] == 40.0
    assert validate_change(config, "observing.meridian_flip", False)[0] is False
    with pytest.raises(ControlError, match="safety.max_wind: Input should be greater than 0"):
        validate_change(config, "safety.max_wind", -3)
    with pytest.raises(ControlError, match="safety.max_wind: Input should be a valid number"):
        validate_change(config, "safety.max_wind", "windy")
    with pytest.raises(ControlError, match=r"safety.max_windy: unknown key \(known in safety: .*max_wind"):
        validate_change(config, "safety.max_windy", 3)
    for key in ("location.latitude", "mount.driver", "scheduler.fields_file", "name"):
        with pytest.raises(ControlError, match="restart needed") as e:
            validate_change(config, key, 1)
        assert e.value.code == "refused"
    with pytest.raises(ControlError, match="give one key"):
        validate_change(config, "safety", 1)


def test_values_are_yaml_scalars():
    assert control.parse_scalar("k", "40") == 40
    assert control.parse_scalar("k", "2.5") == 2.5
    assert control.parse_scalar("k", "true") is True
    assert control.parse_scalar("k", "null") is None
    assert control.parse_scalar("k", "veto") == "veto"
    with pytest.raises(ControlError, match="must be a scalar"):
        control.parse_scalar("k", "[1, 2]")
    with pytest.raises(ControlError, match="not a YAML value"):
        control.parse_scalar("k", "{")


def test_overrides_file_is_applied_and_checked(tmp_path, config):
    path = tmp_path / "config-overrides.yaml"
    assert apply_overrides(config, path) == (config, {})
    path.write_text("safety.max_wind: 40\nobserving.meridian_flip: false\n")
    new, applied = apply_overrides(config, path)
    assert applied == {"safety.max_wind": 40.0, "observing.meridian_flip": False}
    assert new["safety"]["max_wind"] == 40.0 and new["observing"]["meridian_flip"] is False
    assert config["safety"]["max_wind"] == 50.0, "the loaded configuration itself is not changed"
    for text, problem in (("safety.max_wind: -1\n", "safety.max_wind: Input should be greater than 0"),
                          ("location.latitude: 10\n", "location.latitude: restart needed"),
                          ("safety.max_gusts: 10\n", "safety.max_gusts: unknown key"),
                          ("- safety.max_wind\n", "expected a mapping of dotted keys"),
                          ("safety.max_wind: [\n", "not valid YAML")):
        path.write_text(text)
        with pytest.raises(ConfigError) as e:
            apply_overrides(config, path)
        assert str(e.value).startswith(str(path)), str(e.value)
        assert problem in str(e.value)


def test_a_bad_overrides_file_stops_run_unit_before_anything_starts(tmp_path):
    cfg = write_config(tmp_path)
    pandir = tmp_path / "pandir"
    (pandir / "run").mkdir(parents=True)
    (pandir / "run" / "config-overrides.yaml").write_text("safety.max_wind: -5\n")
    r = subprocess.run([sys.executable, str(ROOT / "run_unit.py"), "--config", str(cfg), "--pandir", str(pandir)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert f"{pandir}/run/config-overrides.yaml" in r.stderr and "safety.max_wind" in r.stderr
    assert "Traceback" not in r.stderr


# ------------------------------------------------------ the server on its own

class FakeMainLoop:
    """Stands in for run_unit.py's _watch: answers queued messages like the supervisor."""

    def __init__(self, handler, answer):
        self.handler, self.answer, self.stop = handler, answer, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                item = self.handler.queue.get(timeout=0.05)
            except Exception:  # noqa: BLE001 - queue.Empty
                continue
            reply = self.answer(item.message)
            if reply is not None:
                item.resolve(reply)


def _serve(tmp_path, config, answer, name="pandir", reply_timeout=2.0):
    pandir = tmp_path / name
    (pandir / "run").mkdir(parents=True)
    handler = ControlHandler(pandir, config, reply_timeout=reply_timeout)
    server = ControlServer(control.socket_path(pandir), handler).start()
    return pandir, handler, server, FakeMainLoop(handler, answer)


def test_server_protocol_mode_and_clean_up(tmp_path, config):
    from messages import ControlReply, UnitStatus

    def answer(msg):
        if type(msg).__name__ == "GetUnitStatus":
            return UnitStatus(status={"state": "parked"}, request_id=msg.request_id)
        if type(msg).__name__ == "ParkUnit":
            return ControlReply(ok=True, result={"hold": "park"}, request_id=msg.request_id)
        if type(msg).__name__ == "PauseUnit":
            return ControlReply(ok=False, error="parked by an operator: unpark first", request_id=msg.request_id)
        return None                     # the supervisor stays silent

    # A stale socket of a dead unit is replaced.
    stale_dir = tmp_path / "pandir" / "run"
    stale_dir.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(stale_dir / "control.sock"))
    stale.close()
    handler = ControlHandler(tmp_path / "pandir", config, reply_timeout=1.0)
    server = ControlServer(control.socket_path(tmp_path / "pandir"), handler).start()
    loop = FakeMainLoop(handler, answer)
    path = control.socket_path(tmp_path / "pandir")
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        with control.Connection(path) as conn:
            assert conn.request("status") == {"ok": True, "result": {"state": "parked"}, "error": ""}
            assert conn.request("park")["result"] == {"hold": "park"}
            refused = conn.request("pause")
            assert refused["ok"] is False and refused["code"] == "refused"
            assert refused["error"] == "parked by an operator: unpark first"
            silent = conn.request("resume")
            assert silent["code"] == "timeout"
            assert "did not answer ResumeUnit within 1 s" in silent["error"]
            assert conn.request("config-get", {"key": "safety.max_wind"})["result"] == \
                {"key": "safety.max_wind", "value": 50.0, "live": True}
            assert conn.request("config-get", {"key": "location.latitude"})["result"]["live"] is False
            assert conn.request("config-get", {"key": "safety.nothing"})["error"] == \
                "config: no configuration key 'safety.nothing'"
            assert conn.request("why")["result"] == {"decision": None}
            assert conn.request("events")["result"] == {"events": [], "last_id": 0}
            assert conn.request("observe", {"field": "Nowhere"})["error"].startswith(
                "observe: no field named 'Nowhere' in fields.yaml (fields: HD 189733, ")
            assert conn.request("picture", {"exptime": 1, "camera": "cam9"})["error"] == \
                "picture: no camera named 'cam9' (cameras: cam00, cam01)"
            fields = conn.request("fields")["result"]
            assert any(f["name"] == "HD 209458" for f in fields["fields"])
            assert fields["site"]["name"] == "Mauna Loa Observatory"
            # Raw lines: not JSON, blank lines, two requests in one write.
            conn.sock.sendall(b"{not json\n\n" + json.dumps({"command": "status"}).encode() + b"\n")
            assert conn.reader.readline().startswith(b'{"ok": false, "result": {}, "error": "not JSON')
            assert json.loads(conn.reader.readline())["ok"] is True
    finally:
        loop.stop.set()
        server.close()
    assert not path.exists(), "the socket is removed when the server closes"
    with pytest.raises(OSError):
        control.request(tmp_path / "pandir", "status")


def test_long_pandir_paths_still_work(tmp_path, config):
    from messages import UnitStatus
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(control.socket_path(deep / "pandir"))) > 108
    pandir, handler, server, loop = _serve(deep, config, lambda m: UnitStatus(status={"state": "x"},
                                                                              request_id=m.request_id))
    try:
        assert control.request(pandir, "status")["result"] == {"state": "x"}
    finally:
        loop.stop.set()
        server.close()
    assert not control.socket_path(pandir).exists()


def test_config_set_persists_only_what_the_supervisor_accepted(tmp_path, config):
    from messages import ControlReply
    accept = {"ok": True}

    def answer(msg):
        return ControlReply(ok=accept["ok"], error="" if accept["ok"] else "busy", result={"key": msg.key},
                            request_id=msg.request_id)

    config = json.loads(json.dumps(config))
    pandir, handler, server, loop = _serve(tmp_path, config, answer)
    overrides = control.overrides_path(pandir)
    try:
        r = control.request(pandir, "config-set", {"key": "safety.max_wind", "value": "40"})
        assert r["ok"], r
        assert r["result"]["value"] == 40.0 and r["result"]["previous"] == 50.0
        assert yaml.safe_load(overrides.read_text()) == {"safety.max_wind": 40.0}
        assert control.request(pandir, "config-get", {"key": "safety.max_wind"})["result"]["value"] == 40.0
        accept["ok"] = False
        r = control.request(pandir, "config-set", {"key": "safety.max_gust", "value": 90})
        assert r == {"ok": False, "result": {}, "error": "busy", "code": "refused"}
        assert yaml.safe_load(overrides.read_text()) == {"safety.max_wind": 40.0}
        r = control.request(pandir, "config-set", {"key": "location.elevation", "value": "10"})
        assert r["code"] == "refused" and "restart needed" in r["error"]
    finally:
        loop.stop.set()
        server.close()


# ------------------------------------------------- run_unit.py serving a real unit

def _ask(unit, command, args=None, timeout=10.0):
    return control.request(unit.pandir, command, args or {}, timeout=timeout)


def _state(unit):
    r = _ask(unit, "status")
    return r["result"]["state"] if r["ok"] else None


def test_operator_commands_on_a_running_unit(tmp_path):
    unit = RunningUnit(tmp_path, start=DARK, speed=60)
    path = control.socket_path(unit.pandir)
    try:
        unit.wait_for(path.exists, 60, "the control socket")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        unit.wait_for(lambda: _state(unit) in ("observing", "analyzing", "tracking"), 90, "observing")

        # status is the supervisor's own status dict, fast.
        t0 = time.perf_counter()
        status = _ask(unit, "status")
        assert time.perf_counter() - t0 < 1.0
        assert status["ok"] and status["result"]["unit"] == "Generic PANOPTES Unit"
        assert status["result"]["target"] and status["result"]["safety"]["safe"] is True

        why = _ask(unit, "why")["result"]["decision"]
        assert why["winner"] == status["result"]["last_decision"]["winner"]
        assert len(why["candidates"]) > 5 and any(c["vetoes"] for c in why["candidates"])

        first = _ask(unit, "events", {"limit": 5})["result"]
        assert len(first["events"]) == 5 and first["last_id"] == first["events"][-1]["id"]
        later = _ask(unit, "events", {"since": first["events"][0]["id"], "limit": 2})["result"]["events"]
        assert [e["id"] for e in later] == [first["events"][1]["id"], first["events"][2]["id"]]

        # Refused before the supervisor sees it.
        assert _ask(unit, "picture", {"exptime": -1})["code"] == "bad_request"
        assert "restart needed" in _ask(unit, "config-set", {"key": "mount.driver", "value": "indi"})["error"]

        # Live configuration: answered by the supervisor, then kept.
        r = _ask(unit, "config-set", {"key": "safety.max_wind", "value": "40"})
        assert r["ok"], r
        assert _ask(unit, "config-get", {"key": "safety.max_wind"})["result"]["value"] == 40.0
        assert yaml.safe_load(control.overrides_path(unit.pandir).read_text()) == {"safety.max_wind": 40.0}

        # Operator commands go to the supervisor and come back as its ControlReply.
        # (What a reply holds besides ok is the supervisor's business; the field
        # name is matched without regard to case before it is sent.)
        r = _ask(unit, "observe", {"field": "hd 209458"})
        assert r["ok"] and "HD 209458" in json.dumps(r["result"]), r
        r = _ask(unit, "pause")
        assert r["ok"], r
        r = _ask(unit, "resume")
        assert r["ok"], r
        r = _ask(unit, "park", {"reason": "test"})
        assert r["ok"], r
        unit.wait_for(lambda: _state(unit) == "parked", 60, "parked by the operator")
        r = _ask(unit, "picture", {"exptime": 5, "camera": "cam00"})
        assert r["ok"] and "cam00" in json.dumps(r["result"]) and "cam01" not in json.dumps(r["result"]), r
        r = _ask(unit, "fault", {"target": "nosuchactor", "kind": "raise"})
        assert not r["ok"] and r["code"] == "refused", r     # no such actor (or not simulation mode)
        r = _ask(unit, "unpark")
        assert r["ok"], r
        operator = unit.query("SELECT message FROM events WHERE kind='operator' ORDER BY id")
        assert any("park requested (test)" in m for (m,) in operator), operator

        # stop: answered at once, then the unit parks and exits.
        t0 = time.perf_counter()
        r = _ask(unit, "stop")
        assert r["ok"] and r["result"]["stopping"] is True
        assert time.perf_counter() - t0 < 1.0
        assert unit.wait(90) == 0
        assert "stopping (stop command: operator request): parking and closing" in unit.output()
        assert "unit stopped (parked)" in unit.output()
        assert not path.exists(), "run_unit.py removes its socket at exit"
    finally:
        unit.kill()

    # The override is applied over --config at the next start.
    again = RunningUnit(tmp_path, start=DARK, speed=60, config=unit.config)
    try:
        again.wait_for(path.exists, 60, "the control socket")
        assert _ask(again, "config-get", {"key": "safety.max_wind"})["result"]["value"] == 40.0
        again.wait_for(lambda: "configuration overrides" in again.output(), 10, "the overrides line")
        assert "safety.max_wind=40.0" in again.output()
        # A second run_unit.py on the same PANDIR is refused and leaves the socket alone.
        (tmp_path / "second").mkdir()
        other_port = write_config(tmp_path / "second")
        second = subprocess.run([sys.executable, str(ROOT / "run_unit.py"), "--config", str(other_port),
                                 "--pandir", str(again.pandir)], capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "holds" in second.stderr
        assert _ask(again, "status")["ok"]
    finally:
        again.kill()

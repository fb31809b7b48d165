"""The control channel: what an operator may ask of a running unit, and the
Unix socket ``$PANDIR/run/control.sock`` through which the console, the HTTP
gateway and scripts ask it.

Protocol: one JSON object per line, both ways.

    request  {"command": "picture", "args": {"exptime": 5, "camera": "cam00"}}
    reply    {"ok": true, "result": {...}, "error": ""}
    refusal  {"ok": false, "result": {}, "error": "picture: missing argument exptime", "code": "bad_request"}

``code`` (only on errors) says who refused: ``bad_request`` (the request
itself is wrong), ``refused`` (the unit would not do it), ``timeout`` (the
supervisor did not answer in time), ``unavailable`` (the unit is stopping or
its store cannot be read), ``internal`` (a bug: see the unit's output).

Three parts live here:

- the command table and ``check_request``: the one validation shared by the
  console, the gateway and run_unit.py (cheap to import: no yaml, pydantic,
  astropy or thespian at module level, so the console starts fast);
- ``ControlHandler`` and ``ControlServer``: the server side, run by
  run_unit.py in a thread. Commands for the supervisor become typed messages
  (messages/) that the handler queues for run_unit.py's main loop, which alone
  talks to the actor system; the others (config, why, events, fields) are
  answered here from the loaded configuration and a read-only view of the
  SQLite store;
- ``request``: a small client.
"""
from __future__ import annotations

import json
import math
import os
import queue
import socket
import threading
import time
from pathlib import Path

SOCKET_NAME = "control.sock"
OVERRIDES_NAME = "config-overrides.yaml"
LIVE_SECTIONS = ("observing", "supervision", "safety", "scheduler")
NOT_LIVE_KEYS = ("scheduler.fields_file",)
MAX_LINE = 64 * 1024
DEFAULT_REPLY_TIMEOUT = 5.0
EVENTS_DEFAULT_LIMIT = 50
EVENTS_MAX_LIMIT = 1000


class ControlError(ValueError):
    """A request that cannot be carried out; ``code`` says why (see the module doc)."""

    def __init__(self, message: str, code: str = "bad_request"):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------- commands

# (Plain classes, not dataclasses: importing dataclasses costs the console
# more start-up time than everything else here.)
class Arg:
    """One argument of a command. ``type``: 'str' | 'number' | 'int' | 'dict' |
    'scalar'. ``positional``: given on the console without --name (the last
    positional takes the rest of the line)."""
    __slots__ = ("name", "type", "required", "help", "positional")

    def __init__(self, name: str, type: str, required: bool = False, help: str = "", positional: bool = False):
        self.name, self.type, self.required, self.help, self.positional = name, type, required, help, positional


class Command:
    """A command: its arguments, and whether run_unit.py answers it itself
    (``local``) or the supervisor does."""
    __slots__ = ("name", "help", "args", "local", "usage")

    def __init__(self, name: str, help: str, args: tuple = (), local: bool = False, usage: str = ""):
        self.name, self.help, self.args, self.local, self.usage = name, help, args, local, usage

    def arg(self, name: str) -> Arg | None:
        return next((a for a in self.args if a.name == name), None)


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("status", "the unit's state, target, mount, cameras, safety and restarts"),
    Command("park", "park (and close) now and stay parked until unpark",
            (Arg("reason", "str", help="recorded with the park"),), usage="park [--reason TEXT]"),
    Command("unpark", "lift an operator park: observing resumes when safe and dark"),
    Command("pause", "let exposures under way finish, then start no new ones until resume"),
    Command("resume", "end a pause"),
    Command("stop", "park, close and stop the unit (run_unit.py exits)",
            (Arg("reason", "str", help="recorded with the stop"),), usage="stop [--reason TEXT]"),
    Command("observe", "observe this field next, whatever the scheduler would choose",
            (Arg("field", "str", True, "a field name from the fields file", positional=True),),
            usage="observe FIELD"),
    Command("picture", "one exposure now at the current pointing (all cameras, or one)",
            (Arg("exptime", "number", True, "exposure time, seconds"),
             Arg("camera", "str", help="one camera (default: all)")),
            usage="picture --exptime SECONDS [--camera NAME]"),
    Command("config-get", "a configuration value (a dotted key, or a whole section)",
            (Arg("key", "str", True, "e.g. safety.max_wind", positional=True),), local=True,
            usage="config get KEY"),
    Command("config-set", "change a live setting (observing., supervision., safety., scheduler.); "
            "kept across restarts in run/config-overrides.yaml",
            (Arg("key", "str", True, "e.g. safety.max_wind", positional=True),
             Arg("value", "scalar", True, "a YAML scalar: 40, 2.5, true, null, text", positional=True)),
            local=True, usage="config set KEY VALUE"),
    Command("why", "the last scheduling decision: the winner, every candidate, merits and vetoes", local=True),
    Command("events", "events from the unit's journal, oldest first",
            (Arg("since", "int", help="only events with an id above this"),
             Arg("limit", "int", help=f"at most this many (default {EVENTS_DEFAULT_LIMIT}, "
                                      f"max {EVENTS_MAX_LIMIT})")),
            local=True, usage="events [--since ID] [--limit N]"),
    Command("fields", "the fields of the fields file (names and positions) and the site", local=True),
    Command("fault", "simulation only: make an actor or simulator misbehave",
            (Arg("target", "str", True, "an actor or simulator name", positional=True),
             Arg("kind", "str", True, "raise, exit, hang, kill, timeout, garbage, disconnect, slow, "
                                      "disk_full, unsafe, driver_death, ...", positional=True),
             Arg("params", "dict", help="KEY=VALUE ... on the console")),
            usage="fault TARGET KIND [KEY=VALUE ...]"),
)}


def _type_error(command: str, arg: Arg, value) -> ControlError:
    wanted = {"str": "text", "number": "a number", "int": "a whole number", "dict": "a mapping",
              "scalar": "a scalar (text, number, true/false or null)"}[arg.type]
    return ControlError(f"{command}: {arg.name} must be {wanted}, got {value!r}")


def _check_value(command: str, arg: Arg, value):
    if arg.type == "str":
        if not isinstance(value, str):
            raise _type_error(command, arg, value)
        if not value.strip():
            raise ControlError(f"{command}: {arg.name} must not be empty")
        return value.strip()
    if arg.type == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _type_error(command, arg, value)
        return float(value)
    if arg.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(command, arg, value)
        return value
    if arg.type == "dict":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _type_error(command, arg, value)
        return dict(value)
    if arg.type == "scalar":
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise _type_error(command, arg, value)
        return value
    raise AssertionError(arg.type)


def check_request(request) -> tuple[str, dict]:
    """Validate a decoded request; return (command, args) with its arguments checked.

    Raises ControlError naming the problem: not an object, unknown command,
    missing, unknown or mistyped argument, or a value out of range."""
    if not isinstance(request, dict):
        raise ControlError(f"a request must be a JSON object {{\"command\": ..., \"args\": {{...}}}}, "
                           f"got {type(request).__name__}")
    extra = sorted(set(request) - {"command", "args"})
    if extra:
        raise ControlError(f"unknown request field(s) {', '.join(extra)} (a request has command and args)")
    name = request.get("command")
    if not isinstance(name, str) or not name:
        raise ControlError("a request needs a command (text)")
    command = COMMANDS.get(name)
    if command is None:
        raise ControlError(unknown_command_message(name))
    args = request.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ControlError(f"{name}: args must be a JSON object, got {type(args).__name__}")
    unknown = sorted(set(args) - {a.name for a in command.args})
    if unknown:
        takes = ", ".join(a.name for a in command.args) or "no arguments"
        raise ControlError(f"{name}: unknown argument(s) {', '.join(map(str, unknown))} (takes: {takes})")
    checked = {}
    for arg in command.args:
        if arg.name not in args:
            if arg.required:
                raise ControlError(f"{name}: missing argument {arg.name} ({arg.help})")
            continue
        if args[arg.name] is None and arg.type != "scalar":
            if arg.required:
                raise ControlError(f"{name}: missing argument {arg.name} ({arg.help})")
            continue
        checked[arg.name] = _check_value(name, arg, args[arg.name])
    if name == "picture" and checked["exptime"] <= 0:
        raise ControlError(f"picture: exptime must be greater than 0, got {checked['exptime']:g}")
    if name == "events":
        if checked.get("since", 0) < 0:
            raise ControlError(f"events: since must be 0 or more, got {checked['since']}")
        if not 1 <= checked.get("limit", 1) <= EVENTS_MAX_LIMIT:
            raise ControlError(f"events: limit must be 1..{EVENTS_MAX_LIMIT}, got {checked['limit']}")
    if name in ("config-get", "config-set"):
        key = checked["key"]
        if any(not part for part in key.split(".")):
            raise ControlError(f"{name}: not a configuration key: {key!r} (e.g. safety.max_wind)")
    return name, checked


def unknown_command_message(name: str) -> str:
    import difflib
    close = difflib.get_close_matches(name, list(COMMANDS) + ["config"], n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown command {name!r}{hint} (commands: {', '.join(command_words())})"


def command_words() -> list[str]:
    """Commands as the console spells them ('config get' rather than 'config-get')."""
    words = []
    for name in COMMANDS:
        word = name.replace("-", " ") if name.startswith("config-") else name
        words.append(word)
    return words


# ------------------------------------------------ console words -> a request

def _number(text: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _param_value(text: str):
    """A KEY=VALUE parameter on the console: a number, true/false/null, or text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    number = _number(text)
    return text if number is None else number


def parse_words(words: list[str]) -> dict:
    """Console words (``picture --exptime 5 --camera cam00``, ``observe HD 209458``,
    ``config set safety.max_wind 40``) -> a request for ``check_request``.

    Raises ControlError for what cannot be read (an option without its value,
    a number that is not one); everything else is left to check_request."""
    if not words:
        raise ControlError("no command given (commands: " + ", ".join(command_words()) + ")")
    name, rest = words[0], list(words[1:])
    if name == "config":
        if not rest or rest[0] not in ("get", "set"):
            raise ControlError("config: say config get KEY or config set KEY VALUE")
        name, rest = f"config-{rest[0]}", rest[1:]
    command = COMMANDS.get(name)
    if command is None:
        raise ControlError(unknown_command_message(name))
    args: dict = {}
    positionals: list[str] = []
    params: dict = {}
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.startswith("--") and len(word) > 2 and not positionals:
            key, eq, value = word[2:].partition("=")
            arg = command.arg(key)
            if arg is None or arg.positional or arg.type == "dict":
                takes = ", ".join(f"--{a.name}" for a in command.args if not a.positional and a.type != "dict")
                raise ControlError(f"{name}: unknown option --{key} (options: {takes or 'none'})")
            if not eq:
                i += 1
                if i >= len(rest):
                    raise ControlError(f"{name}: --{key} needs a value")
                value = rest[i]
            if arg.type in ("number", "int"):
                number = _number(value)
                if number is None or (arg.type == "int" and not isinstance(number, int)):
                    kind = "a number" if arg.type == "number" else "a whole number"
                    raise ControlError(f"{name}: --{key} must be {kind}, got {value!r}")
                args[key] = number
            else:
                args[key] = value
        elif command.arg("params") and positionals and len(positionals) >= 2 and "=" in word:
            k, _, v = word.partition("=")
            if not k:
                raise ControlError(f"{name}: parameter {word!r} has no name (KEY=VALUE)")
            params[k] = _param_value(v)
        else:
            positionals.append(word)
        i += 1
    slots = [a for a in command.args if a.positional]
    if positionals and not slots:
        raise ControlError(f"{name}: takes no positional arguments, got {' '.join(positionals)!r}"
                           + (f" (usage: {command.usage})" if command.usage else ""))
    for j, arg in enumerate(slots):
        if j >= len(positionals):
            break
        if j == len(slots) - 1:
            args[arg.name] = " ".join(positionals[j:])       # field names have spaces
        else:
            args[arg.name] = positionals[j]
    if params:
        args["params"] = params
    return {"command": name, "args": args}


# ------------------------------------------------------------ the socket path

def socket_path(pandir: str | os.PathLike) -> Path:
    return Path(pandir) / "run" / SOCKET_NAME


def overrides_path(pandir: str | os.PathLike) -> Path:
    return Path(pandir) / "run" / OVERRIDES_NAME


def unix_address(path: Path) -> tuple[str, int | None]:
    """A sun_path holds 107 bytes: reach a longer path through /proc/self/fd/N
    of its directory (Linux). Returns (address, fd to close afterwards)."""
    text = str(path)
    if len(text.encode()) < 100:
        return text, None
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{path.name}", fd


def connect(path: str | os.PathLike, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    address, fd = unix_address(Path(path))
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    finally:
        if fd is not None:
            os.close(fd)
    return sock


class Connection:
    """A client connection: send requests, read replies, one line each."""

    def __init__(self, path: str | os.PathLike, timeout: float = 10.0):
        self.sock = connect(path, timeout)
        self.reader = self.sock.makefile("rb")

    def request(self, command: str, args: dict | None = None) -> dict:
        line = json.dumps({"command": command, "args": args or {}}) + "\n"
        self.sock.sendall(line.encode())
        reply = self.reader.readline(MAX_LINE * 64)
        if not reply:
            raise ConnectionError("the unit closed the control connection")
        return json.loads(reply)

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request(pandir: str | os.PathLike, command: str, args: dict | None = None, timeout: float = 10.0) -> dict:
    """One request to the unit under ``pandir``; raises OSError when no unit answers."""
    with Connection(socket_path(pandir), timeout) as conn:
        return conn.request(command, args)


# ------------------------------------------------------ live configuration

def config_value(config: dict, key: str):
    node = config
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ControlError(f"config: no configuration key {key!r}")
    return node


def live_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be changed on a running unit, or None if it can."""
    section = key.split(".")[0]
    if key in NOT_LIVE_KEYS or section not in LIVE_SECTIONS:
        return (f"{key}: restart needed: only keys under {', '.join(s + '.' for s in LIVE_SECTIONS)} "
                f"(not {', '.join(NOT_LIVE_KEYS)}) can be changed on a running unit; edit the "
                "configuration file and restart the unit")
    if "." not in key:
        return f"{key}: give one key (e.g. {section}.{'max_wind' if section == 'safety' else '...'}), not a section"
    return None


def _section_models() -> dict:
    from observatory.config import ObservingConfig, SafetyConfig, SchedulerConfig, SupervisionConfig
    return {"observing": ObservingConfig, "supervision": SupervisionConfig, "safety": SafetyConfig,
            "scheduler": SchedulerConfig}


def parse_scalar(key: str, text):
    """VALUE as typed: a YAML scalar (``40`` -> 40, ``true``, ``null``, text)."""
    if not isinstance(text, str):
        return text
    import yaml
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ControlError(f"config set {key}: {text!r} is not a YAML value: "
                           f"{getattr(e, 'problem', None) or e}") from None
    if isinstance(value, (list, dict)) or not (value is None or isinstance(value, (str, int, float, bool))):
        raise ControlError(f"config set {key}: the value must be a scalar (a number, true/false, null or text), "
                           f"got {type(value).__name__}")
    return value


def validate_change(config: dict, key: str, value, source: str = "config set") -> tuple[object, dict]:
    """Check that ``key`` may change live and that ``value`` (already parsed) is
    valid there, with the pydantic model of its section applied to a copy of
    the configuration. Returns (the value as the model reads it, the new section)."""
    from pydantic import ValidationError

    from observatory.config import _format_error
    problem = live_key_problem(key)
    if problem:
        raise ControlError(problem, "refused")
    section, _, rest = key.partition(".")
    if "." in rest:
        raise ControlError(f"{source}: {key}: no such key (live settings are one level deep, "
                           f"e.g. {section}.{next(iter(config.get(section) or {'x': 0}))})")
    model = _section_models()[section]
    if rest not in model.model_fields:
        known = ", ".join(k for k in model.model_fields if f"{section}.{k}" not in NOT_LIVE_KEYS)
        raise ControlError(f"{source}: {key}: unknown key (known in {section}: {known})")
    current = dict(config.get(section) or {})
    current[rest] = value
    try:
        validated = model.model_validate(current)
    except ValidationError as e:
        raise ControlError(_format_error(source, e).replace(f"{source}: {rest}:", f"{source}: {key}:")) from None
    return getattr(validated, rest), {**current, rest: getattr(validated, rest)}


def apply_overrides(config: dict, path: str | os.PathLike) -> tuple[dict, dict]:
    """Apply ``$PANDIR/run/config-overrides.yaml`` (what ``config set`` kept)
    over a loaded configuration. Returns (config, the overrides applied).
    Raises observatory.config.ConfigError naming the file."""
    import yaml

    from observatory.config import ConfigError
    path = Path(path)
    if not path.exists():
        return config, {}
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if raw is None:
        return config, {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of dotted keys to values "
                          f"(safety.max_wind: 40), got {type(raw).__name__}")
    config = json.loads(json.dumps(config))     # a deep copy of plain values
    applied = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{path}: {key!r}: keys must be dotted text such as safety.max_wind")
        try:
            value, section = validate_change(config, key, value, source=str(path))
        except ControlError as e:
            raise ConfigError(f"{path}: {e}" if not str(e).startswith(str(path)) else str(e)) from None
        config[key.split(".")[0]] = section
        applied[key] = value
    return config, applied


def save_override(path: str | os.PathLike, key: str, value) -> None:
    import yaml
    path = Path(path)
    try:
        current = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        current = {}
    if not isinstance(current, dict):
        current = {}
    current[key] = value
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("# Written by `config set` on a running unit; applied over --config at start-up.\n"
                   + yaml.safe_dump(current, sort_keys=True))
    os.replace(tmp, path)


# ------------------------------------------------------------- server side

class Pending:
    """A command for the supervisor, queued for run_unit.py's main loop.

    ``kind`` is 'actor' (tell the supervisor ``message``; the reply with the
    same request_id resolves it) or 'stop' (the main loop begins the stop and
    resolves it at once)."""

    def __init__(self, message, kind: str = "actor"):
        self.message, self.kind = message, kind
        self.created = time.time()
        self.reply = None
        self.error = ""
        self.done = threading.Event()

    def resolve(self, reply=None, error: str = "") -> None:
        self.reply, self.error = reply, error
        self.done.set()


def reply_ok(result: dict | None = None) -> dict:
    return {"ok": True, "result": result or {}, "error": ""}


def reply_error(error: str, code: str = "bad_request") -> dict:
    return {"ok": False, "result": {}, "error": error, "code": code}


class ControlHandler:
    """Turns a request into an answer. Runs in the control server's threads;
    never touches the actor system: supervisor commands go through ``queue``."""

    def __init__(self, pandir: str | os.PathLike, config: dict, reply_timeout: float = DEFAULT_REPLY_TIMEOUT):
        self.pandir = Path(pandir)
        self.config = config
        self.reply_timeout = reply_timeout
        self.queue: queue.Queue[Pending] = queue.Queue()
        self.config_lock = threading.Lock()
        self.closed = False
        self._fields = None          # (mtime, fields)

    # -- the entry point -----------------------------------------------------

    def handle_line(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            return reply_error(f"not JSON: {e}")
        return self.handle(request)

    def handle(self, request) -> dict:
        try:
            name, args = check_request(request)
            method = getattr(self, "do_" + name.replace("-", "_"))
            return reply_ok(method(**args))
        except ControlError as e:
            return reply_error(str(e), e.code)
        except Exception as e:  # noqa: BLE001 - a bug must not kill the control thread
            import traceback
            traceback.print_exc()
            return reply_error(f"internal error: {type(e).__name__}: {e}", "internal")

    # -- through the supervisor -----------------------------------------------

    def submit(self, message, kind: str = "actor") -> object:
        """Queue ``message`` for the main loop and wait for the supervisor's reply."""
        if self.closed:
            raise ControlError("the unit is stopping", "unavailable")
        item = Pending(message, kind)
        self.queue.put(item)
        if not item.done.wait(self.reply_timeout):
            item.error = "timeout"
            raise ControlError(f"the supervisor did not answer {type(message).__name__} within "
                               f"{self.reply_timeout:g} s", "timeout")
        if item.error:
            raise ControlError(item.error, "unavailable")
        return item.reply

    def _command(self, message) -> dict:
        reply = self.submit(message)
        name = type(reply).__name__
        if name == "ControlReply":
            if not reply.ok:
                raise ControlError(reply.error or f"{type(message).__name__} refused", "refused")
            return dict(reply.result)
        if name == "CommandFailed":
            raise ControlError(f"{reply.source}: {reply.command} failed: {reply.error}", "refused")
        raise ControlError(f"unexpected reply {name} to {type(message).__name__}", "internal")

    def do_status(self) -> dict:
        from messages import GetUnitStatus
        reply = self.submit(GetUnitStatus())
        if type(reply).__name__ != "UnitStatus":
            raise ControlError(f"unexpected reply {type(reply).__name__} to GetUnitStatus", "internal")
        return dict(reply.status)

    def do_park(self, reason: str = "operator") -> dict:
        from messages import ParkUnit
        return self._command(ParkUnit(reason=reason))

    def do_unpark(self) -> dict:
        from messages import UnparkUnit
        return self._command(UnparkUnit())

    def do_pause(self) -> dict:
        from messages import PauseUnit
        return self._command(PauseUnit())

    def do_resume(self) -> dict:
        from messages import ResumeUnit
        return self._command(ResumeUnit())

    def do_stop(self, reason: str = "operator request") -> dict:
        from messages import StopUnit
        return self.submit(StopUnit(reason=reason), kind="stop") or {"stopping": True}

    def do_observe(self, field: str) -> dict:
        from messages import ObserveField
        names = [f["name"] for f in self.fields()["fields"]]
        if names and field not in names:
            folded = {n.casefold(): n for n in names}
            if field.casefold() in folded:
                field = folded[field.casefold()]
            else:
                raise ControlError(f"observe: no field named {field!r} in "
                                   f"{Path(self.config['scheduler']['fields_file']).name} "
                                   f"(fields: {', '.join(names)})")
        return self._command(ObserveField(name=field))

    def do_picture(self, exptime: float, camera: str | None = None) -> dict:
        from messages import TakePicture
        cameras = [c["name"] for c in self.config.get("cameras", [])]
        if camera is not None and cameras and camera not in cameras:
            raise ControlError(f"picture: no camera named {camera!r} (cameras: {', '.join(cameras)})")
        return self._command(TakePicture(exptime=exptime, camera=camera))

    def do_fault(self, target: str, kind: str, params: dict | None = None) -> dict:
        from messages import InjectFault
        return self._command(InjectFault(target=target, kind=kind, params=params or {}))

    # -- answered here ---------------------------------------------------------

    def do_config_get(self, key: str) -> dict:
        with self.config_lock:
            value = config_value(self.config, key)
            value = json.loads(json.dumps(value, default=str))
        return {"key": key, "value": value, "live": live_key_problem(key) is None}

    def do_config_set(self, key: str, value) -> dict:
        from messages import SetConfigValue
        parsed = parse_scalar(key, value)
        with self.config_lock:
            value, _ = validate_change(self.config, key, parsed)
            previous = (self.config.get(key.split(".")[0]) or {}).get(key.split(".", 1)[1])
        result = self._command(SetConfigValue(key=key, value=value))
        with self.config_lock:
            self.config[key.split(".")[0]] = {**self.config[key.split(".")[0]], key.split(".", 1)[1]: value}
            save_override(overrides_path(self.pandir), key, value)
        return {**result, "key": key, "value": value, "previous": previous,
                "persisted": str(overrides_path(self.pandir))}

    def _db(self):
        import sqlite3
        db = self.pandir / "db" / "unit.sqlite"
        if not db.exists():
            raise ControlError(f"no database yet at {db}", "unavailable")
        con = sqlite3.connect(db.as_uri() + "?mode=ro", uri=True, timeout=5)
        con.row_factory = sqlite3.Row
        return con

    def do_why(self) -> dict:
        import sqlite3
        try:
            con = self._db()
        except ControlError:
            return {"decision": None}
        try:
            row = con.execute("SELECT id, time, winner, reason, data FROM decisions ORDER BY rowid DESC LIMIT 1"
                              ).fetchone()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):        # the archive has not created its tables yet
                return {"decision": None}
            raise ControlError(f"cannot read the decisions table: {e}", "unavailable") from None
        finally:
            con.close()
        if row is None:
            return {"decision": None}
        data = json.loads(row["data"] or "{}")
        return {"decision": {"id": row["id"], "time": row["time"], "winner": row["winner"], "reason": row["reason"],
                             "candidates": data.get("candidates", []),
                             **{k: v for k, v in data.items() if k not in ("candidates", "time", "winner",
                                                                           "reason", "time_unix")}}}

    def do_events(self, since: int | None = None, limit: int = EVENTS_DEFAULT_LIMIT) -> dict:
        import sqlite3
        try:
            con = self._db()
        except ControlError:
            return {"events": [], "last_id": since or 0}
        cols = "id, time, time_unix, wall_unix, kind, source, message, data"
        try:
            if since is None:
                rows = con.execute(f"SELECT {cols} FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()[::-1]
            else:
                rows = con.execute(f"SELECT {cols} FROM events WHERE id > ? ORDER BY id LIMIT ?",
                                   (since, limit)).fetchall()
            last = con.execute("SELECT MAX(id) FROM events").fetchone()[0] or 0
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return {"events": [], "last_id": since or 0}
            raise ControlError(f"cannot read the events table: {e}", "unavailable") from None
        finally:
            con.close()
        events = [{**dict(r), "data": json.loads(r["data"] or "{}")} for r in rows]
        return {"events": events, "last_id": events[-1]["id"] if events else (since if since is not None else last)}

    def fields(self) -> dict:
        path = self.config["scheduler"]["fields_file"]
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            mtime = None
        if self._fields is None or self._fields[0] != mtime:
            from observatory.scheduler import FieldsError, load_fields
            try:
                fields = [{"name": o.name, "ra_deg": round(o.ra_deg, 5), "dec_deg": round(o.dec_deg, 5),
                           "priority": o.priority} for o in load_fields(path)]
            except FieldsError as e:
                if self._fields is None:
                    raise ControlError(f"fields file: {e}", "unavailable") from None
                fields = self._fields[1]
            self._fields = (mtime, fields)
        loc = self.config["location"]
        return {"fields": self._fields[1], "fields_file": path,
                "site": {"name": loc["name"], "latitude": loc["latitude"], "longitude": loc["longitude"],
                         "elevation": loc["elevation"], "min_altitude": loc["min_altitude"]}}

    def do_fields(self) -> dict:
        return self.fields()

    def close(self) -> None:
        """Refuse new commands and fail the ones still queued."""
        self.closed = True
        while True:
            try:
                self.queue.get_nowait().resolve(error="the unit is stopping")
            except queue.Empty:
                break


class ControlServer:
    """Listens on the control socket (mode 0600) in a thread, one thread per
    connection; each line read is answered by the handler."""

    MAX_CONNECTIONS = 32
    IDLE_TIMEOUT = 600.0

    def __init__(self, path: str | os.PathLike, handler: ControlHandler):
        self.path = Path(path)
        self.handler = handler
        self.stopping = threading.Event()
        self.connections = threading.BoundedSemaphore(self.MAX_CONNECTIONS)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The mode of the socket file comes from the socket's inode: 0600 from
        # the start, with no window in which others could connect.
        os.fchmod(self.sock.fileno(), 0o600)
        if self.path.exists() or self.path.is_symlink():
            # Our caller holds the PANDIR lock: a socket left here is a dead unit's.
            self.path.unlink()
        address, fd = unix_address(self.path)
        try:
            self.sock.bind(address)
        finally:
            if fd is not None:
                os.close(fd)
        os.chmod(self.path, 0o600)
        self.inode = os.stat(self.path).st_ino
        self.sock.listen(16)
        self.sock.settimeout(0.25)
        self.thread = threading.Thread(target=self._accept_loop, name="control-accept", daemon=True)

    def start(self) -> "ControlServer":
        self.thread.start()
        threading.Thread(target=self._warm_up, name="control-warm-up", daemon=True).start()
        return self

    def _warm_up(self) -> None:
        """Read the fields file now, not at the first completion or observe command."""
        try:
            self.handler.fields()
        except Exception:  # noqa: BLE001 - reported when asked for
            pass

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.stopping.is_set():
                    return
                time.sleep(0.05)
                continue
            if not self.connections.acquire(blocking=False):
                try:
                    conn.sendall((json.dumps(reply_error("too many control connections", "unavailable"))
                                  + "\n").encode())
                finally:
                    conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="control-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self.IDLE_TIMEOUT)
            reader = conn.makefile("rb")
            while not self.stopping.is_set():
                line = reader.readline(MAX_LINE + 1)
                if not line:
                    return
                if len(line) > MAX_LINE and not line.endswith(b"\n"):
                    conn.sendall((json.dumps(reply_error(f"request longer than {MAX_LINE} bytes")) + "\n").encode())
                    return
                if not line.strip():
                    continue
                reply = self.handler.handle_line(line)
                conn.sendall((json.dumps(reply, default=str) + "\n").encode())
        except OSError:
            pass
        finally:
            self.connections.release()
            conn.close()

    def close(self) -> None:
        self.stopping.set()
        self.handler.close()
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            if os.stat(self.path).st_ino == self.inode:
                self.path.unlink()
        except OSError:
            pass
        self.thread.join(2)

"""The console's command line: python -m console [--pandir DIR] [--json] [--timeout S] [COMMAND [ARGS ...]]

Without a command: an interactive shell. Exit status: 0 done, 1 no unit
running or the unit refused or failed the command, 2 a bad command line.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from observatory.control import COMMANDS, Connection, ControlError, check_request, parse_words, socket_path

USAGE = """usage: python -m console [--pandir DIR] [--json] [--timeout S] [COMMAND [ARGS ...]]

Talks to the unit running under PANDIR (default: $PANDIR, else ~/panoptes).
Without a command: an interactive shell with history and tab completion.

options:
  --pandir DIR   the unit's data directory
  --json         print the unit's JSON answer instead of text (for scripts)
  --timeout S    seconds to wait for an answer (default 10)
  -f, --follow   with events: keep printing new events (Ctrl-C ends)
  -h, --help     this text

commands:
"""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class NoUnit(Exception):
    """No unit answers on the control socket; the message says why."""


def default_pandir() -> Path:
    return Path(os.environ.get("PANDIR") or Path.home() / "panoptes").expanduser()


def usage_text() -> str:
    lines = []
    for name, cmd in COMMANDS.items():
        word = cmd.usage or name
        lines.append(f"  {word:<42} {cmd.help}")
    return USAGE + "\n".join(lines) + "\n"


def open_connection(pandir: Path, timeout: float) -> Connection:
    path = socket_path(pandir)
    try:
        return Connection(path, timeout)
    except FileNotFoundError:
        if not Path(pandir).is_dir():
            raise NoUnit(f"no unit running under PANDIR: {pandir} (no such directory)") from None
        raise NoUnit(f"no unit running under PANDIR: {pandir} (no control socket {path})") from None
    except ConnectionRefusedError:
        raise NoUnit(f"no unit running under PANDIR: {pandir} (nothing listens on {path}: "
                     "the unit has stopped)") from None
    except PermissionError:
        raise NoUnit(f"cannot connect to {path}: permission denied (the control socket belongs to the unit's "
                     "user: run the console as that user, e.g. sudo -u panoptes panoptes-console)") from None
    except TimeoutError:
        raise NoUnit(f"the unit under {pandir} did not accept a connection within {timeout:g} s") from None
    except OSError as e:
        raise NoUnit(f"cannot connect to {path}: {e.strerror or e}") from None


def send(conn: Connection, request: dict, timeout: float) -> dict:
    try:
        return conn.request(request["command"], request.get("args") or {})
    except TimeoutError:
        raise NoUnit(f"the unit did not answer within {timeout:g} s") from None
    except (ConnectionError, OSError) as e:
        raise NoUnit(f"lost the connection to the unit ({e})") from None
    except ValueError as e:
        raise NoUnit(f"the unit sent something that is not JSON: {e}") from None


def parse_argv(argv: list[str]) -> tuple[dict, list[str]]:
    opts = {"pandir": None, "json": False, "timeout": 10.0, "follow": False, "help": False}
    words: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            words.extend(argv[i + 1:])
            break
        if a in ("-h", "--help") and not words:
            opts["help"] = True
        elif a == "--json":
            opts["json"] = True
        elif a in ("-f", "--follow"):
            opts["follow"] = True
        elif a in ("--pandir", "--timeout") or a.startswith(("--pandir=", "--timeout=")):
            name, eq, value = a[2:].partition("=")
            if not eq:
                i += 1
                if i >= len(argv):
                    raise ControlError(f"--{name} needs a value")
                value = argv[i]
            if name == "timeout":
                try:
                    opts["timeout"] = float(value)
                except ValueError:
                    raise ControlError(f"--timeout must be a number of seconds, got {value!r}") from None
                if not opts["timeout"] > 0:
                    raise ControlError("--timeout must be greater than 0")
            else:
                opts["pandir"] = value
        elif a.startswith("-") and not words and a not in ("-",):
            raise ControlError(f"unknown option {a} (see --help)")
        else:
            words.append(a)
        i += 1
    return opts, words


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str), flush=True)


def run_command(conn: Connection, words: list[str], opts: dict, out=None) -> int:
    """One command from console words; prints the answer; returns the exit status."""
    from console.render import render_reply
    out = out or sys.stdout
    try:
        request = parse_words(words)
        check_request(request)
    except ControlError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    reply = send(conn, request, opts["timeout"])
    if not reply.get("ok"):
        if opts["json"]:
            print_json(reply)
        print(f"error: {reply.get('error') or 'the unit refused'}", file=sys.stderr, flush=True)
        return EXIT_USAGE if reply.get("code") == "bad_request" else EXIT_FAILED
    if opts["json"]:
        print_json(reply.get("result", {}))
    else:
        print(render_reply(request["command"], reply.get("result", {})), file=out, flush=True)
    return EXIT_OK


def follow_events(conn: Connection, words: list[str], opts: dict, interval: float = 1.0) -> int:
    """events --follow: the last events, then every new one as it is recorded."""
    from console.render import render_event
    try:
        request = parse_words(words)
        _, args = check_request(request)
    except ControlError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    args.setdefault("limit", 20)
    try:
        while True:
            reply = send(conn, {"command": "events", "args": args}, opts["timeout"])
            if not reply.get("ok"):
                print(f"error: {reply.get('error')}", file=sys.stderr, flush=True)
                return EXIT_FAILED
            result = reply["result"]
            for e in result.get("events", []):
                print(json.dumps(e, default=str) if opts["json"] else render_event(e), flush=True)
            args = {"since": result.get("last_id", args.get("since", 0)), "limit": 500}
            if len(result.get("events", [])) < 500:
                time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK
    except NoUnit as e:
        print(f"{e}", file=sys.stderr, flush=True)
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        opts, words = parse_argv(argv)
    except ControlError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if opts["help"] or (words and words[0] == "help"):
        sys.stdout.write(usage_text())
        return EXIT_OK
    if opts["follow"] and (not words or words[0] != "events"):
        print("error: --follow goes with the events command", file=sys.stderr)
        return EXIT_USAGE
    pandir = Path(opts["pandir"]).expanduser() if opts["pandir"] else default_pandir()
    if words:
        # Refuse a malformed command before looking for the unit.
        try:
            check_request(parse_words(words))
        except ControlError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
    try:
        conn = open_connection(pandir, opts["timeout"])
    except NoUnit as e:
        print(str(e), file=sys.stderr)
        return EXIT_FAILED
    try:
        if not words:
            from console.shell import Shell
            return Shell(pandir, conn, opts).run()
        if opts["follow"]:
            return follow_events(conn, words, opts)
        return run_command(conn, words, opts)
    except NoUnit as e:
        print(str(e), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    finally:
        conn.close()

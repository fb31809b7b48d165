"""The console's interactive shell: the same commands as the command line,
with readline history (~/.panoptes_console_history) and tab completion of
commands, field names, configuration keys and camera names."""
from __future__ import annotations

import cmd
import os
import shlex
import sys
from pathlib import Path

from console.cli import EXIT_OK, NoUnit, open_connection, run_command, follow_events
from observatory.control import COMMANDS, LIVE_SECTIONS, ControlError, command_words

HISTORY = "~/.panoptes_console_history"
HISTORY_LENGTH = 2000


class Shell(cmd.Cmd):
    intro = "PANOPTES console: type help for the commands, quit (or Ctrl-D) to leave."
    prompt = "panoptes> "

    def __init__(self, pandir: Path, conn, opts: dict, stdin=None, stdout=None):
        super().__init__(stdin=stdin, stdout=stdout)
        if stdin is not None:
            self.use_rawinput = False
        self.pandir, self.conn, self.opts = pandir, conn, dict(opts)
        self._cache: dict[str, list[str]] = {}
        self.interactive = sys.stdin.isatty() and stdin is None
        if not self.interactive:
            self.intro, self.prompt = None, ""
        self.status = EXIT_OK

    # -- the loop ---------------------------------------------------------

    def run(self) -> int:
        history = Path(os.path.expanduser(HISTORY))
        readline = None
        if self.interactive:
            try:
                import readline
                readline.set_history_length(HISTORY_LENGTH)
                if history.exists():
                    readline.read_history_file(history)
            except (ImportError, OSError):
                readline = None
        try:
            while True:
                try:
                    self.cmdloop()
                    break
                except KeyboardInterrupt:
                    self.stdout.write("^C\n")
                    self.intro = None
        finally:
            if readline is not None:
                try:
                    readline.write_history_file(history)
                except OSError:
                    pass
        return self.status

    def emptyline(self):
        return False

    def default(self, line: str):
        try:
            words = shlex.split(line)
        except ValueError as e:
            self.stdout.write(f"error: {e}\n")
            return False
        opts = dict(self.opts)
        if "--json" in words:
            words.remove("--json")
            opts["json"] = True
        follow = False
        for flag in ("-f", "--follow"):
            if flag in words:
                words.remove(flag)
                follow = True
        if not words:
            return False
        for attempt in (1, 2):
            try:
                if follow and words[0] == "events":
                    follow_events(self.conn, words, opts)
                else:
                    self.status = run_command(self.conn, words, opts, out=self.stdout)
                return False
            except NoUnit as e:
                if attempt == 2:
                    self.stdout.write(f"{e}\n")
                    self.status = 1
                    return False
                try:                                   # the unit may have restarted: once more
                    self.conn.close()
                    self.conn = open_connection(self.pandir, self.opts["timeout"])
                except NoUnit as e2:
                    self.stdout.write(f"{e2}\n")
                    self.status = 1
                    return False
        return False

    def do_quit(self, arg):
        """quit: leave the console (the unit goes on)."""
        return True

    do_exit = do_quit

    def do_EOF(self, arg):
        if self.interactive:
            self.stdout.write("\n")
        return True

    def do_help(self, arg):
        lines = []
        for name, c in COMMANDS.items():
            lines.append(f"  {c.usage or name:<42} {c.help}")
        lines.append(f"  {'quit':<42} leave the console (the unit goes on)")
        lines.append("  Add --json to any command for the unit's JSON answer; events --follow tails the journal.")
        self.stdout.write("\n".join(lines) + "\n")

    # -- completion ----------------------------------------------------------

    def completenames(self, text, *ignored):
        words = sorted({w.split()[0] for w in command_words()} | {"help", "quit"})
        return [w + " " for w in words if w.startswith(text)]

    def completedefault(self, text, line, begidx, endidx):
        return []

    def complete(self, text, state):
        # cmd.Cmd only asks complete_<command> for commands it has do_ methods
        # for; ours go through default(), so route the completion here.
        if state == 0:
            import readline
            line = readline.get_line_buffer()
            begidx, endidx = readline.get_begidx(), readline.get_endidx()
            self.completion_matches = self.complete_line(text, line, begidx, endidx)
        try:
            return self.completion_matches[state]
        except IndexError:
            return None

    def complete_line(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        """Candidates for ``text``, the word being typed at line[begidx:endidx]."""
        before = line[:begidx]
        words = before.split()
        if not words:
            return self.completenames(text)
        command = words[0]
        if command == "observe":
            # Field names have spaces: complete the whole rest of the line.
            prefix = line[len(line) - len(line.lstrip()):endidx].split(None, 1)
            typed = prefix[1] if len(prefix) > 1 else ""
            return _rest_of(self.field_names(), typed, text)
        if command == "config":
            if len(words) == 1:
                return [w + " " for w in ("get", "set") if w.startswith(text)]
            if len(words) == 2:
                keys = self.config_keys(live_only=words[1] == "set")
                return [k + " " for k in keys if k.startswith(text)]
            return []
        if command == "picture":
            if words[-1] == "--camera":
                return [c + " " for c in self.camera_names() if c.startswith(text)]
            return [o + " " for o in ("--exptime", "--camera") if o.startswith(text)]
        if command == "events":
            return [o + " " for o in ("--since", "--limit", "--follow") if o.startswith(text)]
        if command in ("park", "stop"):
            return ["--reason "] if "--reason".startswith(text) else []
        if command == "fault" and len(words) == 1:
            return [a + " " for a in self.actor_names() if a.startswith(text)]
        return []

    # -- what completion needs from the unit (asked once) ----------------------

    def _ask(self, command: str, args: dict | None = None):
        try:
            reply = self.conn.request(command, args or {})
        except (OSError, ValueError, ControlError):
            return None
        return reply.get("result") if reply.get("ok") else None

    def field_names(self) -> list[str]:
        if "fields" not in self._cache:
            result = self._ask("fields") or {}
            self._cache["fields"] = [f["name"] for f in result.get("fields", [])]
        return self._cache["fields"]

    def config_keys(self, live_only: bool) -> list[str]:
        key = "live-keys" if live_only else "keys"
        if key not in self._cache:
            keys = []
            sections = LIVE_SECTIONS if live_only else ("name", "location", "actor_system", "mount", "cameras",
                                                        "weather", *LIVE_SECTIONS)
            for section in sections:
                result = self._ask("config-get", {"key": section}) or {}
                value = result.get("value")
                if isinstance(value, dict):
                    keys += [f"{section}.{k}" for k in value
                             if not (live_only and f"{section}.{k}" == "scheduler.fields_file")]
                elif result:
                    keys.append(section)
            self._cache[key] = keys
        return self._cache[key]

    def camera_names(self) -> list[str]:
        if "cameras" not in self._cache:
            result = self._ask("config-get", {"key": "cameras"}) or {}
            self._cache["cameras"] = [c.get("name") for c in result.get("value") or [] if isinstance(c, dict)]
        return self._cache["cameras"]

    def actor_names(self) -> list[str]:
        if "actors" not in self._cache:
            result = self._ask("status") or {}
            self._cache["actors"] = [a["name"] for a in result.get("actors", [])]
        return self._cache["actors"]


def _rest_of(candidates: list[str], typed: str, text: str) -> list[str]:
    """Readline replaces only ``text`` (the last word); a candidate with spaces
    must be cut so that what is already typed before ``text`` stays."""
    offset = len(typed) - len(text)
    matches = [c for c in candidates if c.startswith(typed)]
    if not matches:
        matches = [c for c in candidates if c.casefold().startswith(typed.casefold())]
    return [c[offset:] for c in matches]

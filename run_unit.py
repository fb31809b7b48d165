#!/usr/bin/env python3
"""Run a PANOPTES-style unit: start the actor system, start the supervisor,
print a line per state change, and stop cleanly.

    python run_unit.py --nights 1 --speed 600 --start 2026-11-24T03:00:00

Exit status: 0 after a clean stop (nights done, SIGTERM, Ctrl-C or the
console's ``stop``), 1 when the unit failed, 2 for bad configuration or
command-line input.

While it runs it serves the control socket ``$PANDIR/run/control.sock`` (see
observatory/control.py; ``python -m console`` talks to it) and, under systemd
(``Type=notify``), reports READY=1, WATCHDOG=1 and STOPPING=1 on
$NOTIFY_SOCKET.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "conf" / "unit.yaml"

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class UsageError(Exception):
    pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Run a robotic PANOPTES-style unit (simulated or real).")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="unit configuration (default: conf/unit.yaml)")
    p.add_argument("--start", default=None,
                   help="simulated start time, ISO UTC (default: now)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="simulated seconds per wall second (default: 1)")
    p.add_argument("--nights", type=int, default=None,
                   help="stop after this many nights (default: run until SIGTERM)")
    p.add_argument("--pandir", default=None,
                   help="data directory (default: $PANDIR, else ~/panoptes)")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the summaries")
    args = p.parse_args(argv)
    if args.speed <= 0:
        p.error(f"--speed must be > 0, got {args.speed}")
    if args.nights is not None and args.nights < 1:
        p.error(f"--nights must be >= 1, got {args.nights}")
    return args


def validate_inputs(config: dict, start_unix: float) -> None:
    """Everything a night depends on is checked before any process starts."""
    from observatory.scheduler import load_fields
    from observatory.statetable import load_state_table
    from simulators.weather import WeatherTimeline

    load_state_table(config["states"])
    load_fields(config["scheduler"]["fields_file"])
    weather = config["weather"]
    simulated = weather["driver"] == "simulator" or weather["settings"].get("port") == "simulator"
    if simulated and weather["timeline"]:
        WeatherTimeline.load(config["weather"]["timeline"], start_unix)


class SystemdNotifier:
    """sd_notify(3) without a library: datagrams to $NOTIFY_SOCKET.

    Does nothing when not started by systemd. The variables are removed from
    the environment so that no child process (actors, simulators) inherits
    them. ``watchdog_interval`` is half of $WATCHDOG_USEC (None without a
    watchdog)."""

    def __init__(self, environ=os.environ):
        address = environ.pop("NOTIFY_SOCKET", None)
        usec = environ.pop("WATCHDOG_USEC", None)
        pid = environ.pop("WATCHDOG_PID", None)
        self.address = None
        if address and (address.startswith("/") or address.startswith("@")):
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = None
        try:
            if usec and int(usec) > 0 and (not pid or int(pid) == os.getpid()):
                self.watchdog_interval = int(usec) / 2e6
        except ValueError:
            pass
        self.ready_sent = False

    def notify(self, *lines: str) -> None:
        if not self.address:
            return
        from observatory.control import unix_address
        fd = None
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                address = self.address
                if not address.startswith("\0"):
                    address, fd = unix_address(Path(address))
                s.sendto("\n".join(lines).encode(), address)
        except OSError:
            pass                         # systemd went away: nothing to tell
        finally:
            if fd is not None:
                os.close(fd)


def port_in_use(port: int, address: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((address, port)) == 0


class Unit:
    """The service process: owns the actor system and watches the supervisor."""

    WATCHDOG_PROBE = "watchdog"
    # The control threads cannot wake asys.listen(): a request waits for the
    # current listen slice to end. Slices are LISTEN_IDLE_S long, and
    # LISTEN_BUSY_S for CONTROL_BURST_S after a control request, so that a
    # client asking one thing after another is not held LISTEN_IDLE_S each time.
    LISTEN_IDLE_S, LISTEN_BUSY_S, CONTROL_BURST_S = 0.05, 0.005, 2.0

    def __init__(self, args, config: dict, pandir: Path, overrides: dict | None = None):
        self.args, self.config, self.pandir = args, config, pandir
        self.overrides = overrides or {}
        self.stop_reason = None
        self.exit_code = EXIT_OK
        self.asys = None
        self.wire = []          # wire-level simulators standing in for hardware
        self.notifier = SystemdNotifier()
        self.control = None     # observatory.control.ControlHandler: requests from the control socket
        self.control_server = None
        self.pending = {}       # request id -> Pending (or WATCHDOG_PROBE) awaiting the supervisor
        self.probe_sent = 0.0   # wall time of the last watchdog probe
        self.control_busy_until = 0.0   # wall time: until then, listen in short slices (see _watch)

    def _on_signal(self, signum, frame):
        self.stop_reason = signal.Signals(signum).name

    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(text, flush=True)

    def run(self) -> int:
        from thespian.actors import ActorSystem

        from messages import (GetUnitStatus, NightComplete, StartUnit, StopUnit, UnitFailed, UnitStarted,
                              UnitStateChanged, UnitStopped)
        from observatory import logs
        from observatory.clock import SimClock, iso, parse_iso
        from observatory.processes import pid_alive, prepare_actor_host

        port = self.config["actor_system"]["admin_port"]
        bind = self.config["actor_system"].get("bind_address", "127.0.0.1")
        if bind != "127.0.0.1":
            from observatory.hosts import check_bind_address
            try:
                check_bind_address(bind, self.config["actor_system"].get("allow_network", False), probe=True,
                                   flag="actor_system.allow_network: true")
            except ValueError as e:
                raise UsageError(f"actor_system.bind_address: {e}") from None
        if port_in_use(port, bind):
            raise UsageError(f"admin port {port} (actor_system.admin_port) is already in use: "
                             "is another unit running? Refusing to attach to it.")
        for sub in ("images", "db", "logs", "run", "reports"):
            (self.pandir / sub).mkdir(parents=True, exist_ok=True)
        lock = open(self.pandir / "run" / "unit.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise UsageError(f"{self.pandir}: another run_unit.py (pid {holder}) holds "
                             f"{self.pandir / 'run' / 'unit.lock'}") from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()

        start = parse_iso(self.args.start) if self.args.start else None
        clock = SimClock.starting_now(start, self.args.speed)
        os.environ["THESPLOG_FILE"] = str(self.pandir / "logs" / "thespian-internal.log")
        from simulators.launch import start_wire_simulators
        try:
            self.config, self.wire = start_wire_simulators(self.config, clock, self.pandir)
        except RuntimeError as e:
            lock.close()
            raise UsageError(str(e)) from None
        prepare_actor_host(bind)
        capabilities = {"Admin Port": port}
        if self.config.get("hosts"):
            # Member hosts join this system's convention: shorter convention timers
            # (a member that left is announced in seconds, not 22 minutes) and a
            # bounded wait for a host that stopped answering (docs/multihost.md).
            from observatory.hosts import leader_capabilities, tune_convention, tune_transmit_timeout
            tune_convention(5, 3)
            tune_transmit_timeout(30)
            capabilities = leader_capabilities(port, self.config["name"])

        from actors.supervisor import Supervisor
        self.asys = ActorSystem("multiprocTCPBase", capabilities,
                                logDefs=logs.thespian_log_defs(self.pandir))
        # Only now: Thespian's admin is forked above and keeps whatever handlers
        # it inherits, and a flag-setting handler would make it ignore SIGTERM.
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            sup = self.asys.createActor(Supervisor, globalName="unit")
            self.asys.tell(sup, StartUnit(config=self.config, clock=clock.to_dict(), pandir=str(self.pandir),
                                          nights=self.args.nights, owner_pid=os.getpid()))
            self.say(f"unit '{self.config['name']}' at {self.config['location']['name']}: simulated start "
                     f"{iso(clock.start_unix)}, speed x{clock.speed:g}, data in {self.pandir}")
            if self.overrides:
                self.say("configuration overrides (run/config-overrides.yaml): "
                         + ", ".join(f"{k}={v}" for k, v in self.overrides.items()))
            self._start_control()
            stopped = self._watch(sup, clock, GetUnitStatus, StopUnit, UnitStarted, UnitStateChanged,
                                  NightComplete, UnitFailed, UnitStopped, pid_alive)
            if not stopped:
                print("the supervisor did not confirm the stop; shutting the actor system down",
                      file=sys.stderr, flush=True)
                self.exit_code = EXIT_FAILED
        finally:
            if self.control_server is not None:
                self.control_server.close()
            self._shutdown(pid_alive)
            lock.close()
        return self.exit_code

    def _start_control(self) -> None:
        """The control socket, served in threads that only queue work for _watch."""
        from observatory.control import ControlHandler, ControlServer, socket_path
        self.control = ControlHandler(self.pandir, self.config)
        try:
            self.control_server = ControlServer(socket_path(self.pandir), self.control).start()
        except OSError as e:
            raise UsageError(f"cannot serve the control socket {socket_path(self.pandir)}: "
                             f"{e.strerror or e}") from None

    def _pump_control(self, sup, GetUnitStatus) -> None:
        """Hand queued control requests to the supervisor (or begin the stop),
        forget requests whose asker gave up, and probe the supervisor for the
        systemd watchdog."""
        import queue
        while self.control is not None:
            try:
                item = self.control.queue.get_nowait()
            except queue.Empty:
                break
            if item.kind == "stop":
                if self.stop_reason:
                    item.resolve({"stopping": True, "already": True, "reason": self.stop_reason})
                else:
                    self.stop_reason = f"stop command: {item.message.reason}"
                    item.resolve({"stopping": True, "already": False, "reason": self.stop_reason})
                continue
            self.pending[item.message.request_id] = item
            self.control_busy_until = time.time() + self.CONTROL_BURST_S
            self.asys.tell(sup, item.message)
        now = time.time()
        for rid, item in list(self.pending.items()):
            created = self.probe_sent if item == self.WATCHDOG_PROBE else item.created
            if now - created > 60:
                del self.pending[rid]
        interval = self.notifier.watchdog_interval
        if interval and now - self.probe_sent >= interval:
            for rid in [r for r, i in self.pending.items() if i == self.WATCHDOG_PROBE]:
                del self.pending[rid]
            probe = GetUnitStatus()
            self.pending[probe.request_id] = self.WATCHDOG_PROBE
            self.probe_sent = now
            self.asys.tell(sup, probe)

    def _control_reply(self, msg) -> bool:
        """A reply to a control request or a watchdog probe: hand it over."""
        rid = getattr(msg, "request_id", None)
        item = self.pending.pop(rid, None) if rid is not None else None
        if item is None:
            return False
        if item == self.WATCHDOG_PROBE:
            self.notifier.notify("WATCHDOG=1")
        else:
            item.resolve(msg)
        return True

    def _watch(self, sup, clock, GetUnitStatus, StopUnit, UnitStarted, UnitStateChanged, NightComplete,
               UnitFailed, UnitStopped, pid_alive) -> bool:
        from messages import CommandFailed, ControlReply, UnitStatus
        from observatory.clock import iso
        stop_sent = None
        sup_pid = None
        last_check = time.time()
        while True:
            if self.stop_reason and stop_sent is None:
                self.say(f"stopping ({self.stop_reason}): parking and closing")
                stop_sent = time.time()
                self.notifier.notify("STOPPING=1", f"STATUS=stopping ({self.stop_reason}): parking and closing")
                self.asys.tell(sup, StopUnit(reason=self.stop_reason))
            if stop_sent and time.time() - stop_sent > 120:
                return False
            self._pump_control(sup, GetUnitStatus)
            # Short, so that a control request queued meanwhile is sent soon.
            busy = time.time() < self.control_busy_until
            msg = self.asys.listen(self.LISTEN_BUSY_S if busy else self.LISTEN_IDLE_S)
            if isinstance(msg, (ControlReply, UnitStatus, CommandFailed)) and self._control_reply(msg):
                pass
            elif isinstance(msg, UnitStarted):
                sup_pid = msg.pid
            elif isinstance(msg, UnitStateChanged):
                target = f" [{msg.target}]" if msg.target else ""
                note = f": {msg.note}" if msg.note else ""
                self.say(f"{iso(msg.time_unix)[:19]}  {msg.previous:>12} -> {msg.state:<12}{target}{note}")
                status = f"STATUS={msg.state}{target}"
                if msg.previous == "starting" and not self.notifier.ready_sent:
                    self.notifier.ready_sent = True
                    self.notifier.notify("READY=1", status)
                else:
                    self.notifier.notify(status)
            elif isinstance(msg, NightComplete):
                print(json.dumps(msg.summary, indent=2), flush=True)
                self.say(f"night {msg.night}: summary in {msg.summary_path}")
                if self.args.nights is not None and msg.nights_done >= self.args.nights and not self.stop_reason:
                    self.stop_reason = f"{msg.nights_done} night(s) done"
            elif isinstance(msg, UnitFailed):
                print(f"unit failed: {msg.error}", file=sys.stderr, flush=True)
                self.exit_code = EXIT_FAILED
                if not self.stop_reason:
                    self.stop_reason = "unit failed"
            elif isinstance(msg, UnitStopped):
                self.say(f"unit stopped ({'parked' if msg.parked else 'NOT parked'}): {msg.note}")
                if not msg.parked:
                    self.exit_code = EXIT_FAILED
                return True
            # The supervisor has no parent to restart it: watch it ourselves.
            if sup_pid and time.time() - last_check > 1.0:
                last_check = time.time()
                if not pid_alive(sup_pid):
                    print(f"the supervisor (pid {sup_pid}) died; exiting so that the service manager "
                          "restarts the unit", file=sys.stderr, flush=True)
                    self.exit_code = EXIT_FAILED
                    return False

    def _shutdown(self, pid_alive) -> None:
        pids = []
        try:
            status = json.loads((self.pandir / "run" / "status.json").read_text())
            # Actors on member hosts have pids of another computer: not ours to kill.
            pids = [a["pid"] for a in status.get("actors", []) if a.get("pid") and not a.get("host")]
            pids.append(status.get("supervisor", {}).get("pid"))
        except (OSError, ValueError):
            pass
        if self.asys is not None:
            self.asys.shutdown()
        for sim in self.wire:
            sim.stop()
        deadline = time.time() + 5
        for pid in filter(None, pids):
            while pid_alive(pid) and time.time() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE))
    from observatory.config import ConfigError, load_config
    from observatory.scheduler import FieldsError
    from observatory.statetable import StateTableError
    from simulators.weather import TimelineError

    try:
        from observatory.clock import parse_iso
        start_unix = time.time()
        if args.start:
            try:
                start_unix = parse_iso(args.start)
            except ValueError:
                raise UsageError(f"--start: not an ISO UTC time: {args.start!r} "
                                 "(expected e.g. 2026-11-24T03:00:00)") from None
        config = load_config(args.config)
        pandir = Path(args.pandir or os.environ.get("PANDIR") or Path.home() / "panoptes").expanduser().resolve()
        # What `config set` changed on an earlier run, validated like the file itself.
        from observatory.control import apply_overrides, overrides_path
        config, overrides = apply_overrides(config, overrides_path(pandir))
        validate_inputs(config, start_unix)
        return Unit(args, config, pandir, overrides).run()
    except (ConfigError, StateTableError, FieldsError, TimelineError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

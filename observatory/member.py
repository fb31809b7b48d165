"""The member agent: runs on a computer that holds some of the unit's devices
(cameras, say) and lends it to the unit's actor system.

    python -m observatory.member --leader 10.8.0.1:19500 --host camhost1 \\
        --bind 10.8.0.2 --allow-network

It starts a Thespian actor system (multiprocTCPBase) on ``--admin-port`` whose
capabilities join the convention led by ``--leader`` as ``panoptes-host:
<--host>``; the unit's supervisor then creates the devices configured with
``host: camhost1`` here (observatory/hosts.py). The agent stays in the
foreground, prints one JSON line per event (started, joined, left, restarting,
stopped), and on SIGTERM or Ctrl-C shuts its actor system (and so every device
actor it holds) down and exits 0.

When it loses the leader (the leader shut down, or missed its registrations:
about 3 x ``--reregister`` seconds), it restarts its actor system, so that
device actors whose supervisor is gone release their hardware, and joins again
as a new member (``--keep-orphans`` disables this).

It binds to loopback unless ``--bind`` names another address, which it
refuses without ``--allow-network`` (and always refuses 0.0.0.0): every
Thespian port runs whatever pickle reaches it, so a network address must be a
VPN address (docs/multihost.md).

Exit status: 0 after a clean stop, 1 when the actor system failed, 2 for bad
input (flags, configuration, refused bind address, port in use).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from thespian.actors import Actor, ActorExitRequest, ActorSystemConventionUpdate

ROOT = Path(__file__).resolve().parent.parent
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_PRELOAD = "actors.camera"


class UsageError(Exception):
    pass


def parse_args(argv=None):
    from observatory.hosts import DEFAULT_MEMBER_PORT
    p = argparse.ArgumentParser(prog="python -m observatory.member",
                                description="Join a unit's actor system as a member host holding some of its devices.")
    p.add_argument("--host", required=True,
                   help="this host's name, as the devices' `host` key names it (capability panoptes-host)")
    p.add_argument("--leader", default=None,
                   help="the unit's admin, ADDRESS:PORT (default: from --config: actor_system.bind_address and "
                        "admin_port)")
    p.add_argument("--admin-port", type=int, default=None,
                   help=f"this member's admin port (default: from --config hosts.<host>.admin_port, "
                        f"else {DEFAULT_MEMBER_PORT})")
    p.add_argument("--bind", default=None,
                   help="address to listen on (default: from --config hosts.<host>.address, else 127.0.0.1)")
    p.add_argument("--allow-network", action="store_true",
                   help="allow a --bind address other than loopback (a VPN address; see docs/multihost.md)")
    p.add_argument("--config", default=None, help="the unit's configuration file, to read the addresses from")
    p.add_argument("--unit", default=None, help="the unit's name (an informative capability)")
    p.add_argument("--capability", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra capability of this actor system (repeatable)")
    p.add_argument("--reregister", type=int, default=5, metavar="SECONDS",
                   help="Thespian convention re-registration period (default 5; Thespian's own: 442). "
                        "Use the same on the leader.")
    p.add_argument("--miss-max", type=int, default=3,
                   help="missed registrations before Thespian declares the leader lost (default 3)")
    p.add_argument("--preload", default=DEFAULT_PRELOAD,
                   help=f"modules imported before the actor system forks (comma separated; default {DEFAULT_PRELOAD})")
    p.add_argument("--pandir", default=None, help="data directory for logs (default: $PANDIR, else ~/panoptes)")
    p.add_argument("--keep-orphans", action="store_true",
                   help="do not restart the actor system when the leader is lost")
    args = p.parse_args(argv)
    if args.reregister < 1:
        p.error("--reregister must be >= 1")
    if args.miss_max < 1:
        p.error("--miss-max must be >= 1")
    return args


def resolve(args) -> dict:
    """Flags, completed from the unit's configuration when one is given."""
    import re

    from observatory.hosts import (DEFAULT_MEMBER_PORT, HOST_NAME_PATTERN, check_bind_address, member_capabilities,
                                   parse_hostport)
    if not re.match(HOST_NAME_PATTERN, args.host):
        raise UsageError(f"--host {args.host!r}: letters, digits, '_', '.', '-' only")
    leader, admin_port, bind, allow, unit = args.leader, args.admin_port, args.bind, args.allow_network, args.unit
    if args.config:
        from observatory.config import ConfigError, load_config
        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            raise UsageError(str(e)) from None
        entry = (cfg.get("hosts") or {}).get(args.host)
        if entry is None:
            raise UsageError(f"{args.config}: hosts: no host named {args.host!r} "
                             f"(hosts: {sorted(cfg.get('hosts') or {})})")
        asys_cfg = cfg["actor_system"]
        leader = leader or f"{asys_cfg.get('bind_address', '127.0.0.1')}:{asys_cfg['admin_port']}"
        admin_port = admin_port or entry.get("admin_port")
        bind = bind or entry.get("address")
        allow = allow or bool(asys_cfg.get("allow_network"))
        unit = unit or cfg.get("name")
    if not leader:
        raise UsageError("--leader ADDRESS:PORT is needed (or --config)")
    try:
        lhost, lport = parse_hostport(leader, None)
    except ValueError as e:
        raise UsageError(f"--leader: {e}") from None
    admin_port = int(admin_port or DEFAULT_MEMBER_PORT)
    if not 1024 <= admin_port <= 65535:
        raise UsageError(f"--admin-port {admin_port}: must be 1024..65535")
    bind = bind or "127.0.0.1"
    try:
        bind = check_bind_address(bind, allow, flag="--allow-network")
    except ValueError as e:
        raise UsageError(str(e)) from None
    if (lhost, lport) == (bind, admin_port):
        raise UsageError(f"--admin-port {admin_port} is the leader's own port on {bind}")
    extra = {}
    for item in args.capability:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--capability {item!r}: expected KEY=VALUE")
        extra[key] = value
    caps = member_capabilities(args.host, f"{lhost}:{lport}", admin_port, unit=unit, extra=extra)
    return {"host": args.host, "leader": f"{lhost}:{lport}", "admin_port": admin_port, "bind": bind,
            "capabilities": caps}


def port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((address, port)) != 0


class MemberWatch(Actor):
    """Lives in the member's actor system, created by the agent: reports its own
    pid and its parent's (the member's admin), and forwards the member's view of
    the convention (``ActorSystemConventionUpdate`` about the leader) to the agent
    as ``("convention", wall_time, added, admin_address_text, capabilities)``."""

    def receiveMessage(self, msg, sender):
        if isinstance(msg, dict) and msg.get("watch"):
            self.agent = sender
            self.notifyOnSystemRegistrationChanges(True)
            self.send(sender, {"watching": True, "pid": os.getpid(), "admin_pid": os.getppid()})
        elif isinstance(msg, ActorSystemConventionUpdate):
            agent = getattr(self, "agent", None)
            if agent is not None:
                self.send(agent, ("convention", time.time(), bool(msg.remoteAdded), str(msg.remoteAdminAddress),
                                  dict(msg.remoteCapabilities or {})))
        elif isinstance(msg, ActorExitRequest):
            try:
                self.notifyOnSystemRegistrationChanges(False)
            except Exception:  # noqa: BLE001 - exiting anyway
                pass


def say(event: str, **data) -> None:
    print(json.dumps({"event": event, "time": round(time.time(), 3), **data}), flush=True)


class Agent:
    def __init__(self, args, plan: dict, pandir: Path):
        self.args, self.plan, self.pandir = args, plan, pandir
        self.stop_reason = None
        self.asys = None

    def _on_signal(self, signum, frame):
        self.stop_reason = signal.Signals(signum).name

    def start_system(self):
        from thespian.actors import ActorSystem

        from observatory import logs
        # By its importable name (this file may be running as __main__), so that
        # the admin's children find the class.
        from observatory.member import MemberWatch
        t0 = time.time()
        self.asys = ActorSystem("multiprocTCPBase", self.plan["capabilities"],
                                logDefs=logs.thespian_log_defs(self.pandir))
        watch = self.asys.createActor(MemberWatch)
        reply = self.asys.ask(watch, {"watch": True}, 10)
        if not isinstance(reply, dict):
            raise RuntimeError(f"the member's actor system did not answer ({reply!r})")
        self.started_at = t0
        say("started", host=self.plan["host"], leader=self.plan["leader"], bind=self.plan["bind"],
            admin_port=self.plan["admin_port"], pid=os.getpid(), admin_pid=reply["admin_pid"],
            start_s=round(time.time() - t0, 3))

    def stop_system(self):
        if self.asys is not None:
            asys, self.asys = self.asys, None
            asys.shutdown()

    def run(self) -> int:
        self.start_system()
        # Only now: Thespian's admin is forked above and keeps the handlers it inherits.
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        joined = False
        try:
            while not self.stop_reason:
                msg = self.asys.listen(0.5)
                if not (isinstance(msg, tuple) and msg and msg[0] == "convention"):
                    continue
                _, when, added, address, caps = msg
                if added:
                    joined = True
                    say("joined", leader=address, after_s=round(when - self.started_at, 3))
                    continue
                say("left", leader=address, reason="the leader deregistered or missed its registrations")
                if joined and not self.args.keep_orphans and not self.stop_reason:
                    # Our device actors' supervisor is gone: drop them (releasing their
                    # hardware) and join again as a new member.
                    say("restarting", reason="leader lost: dropping this host's device actors")
                    self.stop_system()
                    self._wait_port_free()
                    self.start_system()
                    joined = False
        finally:
            say("stopping", reason=self.stop_reason or "error")
            self.stop_system()
        say("stopped", reason=self.stop_reason)
        return EXIT_OK

    def _wait_port_free(self, timeout: float = 15.0):
        deadline = time.time() + timeout
        while time.time() < deadline and not port_free(self.plan["bind"], self.plan["admin_port"]):
            time.sleep(0.1)


def main(argv=None) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    args = parse_args(argv)
    try:
        plan = resolve(args)
        if not port_free(plan["bind"], plan["admin_port"]):
            raise UsageError(f"admin port {plan['admin_port']} on {plan['bind']} is already in use: is another "
                             "member agent (or actor system) running? Refusing to attach to it.")
        from observatory.hosts import tune_convention
        from observatory.processes import prepare_actor_host
        pandir = Path(args.pandir or os.environ.get("PANDIR") or Path.home() / "panoptes").expanduser().resolve()
        (pandir / "logs").mkdir(parents=True, exist_ok=True)
        os.environ["THESPLOG_FILE"] = str(pandir / "logs" / f"thespian-internal-{plan['host']}.log")
        tune_convention(args.reregister, args.miss_max)
        for name in filter(None, (m.strip() for m in args.preload.split(","))):
            try:
                importlib.import_module(name)
            except ImportError as e:
                raise UsageError(f"--preload {name}: {e}") from None
        prepare_actor_host(plan["bind"])
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    agent = Agent(args, plan, pandir)
    try:
        return agent.run()
    except Exception as e:  # noqa: BLE001 - report and fail
        print(f"member agent failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        agent.stop_system()
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

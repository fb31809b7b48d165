"""The gateway's command line:

    python -m gateway [--pandir DIR] [--bind ADDR] [--port N] [--allow-remote]
                      [--token-file FILE] [--quiet]

The token comes from --token-file, else the environment variable
PANOPTES_TOKEN; without one the gateway does not start. It binds to
127.0.0.1 unless told otherwise, and refuses an address other than loopback
unless --allow-remote is given (then put TLS in front of it: docs/service.md).
Exit status: 0 after SIGTERM or Ctrl-C, 2 for bad input.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import stat
import sys
from pathlib import Path

DEFAULT_PORT = 8420
MIN_TOKEN_LENGTH = 16
MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class UsageError(Exception):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def read_token(token_file: str | None, environ=os.environ) -> str:
    if token_file:
        path = Path(token_file).expanduser()
        try:
            token = path.read_text().strip()
            mode = path.stat().st_mode
        except OSError as e:
            raise UsageError(f"--token-file {path}: {e.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            print(f"gateway: warning: {path} can be read by other users (chmod 600 {path})", file=sys.stderr)
        source = str(path)
    else:
        token = (environ.get("PANOPTES_TOKEN") or "").strip()
        source = "PANOPTES_TOKEN"
        if not token:
            raise UsageError(f"no token: give --token-file FILE or set PANOPTES_TOKEN (make one with: {MAKE_TOKEN})")
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise UsageError(f"{source}: the token must be at least {MIN_TOKEN_LENGTH} characters without spaces "
                         f"(make one with: {MAKE_TOKEN})")
    return token


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m gateway",
                                description="HTTP gateway and web dashboard for a running unit.")
    p.add_argument("--pandir", default=None, help="the unit's data directory (default: $PANDIR, else ~/panoptes)")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0: any free)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow an address other than loopback (put TLS in front: docs/service.md)")
    p.add_argument("--token-file", default=None, help="file holding the API token (default: $PANOPTES_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the unit (default: 10)")
    p.add_argument("--quiet", action="store_true", help="no request log")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be 0..65535, got {args.port}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if not is_loopback(args.bind) and not args.allow_remote:
            raise UsageError(f"--bind {args.bind}: not a loopback address; the gateway controls a telescope, so "
                             "it listens on 127.0.0.1 unless --allow-remote is given (and then put TLS in front "
                             "of it, see docs/service.md)")
        token = read_token(args.token_file)
        pandir = Path(args.pandir or os.environ.get("PANDIR") or Path.home() / "panoptes").expanduser().resolve()
        from gateway.server import make_server
        try:
            server = make_server(pandir, token, args.bind, args.port, quiet=args.quiet, timeout=args.timeout)
        except OSError as e:
            raise UsageError(f"cannot listen on {args.bind}:{args.port}: {e.strerror or e}") from None
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    if not is_loopback(host):
        print(f"gateway: warning: listening on {host}, beyond this computer: use TLS (docs/service.md)",
              file=sys.stderr, flush=True)
    print(f"gateway: serving http://{shown}:{port}/ for the unit under {pandir} "
          f"(dashboard: http://{shown}:{port}/#token=<token>)", flush=True)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0

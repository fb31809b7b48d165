"""A protocol server for wire-level simulators: serves ``handle(command)``
over TCP (and optionally a pseudo-terminal), and can misbehave on demand like
failing hardware: no reply, garbage, half a reply, slow replies, or vanish.

A subclass defines ``split(buf) -> (commands, rest)`` (how commands are framed
on its wire) and ``handle(command) -> bytes | None`` (the reply).
"""
from __future__ import annotations

import logging
import os
import random
import select
import socket
import threading
import math
import tty

log = logging.getLogger(__name__)

MODES = ("normal", "silent", "garbage", "half", "slow", "vanish")
_JUNK = "?!%&*@XYZqwz~^"


class WireServer:
    """Serves ``handle(command) -> bytes | None`` over TCP and optionally a pty.

    Subclasses define ``split(buf) -> (commands, rest)`` and ``handle``.
    """

    thread_prefix = "wire-sim"

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = int(port)
        self._io_lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._pty: tuple[int, int, str] | None = None
        self._mode = "normal"
        self._delay_s = 2.0
        self._times: int | None = None
        self._rng = random.Random(1)

    # -- lifecycle -------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def start(self):
        self._stop.clear()
        self._listen()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._close_sockets()
        with self._io_lock:
            if self._pty is not None:
                master, slave, _ = self._pty
                self._pty = None
                for fd in (master, slave):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            threads, self._threads = self._threads, []
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout=1.0)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _listen(self) -> None:
        with self._io_lock:
            if self._listener is not None:
                return
            srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((self.host, self.port))
            srv.listen(4)
            srv.settimeout(0.1)
            self.port = srv.getsockname()[1]
            self._listener = srv
            self._spawn(self._accept_loop, srv)
        log.info("%s listening on %s", self.thread_prefix, self.url)

    def _close_sockets(self) -> None:
        with self._io_lock:
            srv, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        for s in [srv, *conns]:
            if s is None:
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True,
                             name=f"{self.thread_prefix}-{target.__name__}")
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    def _accept_loop(self, srv: socket.socket) -> None:
        while not self._stop.is_set() and self._listener is srv:
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(0.1)
            with self._io_lock:
                if self._listener is not srv:
                    conn.close()
                    return
                self._conns.add(conn)
                self._spawn(self._serve_socket, conn)

    def _serve_socket(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while not self._stop.is_set() and conn in self._conns:
                try:
                    data = conn.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf = self._feed(buf + data, conn.sendall, lambda: conn in self._conns)
        except OSError:
            return
        finally:
            with self._io_lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def open_pty(self) -> str:
        """Serve on a new pseudo-terminal; returns the device path to open."""
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: a bare serial line
        path = os.ttyname(slave)
        with self._io_lock:
            self._pty = (master, slave, path)
            self._spawn(self._serve_pty, master)
        log.info("%s on pty %s", self.thread_prefix, path)
        return path

    def _serve_pty(self, master: int) -> None:
        buf = b""

        def write(data: bytes) -> None:
            view = memoryview(data)
            while view:
                n = os.write(master, view)
                view = view[n:]

        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([master], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(master, 4096)
            except (OSError, ValueError):
                return
            if not data:
                return
            try:
                buf = self._feed(buf + data, write, lambda: self._mode != "vanish")
            except OSError:
                return

    # -- misbehaviour ------------------------------------------------------------

    def set_misbehaviour(self, mode: str = "normal", delay_s: float | None = None,
                         times: int | None = None) -> None:
        """Switch how replies go wrong (see the module docstring)."""
        if mode not in MODES:
            raise ValueError(f"unknown misbehaviour {mode!r} (known: {', '.join(MODES)})")
        if delay_s is not None:
            if not (math.isfinite(delay_s) and delay_s >= 0):
                raise ValueError(f"delay_s must be >= 0, got {delay_s}")
            self._delay_s = float(delay_s)
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        with self._io_lock:
            self._mode = mode
            self._times = None if times is None else int(times)
        if mode == "vanish":
            self._close_sockets()
        elif not self._stop.is_set() and self._listener is None and self.port != 0:
            self._listen()

    def behave(self) -> None:
        self.set_misbehaviour("normal")

    def apply_control_file(self, path: str) -> None:
        """Fault injection from another process: ``path`` holds JSON such as
        ``{"mode": "garbage", "times": 3}`` (keys as for set_misbehaviour); it is
        applied each time the file changes. A bad file is logged and ignored."""
        import json
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            return
        if mtime == getattr(self, "_control_mtime", None):
            return
        self._control_mtime = mtime
        try:
            with open(path) as f:
                spec = json.load(f)
            self.set_misbehaviour(str(spec.get("mode", "normal")), delay_s=spec.get("delay_s"),
                                  times=spec.get("times"))
            log.warning("misbehaviour from %s: %s", path, spec)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring control file %s: %s", path, exc)

    @property
    def misbehaviour(self) -> str:
        return self._mode

    def _take_mode(self) -> str:
        with self._io_lock:
            mode = self._mode
            if mode in ("silent", "garbage", "half", "slow") and self._times is not None:
                self._times -= 1
                if self._times <= 0:
                    self._mode, self._times = "normal", None
            return mode

    def _garble(self, reply: bytes) -> bytes:
        return "".join(self._rng.choice(_JUNK) for _ in range(len(reply))).encode("ascii")

    def _feed(self, buf: bytes, write, alive) -> bytes:
        commands, buf = self.split(buf)
        for command in commands:
            reply = self.handle(command)
            if reply is None:
                continue
            mode = self._take_mode()
            if mode in ("silent", "vanish"):
                continue
            if mode == "garbage":
                reply = self._garble(reply)
            elif mode == "half":
                reply = reply[: len(reply) // 2]
            elif mode == "slow":
                if self._stop.wait(self._delay_s):
                    return b""
            if reply and alive():
                write(reply)
        return buf

    # -- for subclasses ------------------------------------------------------------

    def split(self, buf: bytes) -> tuple[list[str], bytes]:
        raise NotImplementedError

    def handle(self, command: str) -> bytes | None:
        raise NotImplementedError

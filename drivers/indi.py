"""A small INDI client (XML over TCP, protocol 1.7) with no compiled parts.

``IndiClient`` opens one TCP connection to an ``indiserver``, asks for every
property (``getProperties``) and keeps a property store up to date from a
reader thread. The byte stream is parsed incrementally with
``xml.etree.ElementTree.XMLPullParser`` inside a synthetic ``<indi>`` root
(the INDI stream is a sequence of top-level elements, not one document).

What the store holds, per (device, property name): the kind (Number, Switch,
Text, Light, BLOB), the state (Idle/Ok/Busy/Alert), perm, the element values
(float for numbers, "On"/"Off" for switches, str for texts and lights,
``IndiBlob`` for BLOBs), the driver's timestamp and the local monotonic time
of the last update, plus a generation counter bumped on every update (a
caller waiting for "a new value" compares generations, not values).

Waits (``wait_for``) use a condition variable and end in ``IndiError`` on
timeout, on a lost link or when the predicate raises. A lost link is reported
with the server address and the reason; ``ensure_connected()`` (called by the
device drivers before every command) reconnects once, with a fresh store.

The device drivers (mount, camera, focuser, filter wheel, dome, weather)
live in ``drivers/indi_devices.py`` and are re-exported here.
"""
from __future__ import annotations

import base64
import logging
import math
import socket
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable
from xml.sax.saxutils import escape, quoteattr

log = logging.getLogger(__name__)

STATES = ("Idle", "Ok", "Busy", "Alert")
KINDS = ("Number", "Switch", "Text", "Light", "BLOB")


class IndiError(RuntimeError):
    """The INDI server or device failed, refused a command, or did not answer
    in time (the message says which device, property and what happened)."""


@dataclass
class IndiBlob:
    format: str
    size: int
    data: bytes


@dataclass
class IndiProperty:
    device: str
    name: str
    kind: str
    state: str = "Idle"
    perm: str = "ro"
    rule: str | None = None
    label: str | None = None
    values: dict = field(default_factory=dict)
    timestamp: float | None = None       # driver's timestamp (Unix s), if it sent one
    updated: float = 0.0                 # local time.monotonic() of the last update
    generation: int = 0
    sets: int = 0                        # set*Vector updates since the last def*Vector
    message: str | None = None

    def on(self) -> list[str]:
        """Names of the switches that are On."""
        return [k for k, v in self.values.items() if v == "On"]


def parse_number(text: str) -> float:
    """An INDI number: decimal, or sexagesimal 'd:m:s' / 'd m s' / 'd:m'."""
    text = (text or "").strip()
    if not text:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        pass
    parts = text.replace(":", " ").replace(";", " ").split()
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"not an INDI number: {text!r}") from None
    sign = -1.0 if parts[0].startswith("-") else 1.0
    value = abs(nums[0])
    for i, n in enumerate(nums[1:3], start=1):
        value += n / (60.0 ** i)
    return sign * value


def parse_timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "On" if value else "Off"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "0"
    return str(value)


class IndiClient:
    """One connection to an indiserver, with a live property store."""

    def __init__(self, host: str = "localhost", port: int = 7624, timeout_s: float = 5.0):
        self.host = str(host)
        self.port = int(port)
        self.timeout_s = float(timeout_s)
        if not self.timeout_s > 0:
            raise ValueError(f"INDI timeout_s must be > 0, got {timeout_s}")
        self._cond = threading.Condition()
        self._props: dict[tuple[str, str], IndiProperty] = {}
        self._messages: list[tuple[float, str, str]] = []   # (monotonic, device, text)
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._error: str | None = None       # why the link dropped (None while it is up)
        self._closing = False
        self._session = 0                    # bumped at each (re)connect
        self._blob_devices: dict[str, str] = {}

    # -- connection ---------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._sock is not None and self._error is None

    def connect(self) -> None:
        """Open the connection (idempotent) and ask for all properties."""
        with self._cond:
            if self._sock is not None and self._error is None:
                return
        self._drop_socket()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as exc:
            raise IndiError(f"cannot connect to indiserver at {self.address}: {exc}") from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._cond:
            self._sock = sock
            self._error = None
            self._closing = False
            self._props.clear()
            self._session += 1
            session = self._session
            self._cond.notify_all()
        self._reader = threading.Thread(target=self._read_loop, args=(sock, session),
                                        name=f"indi-reader-{self.address}", daemon=True)
        self._reader.start()
        self._send("<getProperties version='1.7'/>")
        for device, mode in list(self._blob_devices.items()):
            self.enable_blob(device, mode)

    def ensure_connected(self) -> bool:
        """Reconnect if the link dropped; True when a new connection was made.
        Raises IndiError (naming the earlier failure) if that is impossible."""
        with self._cond:
            if self._sock is not None and self._error is None:
                return False
            earlier = self._error
        try:
            self.connect()
        except IndiError as exc:
            raise IndiError(f"{exc} (the link had failed: {earlier})" if earlier else str(exc)) from None
        if earlier is not None and earlier != "connection closed by the client":
            log.warning("reconnected to indiserver at %s after: %s", self.address, earlier)
        return True

    def close(self) -> None:
        with self._cond:
            self._closing = True
        self._drop_socket()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(2.0)
        self._reader = None

    def _drop_socket(self) -> None:
        with self._cond:
            sock, self._sock = self._sock, None
            if self._error is None and sock is not None:
                self._error = "connection closed by the client"
            self._cond.notify_all()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    # -- reading ------------------------------------------------------------

    def _read_loop(self, sock: socket.socket, session: int) -> None:
        parser = ET.XMLPullParser(events=("start", "end"))
        parser.feed(b"<indi>")
        depth = 0
        root = None
        reason = "the server closed the connection"
        try:
            while True:
                try:
                    data = sock.recv(262144)
                except OSError as exc:
                    reason = f"read failed: {exc}"
                    break
                if not data:
                    break
                try:
                    parser.feed(data)
                    for event, elem in parser.read_events():
                        if event == "start":
                            if root is None:
                                root = elem
                            depth += 1
                        else:
                            depth -= 1
                            if depth == 1:
                                try:
                                    self._dispatch(elem)
                                except Exception:    # a malformed element must not kill the link
                                    log.exception("bad INDI element <%s> from %s", elem.tag, self.address)
                                root.remove(elem)
                except ET.ParseError as exc:
                    reason = f"malformed XML from the server: {exc}"
                    break
        finally:
            with self._cond:
                if self._session == session:
                    if self._error is None:
                        self._error = ("connection closed by the client" if self._closing
                                       else f"lost connection to indiserver at {self.address}: {reason}")
                    self._cond.notify_all()
            if not self._closing:
                log.warning("indi link %s: %s", self.address, reason)

    def _dispatch(self, elem: ET.Element) -> None:
        tag = elem.tag
        device = elem.get("device", "")
        name = elem.get("name", "")
        now = time.monotonic()
        if tag == "message":
            if elem.get("message"):
                with self._cond:
                    self._messages.append((now, device, elem.get("message")))
                    del self._messages[:-200]
            return
        if tag == "delProperty":
            with self._cond:
                for key in [k for k in self._props if k[0] == device and (not name or k[1] == name)]:
                    del self._props[key]
                self._cond.notify_all()
            return
        if tag.startswith("def") and tag.endswith("Vector"):
            kind = tag[3:-6]
            values = {child.get("name"): self._value(kind, child) for child in elem}
            with self._cond:
                old = self._props.get((device, name))
                prop = IndiProperty(device, name, kind, state=elem.get("state", "Idle"),
                                    perm=elem.get("perm", "ro"), rule=elem.get("rule"),
                                    label=elem.get("label"), values=values,
                                    timestamp=parse_timestamp(elem.get("timestamp")), updated=now,
                                    generation=(old.generation + 1) if old else 1,
                                    message=elem.get("message"))
                self._props[(device, name)] = prop
                self._cond.notify_all()
            return
        if tag.startswith("set") and tag.endswith("Vector"):
            kind = tag[3:-6]
            with self._cond:
                prop = self._props.get((device, name))
                if prop is None:            # a set before its def: keep it anyway
                    prop = IndiProperty(device, name, kind)
                    self._props[(device, name)] = prop
                for child in elem:
                    prop.values[child.get("name")] = self._value(kind, child)
                if elem.get("state"):
                    prop.state = elem.get("state")
                prop.timestamp = parse_timestamp(elem.get("timestamp")) or prop.timestamp
                prop.message = elem.get("message")
                prop.updated = now
                prop.generation += 1
                prop.sets += 1
                self._cond.notify_all()
            if elem.get("message"):
                with self._cond:
                    self._messages.append((now, device, elem.get("message")))

    @staticmethod
    def _value(kind: str, child: ET.Element):
        text = (child.text or "").strip()
        if kind == "Number":
            return parse_number(text)
        if kind == "BLOB":
            if not text:
                return IndiBlob(child.get("format", ""), 0, b"")
            data = base64.b64decode("".join(text.split()))
            return IndiBlob(child.get("format", ""), int(float(child.get("size") or len(data))), data)
        return text

    # -- store access -------------------------------------------------------

    def get(self, device: str, name: str) -> IndiProperty | None:
        """A snapshot of a property (or None if the device has not defined it)."""
        with self._cond:
            prop = self._props.get((device, name))
            if prop is None:
                return None
            return IndiProperty(**{**prop.__dict__, "values": dict(prop.values)})

    def devices(self) -> list[str]:
        with self._cond:
            return sorted({d for d, _ in self._props})

    def properties(self, device: str) -> list[str]:
        with self._cond:
            return sorted(n for d, n in self._props if d == device)

    def messages(self, device: str | None = None, since: float = 0.0) -> list[str]:
        with self._cond:
            return [m for t, d, m in self._messages if t >= since and (device is None or d == device)]

    def link_error(self) -> str | None:
        with self._cond:
            return self._error

    def wait_for(self, device: str, name: str, predicate: Callable[[IndiProperty], bool] | None = None,
                 timeout: float | None = None, what: str | None = None) -> IndiProperty:
        """Block until (device, name) exists and ``predicate(prop)`` is true;
        returns a snapshot. IndiError on timeout or a lost link."""
        timeout = self.timeout_s if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._error is not None:
                    raise IndiError(f"{device}: waiting for {what or name}: {self._error}")
                prop = self._props.get((device, name))
                if prop is not None:
                    snap = IndiProperty(**{**prop.__dict__, "values": dict(prop.values)})
                    if predicate is None or predicate(snap):
                        return snap
                left = deadline - time.monotonic()
                if left <= 0:
                    if prop is None:
                        known = sorted({d for d, _ in self._props})
                        hint = (f"; the server knows devices {known}" if device not in known
                                else "; the device has not defined it")
                        raise IndiError(f"{device}: no property {name} from indiserver at {self.address} "
                                        f"within {timeout:g} s{hint}")
                    raise IndiError(f"{device}: timed out after {timeout:g} s waiting for {what or name} "
                                    f"(state {prop.state}, values {self._short(prop.values)})")
                self._cond.wait(min(left, 0.5))

    @staticmethod
    def _short(values: dict) -> str:
        return "{" + ", ".join(f"{k}: {v if not isinstance(v, IndiBlob) else '<blob>'}"
                               for k, v in list(values.items())[:6]) + "}"

    # -- sending ------------------------------------------------------------

    def _send(self, xml: str) -> None:
        with self._cond:
            sock, error = self._sock, self._error
        if sock is None or error is not None:
            raise IndiError(f"not connected to indiserver at {self.address}"
                            + (f": {error}" if error else ""))
        try:
            with self._send_lock:
                sock.sendall(xml.encode("utf-8"))
        except OSError as exc:
            with self._cond:
                if self._error is None:
                    self._error = f"lost connection to indiserver at {self.address}: send failed: {exc}"
                self._cond.notify_all()
            raise IndiError(self._error) from None

    def _new_vector(self, kind: str, device: str, name: str, values: dict) -> None:
        items = "".join(f"<one{kind} name={quoteattr(str(k))}>{escape(_fmt(v))}</one{kind}>"
                        for k, v in values.items())
        self._send(f"<new{kind}Vector device={quoteattr(device)} name={quoteattr(name)}>{items}"
                   f"</new{kind}Vector>")

    def send_number(self, device: str, name: str, values: dict) -> None:
        self._new_vector("Number", device, name, {k: float(v) for k, v in values.items()})

    def send_switch(self, device: str, name: str, values: dict) -> None:
        """values: element -> True/False or "On"/"Off" (for OneOfMany send the one On)."""
        self._new_vector("Switch", device, name,
                         {k: ("On" if v in (True, "On") else "Off") for k, v in values.items()})

    def send_text(self, device: str, name: str, values: dict) -> None:
        self._new_vector("Text", device, name, {k: str(v) for k, v in values.items()})

    def enable_blob(self, device: str, mode: str = "Also", name: str | None = None) -> None:
        if mode not in ("Never", "Also", "Only"):
            raise ValueError(f"enableBLOB mode must be Never, Also or Only, got {mode!r}")
        self._blob_devices[device] = mode
        attr = f" name={quoteattr(name)}" if name else ""
        self._send(f"<enableBLOB device={quoteattr(device)}{attr}>{mode}</enableBLOB>")

    # -- helpers used by the drivers -----------------------------------------

    def switch_and_wait(self, device: str, name: str, on: str, timeout: float | None = None,
                        settle: Callable[[IndiProperty], bool] | None = None) -> IndiProperty:
        """Turn switch ``on`` of a OneOfMany vector on; wait until it reads On
        with state Ok (or ``settle``); IndiError on Alert."""
        self.wait_for(device, name, timeout=timeout)
        start_gen = self.get(device, name).generation
        self.send_switch(device, name, {on: True})

        def done(p: IndiProperty) -> bool:
            if p.generation > start_gen and p.state == "Alert":
                raise IndiError(f"{device}: {name} {on} refused (Alert)"
                                + (f": {p.message}" if p.message else ""))
            if settle is not None:
                return settle(p)
            return p.values.get(on) == "On" and p.state in ("Ok", "Idle") and p.generation > start_gen

        return self._wait_raising(device, name, done, timeout, f"{name} {on}")

    def _wait_raising(self, device, name, predicate, timeout, what) -> IndiProperty:
        return self.wait_for(device, name, predicate, timeout=timeout, what=what)


_DEVICE_CLASSES = ("IndiDevice", "IndiMount", "IndiCamera", "IndiFocuser", "IndiFilterWheel",
                   "IndiDome", "IndiWeather")


def __getattr__(name):
    # The device drivers import this module, so they are loaded on first use.
    if name in _DEVICE_CLASSES:
        from drivers import indi_devices
        return getattr(indi_devices, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["IndiClient", "IndiError", "IndiProperty", "IndiBlob", *_DEVICE_CLASSES,
           "parse_number", "parse_timestamp"]

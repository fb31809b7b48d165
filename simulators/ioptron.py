"""An iOptron mount at the wire: the RS-232 command language v3.10 served over
TCP (and optionally a pseudo-terminal), backed by the mount model in
``simulators.mount.SimulatedMount``.

The real driver (``drivers/ioptron.py``) talks to this exactly as it talks to a
mount on a serial line, so the same driver code runs in simulation and on a
telescope. pyserial reaches the TCP side with ``socket://127.0.0.1:PORT``.

Run alone::

    python -m simulators.ioptron --port 0 [--pty] [--speed 60] [--start 2026-11-24T03:00:00]
                                 [--lat 19.5 --lon -155.6] [--misbehave slow --delay 3]

It prints the URL to connect to (first line; with ``--pty`` the device path on
the second line) and serves until Ctrl-C or SIGTERM.

Wire format (as the firmware does it): commands are ``:<text>#``. Queries reply
with text ending in ``#``; setting and motion commands reply a single ``1``
(accepted) or ``0`` (refused) with no terminator; ``:MountInfo#`` replies four
digits with no terminator; pulse-guide commands reply nothing. Where the model
refuses a command that the specification says always answers ``1`` (for
example ``:ST1#`` while parked), the simulator answers ``0``. Unknown commands
are answered with ``0``.

Misbehaviour (``set_misbehaviour`` or ``--misbehave``), to test a driver's
error handling:

``normal``   correct replies.
``silent``   commands are carried out but no reply is sent.
``garbage``  commands are carried out; the reply is replaced by junk of the
             same length (keeping a final ``#`` if there was one).
``half``     commands are carried out; only the first half of each reply is
             sent (nothing for one-character replies).
``slow``     the reply is sent after ``delay_s`` wall seconds.
``vanish``   every connection is closed and the TCP port stops listening (the
             pty stays open but silent). Back to ``normal`` listens again on
             the same port.

``times=N`` limits ``silent``/``garbage``/``half``/``slow`` to the next N
replies, then the simulator behaves again.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from observatory.clock import SimClock, parse_iso
from simulators.mount import MountError, SimulatedMount, alt_az
from simulators.wire import _JUNK, MODES, WireServer

log = logging.getLogger(__name__)

CAS_PER_DEG = 360000  # 0.01 arcsec per degree
J2000_UNIX = 946728000.0  # JD 2451545.0 (2000-01-01T12:00:00 UTC) in Unix seconds
# The GLS "system status" digit.
SYS_STOPPED, SYS_TRACKING, SYS_SLEWING, SYS_PARKED, SYS_HOME = 0, 1, 2, 6, 7


def _cas(deg: float) -> int:
    return int(round(deg * CAS_PER_DEG))


class IOptronSimulator(WireServer):
    """Serves the iOptron v3.10 protocol for one ``SimulatedMount``.

    ``handle(command)`` is the protocol alone (a string in, the exact reply
    bytes out, or None for no reply); ``start()`` serves it over TCP,
    ``open_pty()`` over a pseudo-terminal. All model access is serialised by
    one lock, so any number of connections may talk at once.
    """

    thread_prefix = "ioptron-sim"

    def __init__(self, mount: SimulatedMount, clock: SimClock, host: str = "127.0.0.1",
                 port: int = 0, model_code: str = "0040",
                 firmware: tuple[str, str, str, str] = ("210105", "210105", "210105", "210105")):
        if not (len(model_code) == 4 and model_code.isdigit()):
            raise ValueError(f"model_code must be four digits, got {model_code!r}")
        super().__init__(host, port)
        self.mount = mount
        self.clock = clock
        self.model_code = model_code
        self.firmware = firmware
        self._lock = threading.RLock()          # the model and protocol state
        # Protocol state the model does not hold.
        self._target_ra: float | None = None
        self._target_dec: float | None = None
        self._utc_offset_min = 0
        self._dst = 0
        self._tracking_rate = 0
        self._button_rate = 5
        self._guide_rate = (0.50, 0.50)
        self._meridian = "015"
        self.commands_seen: list[str] = []

    def _garble(self, reply: bytes) -> bytes:
        body = reply[:-1] if reply.endswith(b"#") else reply
        junk = "".join(self._rng.choice(_JUNK) for _ in range(max(1, len(body)))).encode()
        return junk + (b"#" if reply.endswith(b"#") else b"")

    def split(self, buf: bytes) -> tuple[list[str], bytes]:
        """Commands are ``:...#``; noise before a ':' is dropped, and a line that
        never ends is dropped after 256 bytes, as a UART buffer would."""
        commands = []
        while b"#" in buf:
            chunk, buf = buf.split(b"#", 1)
            start = chunk.rfind(b":")
            if start >= 0:
                commands.append(chunk[start:].decode("ascii", errors="replace") + "#")
        if len(buf) > 256:
            buf = b""
        return commands, buf

    # -- the protocol ----------------------------------------------------------

    def handle(self, command: str) -> bytes | None:
        """The reply the mount sends to one command (``:...#``), or None."""
        with self._lock:
            self.commands_seen.append(command)
            del self.commands_seen[:-200]
            if not (command.startswith(":") and command.endswith("#")):
                return b"0"
            body = command[1:-1]
            try:
                reply = self._dispatch(body)
            except MountError as exc:
                log.info("ioptron simulator: %s refused: %s", command, exc)
                reply = "0"
            except (ValueError, IndexError) as exc:
                log.info("ioptron simulator: bad command %s: %s", command, exc)
                reply = "0"
            return None if reply is None else reply.encode("ascii")

    def _dispatch(self, body: str) -> str | None:
        m = self.mount
        # Exact commands first.
        if body == "MountInfo":
            return self.model_code
        if body == "FW1":
            return f"{self.firmware[0]}{self.firmware[1]}#"
        if body == "FW2":
            return f"{self.firmware[2]}{self.firmware[3]}#"
        if body == "GLS":
            return self._gls()
        if body == "GEP":
            st = m.status()
            pier = {"east": "0", "west": "1"}.get(st["pier_side"], "2")
            return f"{_cas(st['dec_deg']):+09d}{_cas(st['ra_deg']) % 129600000:09d}{pier}1#"
        if body == "GAC":
            st = m.status()
            return f"{_cas(st['alt_deg']):+09d}{_cas(st['az_deg']) % 129600000:09d}#"
        if body == "GUT":
            ms = int(round((self.clock.now() - J2000_UNIX) * 1000.0))
            return f"{self._utc_offset_min:+04d}{self._dst}{ms:013d}#"
        if body == "GAL":
            return f"{int(round(m.settings['altitude_limit_deg'])):+03d}#"
        if body == "GPC":
            alt, az = alt_az(m.settings["park_ha_deg"], m.settings["park_dec_deg"], m.latitude_deg)
            return f"{max(0, _cas(alt)):08d}{_cas(az) % 129600000:09d}#"
        if body == "AG":
            return f"{int(round(self._guide_rate[0] * 100)):02d}{int(round(self._guide_rate[1] * 100)):02d}#"
        if body == "GSR":
            return "9#"
        if body == "GMT":
            return f"{self._meridian}#"
        if body == "GTR":
            return "10000#"
        if body == "QAP":
            return f"{1 if self._target_ok() else 0}#"
        if body in ("MS1", "MS2"):
            if self._target_ra is None or self._target_dec is None:
                return "0"
            m.slew_to(self._target_ra, self._target_dec)   # MountError (limit, parked) -> "0"
            return "1"
        if body == "Q":
            m.stop()
            return "1"
        if body in ("qR", "qD"):
            return "1"
        if body == "ST1":
            m.set_tracking(True)
            return "1"
        if body == "ST0":
            m.set_tracking(False)
            return "1"
        if body == "MP1":
            m.park()
            return "1"
        if body == "MP0":
            if m.status()["state"] != "parking":   # the model refuses; the firmware would say 1
                m.unpark()
            return "1"
        if body == "MH":
            m.home()
            return "1"
        if body in ("SDS0", "SDS1"):
            self._dst = int(body[-1])
            return "1"
        if body in ("SHE0", "SHE1", "SGF0", "SGF1", "SPR0", "SPR1", "SPP0", "SPP1", "RAS", "SZP"):
            return "1"
        if body in ("mn", "ms", "me", "mw"):
            return None  # continuous moves: not modelled, no reply
        # Commands with arguments.
        if body.startswith("RT") and len(body) == 3 and body[2] in "01234":
            self._tracking_rate = int(body[2])
            return "1"
        if body.startswith("SUT"):
            _digits(body[3:], 13)   # accepted; the shared clock is the time
            return "1"
        if body.startswith("SLO"):
            lon = _signed(body[3:], 8) / CAS_PER_DEG
            if not -180.0 <= lon <= 180.0:
                raise ValueError("longitude out of range")
            m.longitude_deg = lon
            return "1"
        if body.startswith("SLA"):
            lat = _signed(body[3:], 8) / CAS_PER_DEG
            if not -90.0 <= lat <= 90.0:
                raise ValueError("latitude out of range")
            m.latitude_deg = lat
            return "1"
        if body.startswith("SAL"):
            limit = _signed(body[3:], 2)
            if not -89 <= limit <= 89:
                raise ValueError("altitude limit out of range")
            m.settings["altitude_limit_deg"] = float(limit)
            return "1"
        if body.startswith("SG") and len(body) == 6 and body[2] in "+-":
            offset = _signed(body[2:], 3)
            if not -720 <= offset <= 780:
                raise ValueError("UTC offset out of range")
            self._utc_offset_min = offset
            return "1"
        if body.startswith("SRA"):
            self._target_ra = _digits(body[3:], 9) / CAS_PER_DEG % 360.0
            return "1"
        if body.startswith("Sd"):
            dec = _signed(body[2:], 8) / CAS_PER_DEG
            if not -90.0 <= dec <= 90.0:
                raise ValueError("declination out of range")
            self._target_dec = dec
            return "1"
        if body.startswith("MSR") and len(body) == 4 and body[3] in "789":
            return "1"
        if body.startswith("SR") and len(body) == 3 and body[2] in "123456789":
            self._button_rate = int(body[2])
            return "1"
        if body.startswith("SMT"):
            _digits(body[3:], 3)
            self._meridian = body[3:]
            return "1"
        if body.startswith("RG"):
            ra, dec = _digits(body[2:4], 2), _digits(body[4:6], 2)
            if len(body) != 6 or not (1 <= ra <= 90 and 10 <= dec <= 99):
                raise ValueError("guide rate out of range")
            self._guide_rate = (ra / 100.0, dec / 100.0)
            return "1"
        if body.startswith("RR"):
            _digits(body[2:], 5)
            return "1"
        if len(body) == 7 and body[0] in "ZM" and body[1] in "SQECnsew":
            self._pulse(body[1], _digits(body[2:], 5))
            return None  # pulse guiding replies nothing
        return "0"

    def _gls(self) -> str:
        m = self.mount
        st = m.status()
        state = st["state"]
        if state == "parked":
            code = SYS_PARKED
        elif state in ("slewing", "parking", "homing"):
            code = SYS_SLEWING
        elif state == "tracking":
            code = SYS_TRACKING
        else:
            home = (abs(((st["ha_deg"] - m.settings["home_ha_deg"]) + 180) % 360 - 180) < 1e-3
                    and abs(st["dec_deg"] - m.settings["home_dec_deg"]) < 1e-3)
            code = SYS_HOME if home else SYS_STOPPED
        lon = _cas(m.longitude_deg)
        lat = _cas(m.latitude_deg + 90.0)
        hemi = 1 if m.latitude_deg >= 0 else 0
        return f"{lon:+09d}{lat:08d}0{code}{self._tracking_rate}{self._button_rate}1{hemi}#"

    def _target_ok(self) -> bool:
        if self._target_ra is None or self._target_dec is None:
            return False
        try:
            self.mount.check_target(self._target_ra, self._target_dec)
            return True
        except MountError:
            return False

    def _pulse(self, direction: str, ms: int) -> None:
        # The model guides at 0.5 x sidereal; scale the pulse to the set rate.
        ra_scale = self._guide_rate[0] / 0.5
        dec_scale = self._guide_rate[1] / 0.5
        ra_ms = {"S": ms, "e": ms, "Q": -ms, "w": -ms}.get(direction, 0) * ra_scale
        dec_ms = {"E": ms, "n": ms, "C": -ms, "s": -ms}.get(direction, 0) * dec_scale
        try:
            self.mount.guide(ra_ms, dec_ms)
        except MountError as exc:   # not tracking: the firmware ignores the pulse
            log.info("ioptron simulator: pulse ignored: %s", exc)


def _digits(text: str, n: int) -> int:
    if len(text) != n or not text.isdigit():
        raise ValueError(f"expected {n} digits, got {text!r}")
    return int(text)


def _signed(text: str, n: int) -> int:
    if len(text) != n + 1 or text[0] not in "+-":
        raise ValueError(f"expected a sign and {n} digits, got {text!r}")
    value = _digits(text[1:], n)
    return -value if text[0] == "-" else value


# ---------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.ioptron",
                                description="iOptron RS-232 v3.10 mount simulator (TCP, optional pty)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default)")
    p.add_argument("--pty", action="store_true", help="also serve on a pseudo-terminal")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second")
    p.add_argument("--start", default=None, help="simulated start time, ISO UTC (default: now)")
    p.add_argument("--wall-origin", type=float, default=None,
                   help="wall time (Unix s) at which the clock reads --start, to share another process's clock")
    p.add_argument("--lat", type=float, default=19.54, help="site latitude, degrees north")
    p.add_argument("--lon", type=float, default=-155.58, help="site longitude, degrees east")
    p.add_argument("--model", default="0040", help="MountInfo code to report (default 0040, CEM40)")
    p.add_argument("--altitude-limit", type=float, default=None, help="initial altitude limit, degrees")
    p.add_argument("--slew-rate", type=float, default=None, help="slew rate per axis, degrees/s")
    p.add_argument("--state-file", default=None, help="keep the mount's state in this JSON file")
    p.add_argument("--misbehave", choices=MODES, default="normal", help="start misbehaving this way")
    p.add_argument("--delay", type=float, default=2.0, help="reply delay for --misbehave slow, wall seconds")
    p.add_argument("--times", type=int, default=None, help="misbehave for this many replies only")
    p.add_argument("--control", default=None,
                   help="JSON file read whenever it changes, to misbehave on demand (fault injection)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")

    start = parse_iso(args.start) if args.start else None
    if args.wall_origin is not None:
        clock = SimClock(start_unix=start if start is not None else args.wall_origin,
                         speed=args.speed, wall_origin=args.wall_origin)
    else:
        clock = SimClock.starting_now(start, speed=args.speed)
    settings = {}
    if args.altitude_limit is not None:
        settings["altitude_limit_deg"] = args.altitude_limit
    if args.slew_rate is not None:
        settings["slew_rate_deg_s"] = args.slew_rate
    mount = SimulatedMount(settings, clock, args.lat, args.lon, state_file=args.state_file)
    sim = IOptronSimulator(mount, clock, host=args.host, port=args.port, model_code=args.model)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    sim.start()
    print(sim.url, flush=True)
    if args.pty:
        print(sim.open_pty(), flush=True)
    if args.misbehave != "normal":
        sim.set_misbehaviour(args.misbehave, delay_s=args.delay, times=args.times)
    else:
        sim.set_misbehaviour("normal", delay_s=args.delay)
    try:
        while not done.wait(0.1):
            if args.control:
                sim.apply_control_file(args.control)
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

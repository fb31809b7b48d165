"""An AAG CloudWatcher at the wire: the station's RS-232 protocol served over
TCP (and optionally a pseudo-terminal), backed by a weather timeline
(``simulators.weather.WeatherTimeline``) sampled on the shared ``SimClock``.

The real driver (``drivers/cloudwatcher.py``) talks to this exactly as it
talks to a station on a serial line (pyserial reaches it with
``socket://127.0.0.1:PORT``), so the same driver code runs in simulation and
on a telescope.

Run alone::

    python -m simulators.cloudwatcher --port 0 [--timeline weather.yaml] [--speed 60]
                                      [--start 2026-11-24T03:00:00] [--wall-origin T]
                                      [--misbehave slow --delay 3] [--pty]

It prints the URL to connect to (first line; with ``--pty`` the device path on
the second line) and serves until Ctrl-C or SIGTERM.

Wire format (as the firmware does it): a command is one or more characters
ended by ``!`` (``S!``, ``P0100!``). Every answer is a run of 15-character
blocks: ``!`` + a two-character code (space padded) + a 12-character value
(right aligned), closed by the handshake block ``!\\x11`` + 12 spaces + ``0``.
A command the station does not know is answered by the handshake block alone.

==========  ==================================================================
``A!``      ``!N CloudWatcher``: the internal name
``B!``      ``!V `` + firmware version
``C!``      ``!6 `` zener, ``!4 `` LDR, ``!5 `` rain sensor temperature (0-1023)
``D!``      ``!E1`` .. ``!E4``: internal error counters
``E!``      ``!R `` + rain sensor frequency (dry about 2200-2700; wet below 1700)
``F!``      ``!X `` ``Switch Open`` or ``!Y `` ``Switch Close``; ``G!``/``H!`` set it
``K!``      ``!K `` + serial number
``Q!``      ``!Q `` + heater PWM (0-1023); ``Pnnnn!`` sets it and answers the same
``S!``      ``!1 `` + sky IR temperature, hundredths of a degree C
``T!``      ``!2 `` + IR sensor (ambient) temperature, hundredths of a degree C
``v!``      ``!v `` + 1 if an anemometer is fitted
``V!``      ``!w `` + anemometer reading (black model: km/h = 0.84 * n + 3 for
            n > 0, else 0; grey model: km/h)
``z!``      reset the serial buffers: the handshake block alone
==========  ==================================================================

The weather: sky IR temperature = ambient + sky_minus_ambient of the timeline
sample in force (sampled every ``sample_interval_s`` simulated seconds, with
the same small noise as ``SimulatedWeatherStation``); the rain frequency comes
from the rain flag; the wind from the timeline's mean wind (the station has no
gust sensor). While the timeline says ``offline`` the station answers nothing
at all. A timeline given as a file is re-read when the file changes (a broken
edit keeps the last good timeline), as the weather actor does.

Misbehaviour (``set_misbehaviour`` or ``--misbehave``), to test a driver's
error handling, the same switches as ``simulators/ioptron.py``:

``normal``   correct replies.
``silent``   no reply at all.
``garbage``  each reply replaced by junk of the same length.
``half``     only the first half of each reply is sent.
``slow``     each reply is sent after ``delay_s`` wall seconds.
``vanish``   every connection is closed and the TCP port stops listening (the
             pty stays open but silent). Back to ``normal`` listens again on
             the same port.

``times=N`` limits ``silent``/``garbage``/``half``/``slow`` to the next N
replies, then the simulator behaves again.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import re
import signal
import sys
import threading
from pathlib import Path

from observatory.clock import SimClock, parse_iso
from simulators.weather import SimulatedWeatherStation, TimelineError, WeatherTimeline
from simulators.wire import MODES, WireServer

log = logging.getLogger(__name__)

BLOCK = 15
HANDSHAKE = b"!\x11" + b" " * 12 + b"0"
_COMMAND = re.compile(r"[A-Za-z0-9]+$")
MAX_COMMAND = 16          # longer runs without '!' are line noise and dropped


def block(code: str, value) -> bytes:
    """One 15-character reply block: '!' + code (2) + value right-aligned (12)."""
    text = f"!{code:<2}{str(value):>12}"
    if len(text) != BLOCK:
        raise ValueError(f"block {text!r} is not {BLOCK} characters")
    return text.encode("ascii")


def black_anemometer_count(kph: float) -> int:
    """The black anemometer's raw count for a wind speed (inverse of 0.84 n + 3)."""
    return 0 if kph <= 3.0 else max(1, int(round((kph - 3.0) / 0.84)))


# ---------------------------------------------------------------------------
# A request/reply serial protocol over TCP (and a pty), with misbehaviour.
# Generic: a candidate for a shared simulators/wire.py (the iOptron simulator
# has the same machinery inline).


# ---------------------------------------------------------------------------
# The CloudWatcher


class CloudWatcherSimulator(WireServer):
    """Serves the AAG CloudWatcher RS-232 protocol for a weather timeline.

    ``handle(command)`` is the protocol alone (``"S!"`` in, the exact reply
    bytes out, or None while the station is offline); ``start()`` serves it
    over TCP, ``open_pty()`` over a pseudo-terminal.
    """

    thread_prefix = "cloudwatcher-sim"

    def __init__(self, timeline: WeatherTimeline, clock: SimClock, host: str = "127.0.0.1",
                 port: int = 0, sample_interval_s: float = 30.0, timeline_path: str | Path | None = None,
                 name: str = "CloudWatcher", firmware: str = "5.89", serial_number: str = "1234",
                 anemometer: str = "black"):
        super().__init__(host, port)
        if anemometer not in ("black", "gray", "none"):
            raise ValueError(f"anemometer must be black, gray or none, got {anemometer!r}")
        for label, text, width in (("name", name, 12), ("firmware", firmware, 12),
                                   ("serial_number", serial_number, 12)):
            if not text or len(text) > width or not text.isascii():
                raise ValueError(f"{label} must be 1 to {width} ASCII characters, got {text!r}")
        self.clock = clock
        self.station = SimulatedWeatherStation(timeline, clock, sample_interval_s=sample_interval_s)
        self.timeline_path = None if timeline_path is None else str(timeline_path)
        self._timeline_mtime = os.stat(self.timeline_path).st_mtime_ns if self.timeline_path else None
        self.name = name
        self.firmware = firmware
        self.serial_number = serial_number
        self.anemometer = anemometer
        self._lock = threading.RLock()
        self._switch_open = True
        self._pwm = 30
        self.commands_seen: list[str] = []

    @classmethod
    def from_file(cls, path: str | Path, clock: SimClock, start_unix: float | None = None, **kwargs):
        start = clock.start_unix if start_unix is None else start_unix
        return cls(WeatherTimeline.load(path, start), clock, timeline_path=path, **kwargs)

    @property
    def timeline(self) -> WeatherTimeline:
        return self.station.timeline

    @timeline.setter
    def timeline(self, timeline: WeatherTimeline) -> None:
        self.station.timeline = timeline

    def _reload_if_changed(self) -> None:
        if not self.timeline_path:
            return
        try:
            mtime = os.stat(self.timeline_path).st_mtime_ns
            if mtime == self._timeline_mtime:
                return
            self._timeline_mtime = mtime
            self.station.timeline = WeatherTimeline.load(self.timeline_path, self.station.timeline.start_unix)
            log.info("cloudwatcher simulator: timeline %s reloaded", self.timeline_path)
        except (OSError, TimelineError) as exc:
            log.error("cloudwatcher simulator: timeline %s invalid (%s); keeping the last good one",
                      self.timeline_path, exc)

    # -- the weather -------------------------------------------------------------

    def sample(self) -> dict | None:
        """The station's sample now, or None while it is offline."""
        self._reload_if_changed()
        now = self.clock.now()
        if self.station.timeline.offline_since(now) is not None:
            return None
        return self.station.sample_at(now)

    def rain_frequency(self, sample: dict) -> int:
        rng = random.Random(round(sample["timestamp"] * 1000) + 17)
        return rng.randint(1200, 1650) if sample["rain"] else rng.randint(2200, 2700)

    # -- the protocol --------------------------------------------------------------

    def split(self, buf: bytes) -> tuple[list[str], bytes]:
        commands = []
        while b"!" in buf:
            chunk, buf = buf.split(b"!", 1)
            # The command is the run of letters and digits just before '!';
            # anything before it is line noise.
            match = _COMMAND.search(chunk.decode("ascii", errors="replace"))
            if match:
                commands.append(match.group(0)[-MAX_COMMAND:] + "!")
        if len(buf) > MAX_COMMAND:  # a command that never ends: drop it, as a UART buffer would
            buf = b""
        return commands, buf

    def handle(self, command: str) -> bytes | None:
        with self._lock:
            self.commands_seen.append(command)
            del self.commands_seen[:-200]
            sample = self.sample()
            if sample is None:
                return None            # offline: the station says nothing
            body = command[:-1] if command.endswith("!") else command
            return b"".join(self._dispatch(body, sample)) + HANDSHAKE

    def _dispatch(self, body: str, sample: dict) -> list[bytes]:
        if body == "A":
            return [block("N", self.name)]
        if body == "B":
            return [block("V", self.firmware)]
        if body == "C":
            # Zener, light (dark sky: high LDR count), rain sensor temperature.
            return [block("6", 975), block("4", 1012), block("5", 600)]
        if body == "D":
            return [block(f"E{i}", 0) for i in range(1, 5)]
        if body == "E":
            return [block("R", self.rain_frequency(sample))]
        if body == "F":
            return [self._switch()]
        if body in ("G", "H"):
            self._switch_open = body == "G"
            return [self._switch()]
        if body == "K":
            return [block("K", self.serial_number)]
        if body == "Q":
            return [block("Q", self._pwm)]
        if len(body) == 5 and body[0] == "P" and body[1:].isdigit() and int(body[1:]) <= 1023:
            self._pwm = int(body[1:])
            return [block("Q", self._pwm)]
        if body == "S":
            sky = sample["ambient_c"] + sample["sky_minus_ambient_c"]
            return [block("1", int(round(sky * 100)))]
        if body == "T":
            return [block("2", int(round(sample["ambient_c"] * 100)))]
        if body == "v":
            return [block("v", 0 if self.anemometer == "none" else 1)]
        if body == "V" and self.anemometer != "none":
            wind = sample["wind_kph"]
            count = black_anemometer_count(wind) if self.anemometer == "black" else int(round(wind))
            return [block("w", count)]
        return []   # z! (reset) and anything unknown: the handshake alone

    def _switch(self) -> bytes:
        return block("X", "Switch Open") if self._switch_open else block("Y", "Switch Close")


# ---------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.cloudwatcher",
                                description="AAG CloudWatcher RS-232 weather station simulator (TCP, optional pty)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default)")
    p.add_argument("--pty", action="store_true", help="also serve on a pseudo-terminal")
    p.add_argument("--timeline", default=None, help="weather timeline YAML (default: clear all night)")
    p.add_argument("--timeline-start", default=None,
                   help="ISO UTC time that 'after:' entries count from (default: the clock's start)")
    p.add_argument("--sample-interval", type=float, default=30.0, help="simulated seconds between samples")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second")
    p.add_argument("--start", default=None, help="simulated start time, ISO UTC (default: now)")
    p.add_argument("--wall-origin", type=float, default=None,
                   help="wall time (Unix s) at which the clock reads --start, to share another process's clock")
    p.add_argument("--anemometer", choices=("black", "gray", "none"), default="black")
    p.add_argument("--serial-number", default="1234", help="what K! reports")
    p.add_argument("--misbehave", choices=MODES, default="normal", help="start misbehaving this way")
    p.add_argument("--delay", type=float, default=2.0, help="reply delay for --misbehave slow, wall seconds")
    p.add_argument("--times", type=int, default=None, help="misbehave for this many replies only")
    p.add_argument("--control", default=None,
                   help="JSON file read whenever it changes, to misbehave on demand (fault injection)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    if not args.speed > 0:
        p.error(f"--speed must be > 0, got {args.speed}")

    start = parse_iso(args.start) if args.start else None
    if args.wall_origin is not None:
        clock = SimClock(start_unix=start if start is not None else args.wall_origin,
                         speed=args.speed, wall_origin=args.wall_origin)
    else:
        clock = SimClock.starting_now(start, speed=args.speed)
    timeline_start = parse_iso(args.timeline_start) if args.timeline_start else clock.start_unix
    try:
        if args.timeline:
            timeline = WeatherTimeline.load(args.timeline, timeline_start)
        else:
            timeline = WeatherTimeline.from_list([], timeline_start)
        sim = CloudWatcherSimulator(timeline, clock, host=args.host, port=args.port,
                                    sample_interval_s=args.sample_interval, timeline_path=args.timeline,
                                    serial_number=args.serial_number, anemometer=args.anemometer)
    except (OSError, ValueError) as exc:   # TimelineError is a ValueError
        print(f"cloudwatcher simulator: {exc}", file=sys.stderr)
        return 2

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    sim.start()
    print(sim.url, flush=True)
    if args.pty:
        print(sim.open_pty(), flush=True)
    sim.set_misbehaviour(args.misbehave, delay_s=args.delay,
                         times=args.times if args.misbehave != "normal" else None)
    try:
        while not done.wait(0.1):
            if args.control:
                sim.apply_control_file(args.control)
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

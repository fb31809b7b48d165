"""AAG CloudWatcher weather station over RS-232 (Lunatico Astro; the protocol of
"Rs232_Comms" v1.00 and its addenda: sky IR temperature, IR sensor
temperature, rain sensor frequency, anemometer).

``CloudWatcher`` has the weather-station interface of
``simulators.weather.SimulatedWeatherStation`` (``read()`` returns one
reading dict), plus ``connect()`` and ``close()``, so the weather actor can own
either. It talks through pyserial's ``serial_for_url``: a device path
(``/dev/ttyUSB0``), an RFC 2217 or ``socket://host:port`` URL (a serial server,
or ``simulators/cloudwatcher.py``).

A reading::

    {"timestamp": <clock time the station answered, Unix s>,
     "sky_minus_ambient_c": sky IR - IR sensor temperature (+ sky_offset_c),
     "ambient_c": IR sensor temperature,
     "wind_kph": anemometer now,
     "gust_kph": the highest wind read over the last gust_window_s,
     "rain": rain sensor frequency < rain_wet_below,
     "conditions": a label from the values: rain, windy, very_cloudy, cloudy, clear}

The timestamp is the clock's time when the station answered, never the time a
value was cached: ``read()`` either returns a fresh reading or raises
``CloudWatcherError`` (naming the command and what came back). It never
returns an old reading, so a caller that keeps its last good reading sees it
age and the safety rules judge it stale.

Every exchange has a timeout; all the commands used are queries, safe to
repeat, so each is tried up to 1 + ``retries`` times. After a missing or
incomplete reply the port is closed and reopened on the next command, so a
late reply cannot be mistaken for the answer to a later question.

Settings (unknown keys are refused):
    port                 (required) device path or pyserial URL
    baudrate             9600
    timeout_s            1.0    wall seconds to wait for each reply
    retries              2      extra attempts per command
    rain_wet_below       2000   rain sensor frequency below which it is raining
                                (dry is about 2200-2700, wet below about 1700)
    anemometer           "black" (km/h = 0.84 n + 3 for n > 0) or "gray" (km/h = n)
    sky_offset_c         0.0    added to sky minus ambient (sensor calibration)
    gust_window_s        600.0  simulated seconds over which gust_kph is the highest wind
    cloudy_above_c       -25.0  sky minus ambient above which conditions says cloudy
    very_cloudy_above_c  -10.0  ... very_cloudy
    windy_above_kph      50.0   wind above which conditions says windy
The ``conditions`` label is descriptive only: safety decisions come from
``observatory.weather_rules`` and the values themselves.
"""
from __future__ import annotations

import logging
import math
import re
import time
from collections import deque


from drivers.serial_link import LINK_ERRORS, WireError as _WireError, close_serial, open_serial

log = logging.getLogger(__name__)

BLOCK = 15
HANDSHAKE = b"!\x11" + b" " * 12 + b"0"

DEFAULT_SETTINGS = {
    "port": None,
    "baudrate": 9600,
    "timeout_s": 1.0,
    "retries": 2,
    "rain_wet_below": 2000,
    "anemometer": "black",
    "sky_offset_c": 0.0,
    "gust_window_s": 600.0,
    "cloudy_above_c": -25.0,
    "very_cloudy_above_c": -10.0,
    "windy_above_kph": 50.0,
}

_INT = re.compile(r"[+-]?\d+")


class CloudWatcherError(RuntimeError):
    """The station did not answer, answered wrongly, or the link to it failed
    (the message says which command and what came back)."""


class CloudWatcher:
    """An AAG CloudWatcher on a serial line (or a serial-over-TCP URL)."""

    def __init__(self, settings: dict | None, clock):
        self._clock = clock
        self.settings = self._validated_settings(settings or {})
        self._serial = None
        self._info: dict | None = None
        self._winds: deque[tuple[float, float]] = deque()

    # -- settings ----------------------------------------------------------------

    @staticmethod
    def _validated_settings(given: dict) -> dict:
        unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
        if unknown:
            raise ValueError(f"unknown cloudwatcher setting(s) {', '.join(map(str, unknown))} "
                             f"(known: {', '.join(DEFAULT_SETTINGS)})")
        s = {**DEFAULT_SETTINGS, **given}
        if not isinstance(s["port"], str) or not s["port"].strip():
            raise ValueError("cloudwatcher setting port is required: a device path (/dev/ttyUSB0) "
                             "or a pyserial URL (socket://127.0.0.1:PORT)")
        for key in ("baudrate", "retries", "rain_wet_below"):
            if isinstance(s[key], bool) or not isinstance(s[key], int):
                raise ValueError(f"cloudwatcher setting {key} must be an integer, got {s[key]!r}")
        if s["baudrate"] <= 0 or s["retries"] < 0 or s["rain_wet_below"] <= 0:
            raise ValueError("cloudwatcher settings: baudrate and rain_wet_below must be > 0, retries >= 0")
        for key in ("timeout_s", "sky_offset_c", "gust_window_s", "cloudy_above_c",
                    "very_cloudy_above_c", "windy_above_kph"):
            v = s[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"cloudwatcher setting {key} must be a finite number, got {v!r}")
            s[key] = float(v)
        if s["timeout_s"] <= 0 or s["gust_window_s"] < 0:
            raise ValueError("cloudwatcher settings: timeout_s must be > 0, gust_window_s >= 0")
        if s["anemometer"] not in ("black", "gray"):
            raise ValueError(f"cloudwatcher setting anemometer must be black or gray, got {s['anemometer']!r}")
        return s

    # -- the wire -----------------------------------------------------------------

    def _port(self):
        if self._serial is None:
            self._serial = open_serial(self.settings["port"], self.settings["baudrate"], self.settings["timeout_s"],
                                       "weather station")
        return self._serial

    def close(self) -> None:
        """Close the port (the next command opens it again)."""
        ser, self._serial = self._serial, None
        close_serial(ser)

    disconnect = close

    def _once(self, cmd: str, codes: tuple[str, ...]) -> list[str]:
        ser = self._port()
        timeout = self.settings["timeout_s"]
        expected = BLOCK * (len(codes) + 1)
        try:
            ser.reset_input_buffer()   # anything left over belongs to no question of ours
            ser.write(cmd.encode("ascii"))
            data = ser.read_until(HANDSHAKE, expected)
        except LINK_ERRORS as exc:
            raise _WireError("link", f"link to the weather station at {self.settings['port']} failed "
                                     f"during {cmd}: {exc}") from None
        if not data:
            raise _WireError("none", f"no reply to {cmd} within {timeout:g} s")
        if len(data) < expected and not data.endswith(HANDSHAKE):
            raise _WireError("partial", f"incomplete reply to {cmd}: {data!r} after {timeout:g} s "
                                        f"(expected {len(codes)} block(s) of {BLOCK} characters "
                                        f"and the handshake block)")
        if len(data) != expected or not data.endswith(HANDSHAKE):
            raise _WireError("garbage", f"unexpected reply to {cmd}: {data!r} (expected {len(codes)} "
                                        f"block(s) {', '.join('!' + c for c in codes)} and the handshake block)")
        values = []
        for i, code in enumerate(codes):
            chunk = data[i * BLOCK:(i + 1) * BLOCK]
            prefix = ("!" + code.ljust(2)).encode("ascii")
            if not chunk.startswith(prefix):
                raise _WireError("garbage", f"unexpected reply to {cmd}: block {chunk!r} in {data!r} "
                                            f"(expected a block starting {prefix.decode()!r})")
            values.append(chunk[len(prefix):].decode("ascii", errors="replace").strip())
        return values

    def _recover(self, kind: str) -> None:
        if kind in ("link", "none", "partial"):
            # A reply may still be on its way: start a fresh link rather than
            # risk reading it as the answer to the next question.
            self.close()
            return
        try:
            time.sleep(min(0.05, self.settings["timeout_s"]))
            if self._serial is not None:
                self._serial.reset_input_buffer()
        except LINK_ERRORS:
            self.close()

    def command(self, cmd: str, codes: tuple[str, ...], integers: bool = False) -> list:
        """One query: send ``cmd``, expect one block per code in ``codes`` and
        the handshake block; returns the block values (text, or int if
        ``integers``). Raises CloudWatcherError after 1 + ``retries`` failures."""
        attempts = 1 + self.settings["retries"]
        for attempt in range(attempts):
            try:
                values = self._once(cmd, codes)
                if integers:
                    bad = [v for v in values if not _INT.fullmatch(v)]
                    if bad:
                        raise _WireError("garbage", f"unexpected reply to {cmd}: {bad[0]!r} is not a number")
                    values = [int(v) for v in values]
                return values
            except _WireError as exc:
                log.warning("cloudwatcher: %s (attempt %d of %d)", exc, attempt + 1, attempts)
                self._recover(exc.kind)
                last = exc
        suffix = f" ({attempts} attempts)" if attempts > 1 else ""
        raise CloudWatcherError(f"weather station at {self.settings['port']}: {last}{suffix}")

    # -- public API ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._info is not None

    def connect(self) -> dict:
        """Open the port; ask name, firmware, serial number and whether an
        anemometer is fitted. Returns {'name', 'firmware', 'serial', 'port'}."""
        self.close()
        self._info = None
        self.command("z!", ())                    # reset the station's serial buffers
        name = self.command("A!", ("N",))[0]
        firmware = self.command("B!", ("V",))[0]
        serial_number = self.command("K!", ("K",))[0]
        anemometer = self.command("v!", ("v",), integers=True)[0]
        if anemometer != 1:
            raise CloudWatcherError(f"weather station at {self.settings['port']} ({name}, serial "
                                    f"{serial_number}) reports no anemometer (v! gave {anemometer}); "
                                    f"wind is needed for the safety rules")
        self._info = {"name": name, "firmware": firmware, "serial": serial_number,
                      "port": self.settings["port"]}
        log.info("cloudwatcher connected: %s", self._info)
        return dict(self._info)

    def read(self) -> dict | None:
        """A fresh reading (see the module docstring) or CloudWatcherError.
        Never returns None (the signature is the weather-station interface)."""
        s = self.settings
        sky = self.command("S!", ("1",), integers=True)[0] / 100.0
        timestamp = self._clock.now()
        ambient = self.command("T!", ("2",), integers=True)[0] / 100.0
        frequency = self.command("E!", ("R",), integers=True)[0]
        count = self.command("V!", ("w",), integers=True)[0]
        if s["anemometer"] == "black":
            wind = count * 0.84 + 3.0 if count > 0 else 0.0
        else:
            wind = float(count)
        wind = round(max(0.0, wind), 1)
        self._winds.append((timestamp, wind))
        while self._winds and self._winds[0][0] < timestamp - s["gust_window_s"]:
            self._winds.popleft()
        gust = max(w for _, w in self._winds)
        sky_minus_ambient = round(sky - ambient + s["sky_offset_c"], 2)
        rain = frequency < s["rain_wet_below"]
        if rain:
            conditions = "rain"
        elif wind > s["windy_above_kph"]:
            conditions = "windy"
        elif sky_minus_ambient > s["very_cloudy_above_c"]:
            conditions = "very_cloudy"
        elif sky_minus_ambient > s["cloudy_above_c"]:
            conditions = "cloudy"
        else:
            conditions = "clear"
        return {
            "timestamp": timestamp,
            "sky_minus_ambient_c": sky_minus_ambient,
            "ambient_c": round(ambient, 2),
            "wind_kph": wind,
            "gust_kph": gust,
            "rain": rain,
            "conditions": conditions,
        }

    def raw(self) -> dict:
        """The raw counters, for diagnosis: rain frequency, analog values, errors."""
        zener, ldr, rain_temp = self.command("C!", ("6", "4", "5"), integers=True)
        errors = self.command("D!", ("E1", "E2", "E3", "E4"), integers=True)
        return {"rain_frequency": self.command("E!", ("R",), integers=True)[0],
                "zener": zener, "ldr": ldr, "rain_sensor_temp": rain_temp,
                "internal_errors": errors}

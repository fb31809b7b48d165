"""iOptron equatorial mount over RS-232 (command language v3.10: CEM40, GEM45,
CEM26/GEM28, CEM70, CEM120, iEQ30 Pro on v3 firmware).

``IOptronMount`` has the same methods as ``simulators.mount.SimulatedMount``
(connect, status, unpark, check_target, slew_to, park, home, stop,
set_tracking, guide) so the mount actor can own either. It talks through
pyserial's ``serial_for_url``: a device path (``/dev/ttyUSB0``), an RFC 2217 or
``socket://host:port`` URL (a serial server, or ``simulators/ioptron.py``).

Every exchange has a timeout. Queries and commands that are safe to repeat
(setting the target, site, time or rates, stop, tracking on/off, unpark) are
retried up to ``retries`` times; motion commands (slew, park, home) and guide
pulses are sent once. Whatever goes wrong on the wire ends in ``MountError``
naming the command and what came back. After a missing or incomplete reply the
port is closed and reopened on the next command, and input waiting before
each command is discarded; every reply is also checked against the format the
command expects. Over TCP that drops a late reply for good; on a serial line
a reply that arrives late enough (after the discard) can still be read by the
next command, where the format check catches most mix-ups.

Settings (unknown keys are refused):
    port               (required) device path or pyserial URL
    baudrate           9600
    timeout_s          1.0     wall seconds to wait for each reply
    retries            2       extra attempts for commands safe to repeat
    expected_models    MountInfo codes accepted at connect (default: the
                       v3.10 equatorial mounts and the iEQ30 Pro, see MODELS)
    altitude_limit_deg 10.0    sent with :SAL#; check_target refuses below it
    slew_rate_deg_s    3.0     per axis, for duration estimates only
    settle_time_s      2.0     added to duration estimates
    guide_rate         0.5     x sidereal, RA and Dec (sent with :RG#)
    utc_offset_min     0       mount time zone (:SG#); DST is switched off
    set_site_and_time  true    send site and UTC time at connect

Coordinates are passed to the mount as given (the firmware works in the
equinox of date); RA/HA/LST follow the conventions of simulators/mount.py:
HA = LST - RA in [-180, 180), positive west; pier side "east" when pointing
west of the meridian.
"""
from __future__ import annotations

import logging
import math
import re
import time

from drivers.serial_link import LINK_ERRORS, WireError as _WireError, close_serial, open_serial

log = logging.getLogger(__name__)

CAS_PER_DEG = 360000            # the protocol's unit is 0.01 arcsec
J2000_UNIX = 946728000.0        # JD 2451545.0 in Unix seconds
SIDEREAL_RATE_DEG_S = 360.98564736629 / 86400.0
MAX_PULSE_MS = 99999

MODELS = {
    "0026": "CEM26", "0027": "CEM26-EC", "0028": "GEM28", "0029": "GEM28-EC",
    "0030": "iEQ30 Pro", "0040": "CEM40(G)", "0041": "CEM40(G)-EC",
    "0043": "GEM45(G)", "0044": "GEM45(G)-EC", "0045": "iEQ45 Pro",
    "0060": "CEM60", "0061": "CEM60-EC", "0070": "CEM70(G)", "0071": "CEM70(G)-EC",
    "0120": "CEM120", "0121": "CEM120-EC", "0122": "CEM120-EC2",
}

DEFAULT_SETTINGS = {
    "port": None,
    "baudrate": 9600,
    "timeout_s": 1.0,
    "retries": 2,
    "expected_models": ["0026", "0027", "0028", "0029", "0030", "0040", "0041", "0043", "0044",
                        "0070", "0071", "0120", "0121", "0122"],
    "altitude_limit_deg": 10.0,
    "slew_rate_deg_s": 3.0,
    "settle_time_s": 2.0,
    "guide_rate": 0.5,
    "utc_offset_min": 0,
    "set_site_and_time": True,
}

# GLS system status digit -> our state name (2 and 4 are refined by what we asked for).
_SYSTEM_STATE = {0: "stopped", 1: "tracking", 2: "slewing", 3: "tracking", 4: "slewing",
                 5: "tracking", 6: "parked", 7: "stopped"}
_MOVING = (2, 4)
_GLS = re.compile(r"([+-]\d{8})(\d{8})([0-2])([0-7])([0-4])([1-9])([1-3])([01])#")
_GEP = re.compile(r"([+-]\d{8})(\d{9})([0-2])([01])#")
_GPC = re.compile(r"(\d{8})(\d{9})#")
_GAL = re.compile(r"([+-]\d{2})#")
_FW = re.compile(r"(\d{6})(\d{6})#")
_ONE = re.compile(r"[01]")
_CODE = re.compile(r"\d{4}")


class MountError(RuntimeError):
    """The mount refused a command, or the link to it failed (the message says
    which command and what came back)."""


def _wrap180(angle: float) -> float:
    return (angle + 180.0) % 360.0 - 180.0


def _lst_deg(unix: float, longitude_deg: float) -> float:
    days = unix / 86400.0 + 2440587.5 - 2451545.0
    t = days / 36525.0
    gmst = 280.46061837 + 360.98564736629 * days + 0.000387933 * t * t - t ** 3 / 38710000.0
    return (gmst + longitude_deg) % 360.0


def _alt_az(ha_deg: float, dec_deg: float, lat_deg: float) -> tuple[float, float]:
    ha, dec, lat = map(math.radians, (ha_deg, dec_deg, lat_deg))
    sin_alt = math.sin(dec) * math.sin(lat) + math.cos(dec) * math.cos(lat) * math.cos(ha)
    alt = math.degrees(math.asin(max(-1.0, min(1.0, sin_alt))))
    az = math.degrees(math.atan2(-math.cos(dec) * math.sin(ha),
                                 math.sin(dec) * math.cos(lat) - math.cos(dec) * math.cos(ha) * math.sin(lat)))
    return alt, az % 360.0


def _ha_dec(alt_deg: float, az_deg: float, lat_deg: float) -> tuple[float, float]:
    alt, az, lat = map(math.radians, (alt_deg, az_deg, lat_deg))
    sin_dec = math.sin(alt) * math.sin(lat) + math.cos(alt) * math.cos(lat) * math.cos(az)
    dec = math.asin(max(-1.0, min(1.0, sin_dec)))
    if math.cos(dec) < 1e-5:      # at a pole the hour angle means nothing
        return 0.0, math.degrees(dec)
    ha = math.atan2(-math.sin(az) * math.cos(alt),
                    math.sin(alt) * math.cos(lat) - math.cos(alt) * math.sin(lat) * math.cos(az))
    return _wrap180(math.degrees(ha)), math.degrees(dec)


class IOptronMount:
    """An iOptron mount on a serial line (or a serial-over-TCP URL)."""

    def __init__(self, settings: dict | None, clock, latitude_deg: float, longitude_deg: float):
        self._clock = clock
        self.latitude_deg = float(latitude_deg)
        self.longitude_deg = float(longitude_deg)
        if not (-90.0 <= self.latitude_deg <= 90.0 and -180.0 <= self.longitude_deg <= 180.0):
            raise ValueError(f"site latitude {latitude_deg} / longitude {longitude_deg} out of range")
        self.settings = self._validated_settings(settings or {})
        self._serial = None
        self._connected = False
        self._info: dict | None = None
        self._altitude_limit = self.settings["altitude_limit_deg"]
        pole = 90.0 if self.latitude_deg >= 0 else -90.0
        self._park_ha_dec = (0.0, pole)
        self._home_ha_dec = (0.0, pole)
        self._target: tuple[float, float] | None = None
        self._motion: dict | None = None   # what we last set moving: kind, end (sim s), goal

    # -- settings ----------------------------------------------------------------

    @staticmethod
    def _validated_settings(given: dict) -> dict:
        unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
        if unknown:
            raise ValueError(f"unknown ioptron setting(s) {', '.join(unknown)} "
                             f"(known: {', '.join(DEFAULT_SETTINGS)})")
        s = {**DEFAULT_SETTINGS, **given}
        if not isinstance(s["port"], str) or not s["port"].strip():
            raise ValueError("ioptron setting port is required: a device path (/dev/ttyUSB0) "
                             "or a pyserial URL (socket://127.0.0.1:PORT)")
        for key in ("baudrate", "retries", "utc_offset_min"):
            if isinstance(s[key], bool) or not isinstance(s[key], int):
                raise ValueError(f"ioptron setting {key} must be an integer, got {s[key]!r}")
        if s["baudrate"] <= 0 or s["retries"] < 0 or not -720 <= s["utc_offset_min"] <= 780:
            raise ValueError("ioptron settings: baudrate must be > 0, retries >= 0, "
                             "utc_offset_min within [-720, 780]")
        for key in ("timeout_s", "altitude_limit_deg", "slew_rate_deg_s", "settle_time_s", "guide_rate"):
            v = s[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"ioptron setting {key} must be a finite number, got {v!r}")
            s[key] = float(v)
        if s["timeout_s"] <= 0 or s["slew_rate_deg_s"] <= 0 or s["settle_time_s"] < 0:
            raise ValueError("ioptron settings: timeout_s and slew_rate_deg_s must be > 0, settle_time_s >= 0")
        if not -89 <= s["altitude_limit_deg"] <= 89:
            raise ValueError(f"ioptron setting altitude_limit_deg must be within [-89, 89], "
                             f"got {s['altitude_limit_deg']}")
        if not 0.1 <= s["guide_rate"] <= 0.9:
            raise ValueError(f"ioptron setting guide_rate must be within [0.1, 0.9], got {s['guide_rate']}")
        models = s["expected_models"]
        if isinstance(models, str) or not all(isinstance(m, str) and _CODE.fullmatch(m) for m in models):
            raise ValueError(f"ioptron setting expected_models must be a list of 4-digit codes, got {models!r}")
        s["expected_models"] = list(models)
        if not isinstance(s["set_site_and_time"], bool):
            raise ValueError("ioptron setting set_site_and_time must be true or false")
        return s

    # -- the wire --------------------------------------------------------------------

    def _port(self):
        if self._serial is None:
            self._serial = open_serial(self.settings["port"], self.settings["baudrate"], self.settings["timeout_s"],
                                       "mount")
        return self._serial

    def close(self) -> None:
        """Close the port (the next command opens it again)."""
        ser, self._serial = self._serial, None
        close_serial(ser)

    disconnect = close

    def _once(self, cmd: str, reply, pattern) -> str:
        try:
            ser = self._port()
        except _WireError as exc:
            raise _WireError(exc.kind, f"{exc}; {cmd} not sent") from None
        timeout = self.settings["timeout_s"]
        try:
            ser.reset_input_buffer()   # anything left over belongs to no question of ours
            ser.write(cmd.encode("ascii"))
            if reply is None:
                return ""
            data = ser.read(reply) if isinstance(reply, int) else ser.read_until(b"#", 64)
        except LINK_ERRORS as exc:
            raise _WireError("link", f"link to the mount at {self.settings['port']} failed "
                                     f"during {cmd}: {exc}") from None
        if not data:
            raise _WireError("none", f"no reply to {cmd} within {timeout:g} s")
        text = data.decode("ascii", errors="replace")
        complete = len(data) >= reply if isinstance(reply, int) else data.endswith(b"#")
        if not complete:
            expected = f"{reply} characters" if isinstance(reply, int) else "a reply ending in '#'"
            raise _WireError("partial", f"incomplete reply to {cmd}: {data!r} after {timeout:g} s "
                                        f"(expected {expected})")
        if pattern is not None and not pattern.fullmatch(text):
            raise _WireError("garbage", f"unexpected reply to {cmd}: {data!r} "
                                        f"(expected the pattern {pattern.pattern})")
        return text

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

    def command(self, cmd: str, reply="#", pattern: re.Pattern | None = None, retry: bool = False) -> str:
        """One exchange: send ``cmd``; ``reply`` is ``"#"`` (read up to '#'),
        an int (read that many characters) or None (no reply expected).
        Raises MountError after 1 (+ ``retries`` if ``retry``) failed attempts."""
        attempts = 1 + (self.settings["retries"] if retry else 0)
        for attempt in range(attempts):
            try:
                return self._once(cmd, reply, pattern)
            except _WireError as exc:
                log.warning("ioptron: %s (attempt %d of %d)", exc, attempt + 1, attempts)
                self._recover(exc.kind)
                last = exc
        suffix = f" ({attempts} attempts)" if attempts > 1 else ""
        raise MountError(f"{last}{suffix}")

    def _set(self, cmd: str, retry: bool = True, what: str | None = None) -> None:
        """A command answered with 1 (done) or 0 (refused)."""
        if self.command(cmd, 1, _ONE, retry=retry) != "1":
            raise MountError(f"mount refused {cmd}" + (f": {what}" if what else ""))

    # -- queries -------------------------------------------------------------------------

    def _gls(self) -> dict:
        m = _GLS.fullmatch(self.command(":GLS#", "#", _GLS, retry=True))
        return {"longitude_deg": int(m[1]) / CAS_PER_DEG, "latitude_deg": int(m[2]) / CAS_PER_DEG - 90.0,
                "gps": int(m[3]), "system": int(m[4]), "tracking_rate": int(m[5]),
                "button_speed": int(m[6]), "time_source": int(m[7]), "north": m[8] == "1"}

    def _gep(self) -> dict:
        m = _GEP.fullmatch(self.command(":GEP#", "#", _GEP, retry=True))
        return {"dec_deg": int(m[1]) / CAS_PER_DEG, "ra_deg": int(m[2]) / CAS_PER_DEG % 360.0,
                "pier_side": {"0": "east", "1": "west"}.get(m[3]), "normal": m[4] == "1"}

    # -- public API (same as SimulatedMount) -----------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def connect(self) -> dict:
        """Open the port, check the model, set site, time, rates and altitude limit."""
        self.close()
        self._connected = False
        code = self.command(":MountInfo#", 4, _CODE, retry=True)
        name = MODELS.get(code, "unknown model")
        if code not in self.settings["expected_models"]:
            raise MountError(f"mount at {self.settings['port']} reports model code {code} ({name}); "
                             f"expected one of {', '.join(self.settings['expected_models'])}")
        fw1 = _FW.fullmatch(self.command(":FW1#", "#", _FW, retry=True))
        fw2 = _FW.fullmatch(self.command(":FW2#", "#", _FW, retry=True))
        s = self.settings
        if s["set_site_and_time"]:
            self._set(f":SLO{round(self.longitude_deg * CAS_PER_DEG):+09d}#", what="longitude")
            self._set(f":SLA{round(self.latitude_deg * CAS_PER_DEG):+09d}#", what="latitude")
            self._set(f":SHE{1 if self.latitude_deg >= 0 else 0}#", what="hemisphere")
            self._set(f":SG{s['utc_offset_min']:+04d}#", what="time zone")
            self._set(":SDS0#", what="daylight saving off")
            ms = int(round((self._clock.now() - J2000_UNIX) * 1000.0))
            self._set(f":SUT{ms:013d}#", what="UTC time")
        self._set(":RT0#", what="sidereal tracking rate")
        self._set(f":SAL{int(round(s['altitude_limit_deg'])):+03d}#", what="altitude limit")
        rate = int(round(s["guide_rate"] * 100))
        self._set(f":RG{rate:02d}{max(rate, 10):02d}#", what="guide rate")
        gls = self._gls()
        if s["set_site_and_time"] and (abs(gls["latitude_deg"] - self.latitude_deg) > 1 / 3600
                                       or abs(_wrap180(gls["longitude_deg"] - self.longitude_deg)) > 1 / 3600):
            raise MountError(f"mount reports site lat {gls['latitude_deg']:.5f} lon {gls['longitude_deg']:.5f} "
                             f"after being set to lat {self.latitude_deg:.5f} lon {self.longitude_deg:.5f}")
        self._altitude_limit = float(int(_GAL.fullmatch(self.command(":GAL#", "#", _GAL, retry=True))[1]))
        try:
            gpc = _GPC.fullmatch(self.command(":GPC#", "#", _GPC, retry=True))
            self._park_ha_dec = _ha_dec(int(gpc[1]) / CAS_PER_DEG, int(gpc[2]) / CAS_PER_DEG, self.latitude_deg)
        except MountError as exc:
            log.warning("ioptron: park position unknown (%s); assuming the pole", exc)
        self._connected = True
        self._info = {
            "model": name, "model_code": code,
            "firmware": {"mainboard": fw1[1], "hand_controller": fw1[2],
                         "ra_motor": fw2[1], "dec_motor": fw2[2]},
            "site": {"latitude_deg": gls["latitude_deg"], "longitude_deg": gls["longitude_deg"]},
            "altitude_limit_deg": self._altitude_limit,
            "port": s["port"],
        }
        log.info("ioptron connected: %s", self._info)
        return dict(self._info)

    def status(self) -> dict:
        gls = self._gls()
        gep = self._gep()
        now = self._clock.now()
        ra, dec = gep["ra_deg"], gep["dec_deg"]
        ha = _wrap180(_lst_deg(now, self.longitude_deg) - ra)
        alt, az = _alt_az(ha, dec, self.latitude_deg)
        system = gls["system"]
        state = _SYSTEM_STATE[system]
        remaining = 0.0
        if system in _MOVING:
            if self._motion is not None:
                state = self._motion["kind"]
            remaining = self._remaining(now, ra, dec, ha)
        else:
            self._motion = None
        if state == "parked":
            self._target = None
        target = self._target
        return {
            "timestamp": now,
            "state": state,
            "ra_deg": ra,
            "dec_deg": dec,
            "ha_deg": ha,
            "alt_deg": alt,
            "az_deg": az,
            "pier_side": gep["pier_side"],
            "target_ra_deg": target[0] if target else None,
            "target_dec_deg": target[1] if target else None,
            "tracking": state == "tracking",
            "parked": state == "parked",
            "slew_remaining_s": remaining,
            "system_status": system,
        }

    def _remaining(self, now: float, ra: float, dec: float, ha: float) -> float:
        """Estimated simulated seconds until the motion in progress ends."""
        m = self._motion
        rate, settle = self.settings["slew_rate_deg_s"], self.settings["settle_time_s"]
        if m is not None and m["end"] - now > 0:
            return m["end"] - now
        if m is not None and m["kind"] in ("parking", "homing"):
            goal_ha, goal_dec = m["goal"]
            dist = max(abs(_wrap180(goal_ha - ha)), abs(goal_dec - dec))
        elif self._target is not None:
            dist = max(abs(_wrap180(self._target[0] - ra)), abs(self._target[1] - dec))
        else:
            dist = 0.0
        return max(0.5, dist / rate + settle)

    def unpark(self) -> None:
        """Release the park lock (the mount stays where it is, not tracking).
        Harmless when not parked; refused while parking."""
        st = self.status()
        if st["state"] == "parking":
            raise MountError("cannot unpark while parking; stop() first or wait for the park to finish")
        if st["parked"]:
            self._set(":MP0#", what="unpark")

    def check_target(self, ra_deg: float, dec_deg: float) -> tuple[float, float]:
        """Raise MountError if a slew to this position would be refused now;
        returns the normalised (ra, dec). Sends nothing to the mount."""
        ra_deg, dec_deg = float(ra_deg), float(dec_deg)
        if not (math.isfinite(ra_deg) and math.isfinite(dec_deg)) or not -90.0 <= dec_deg <= 90.0:
            raise MountError(f"invalid target RA {ra_deg} Dec {dec_deg} (Dec must be within [-90, 90])")
        ra_deg %= 360.0
        ha = _wrap180(_lst_deg(self._clock.now(), self.longitude_deg) - ra_deg)
        alt, _ = _alt_az(ha, dec_deg, self.latitude_deg)
        if alt < self._altitude_limit:
            raise MountError(f"target RA {ra_deg:.3f} Dec {dec_deg:+.3f} is at altitude {alt:.1f} deg, "
                             f"below the limit of {self._altitude_limit:.1f} deg")
        return ra_deg, dec_deg

    def slew_to(self, ra_deg: float, dec_deg: float) -> float:
        """Start a slew (tracking starts on arrival); returns the expected
        duration in simulated seconds."""
        ra_deg, dec_deg = self.check_target(ra_deg, dec_deg)
        st = self.status()
        if st["state"] in ("parked", "parking"):
            raise MountError(f"cannot slew to RA {ra_deg:.3f} Dec {dec_deg:+.3f}: mount is {st['state']}"
                             + ("; unpark() first" if st["parked"] else ""))
        self._set(f":SRA{round(ra_deg * CAS_PER_DEG) % 129600000:09d}#", what="target RA")
        self._set(f":Sd{round(dec_deg * CAS_PER_DEG):+09d}#", what="target Dec")
        self._set(":MS1#", retry=False,
                  what=f"slew to RA {ra_deg:.3f} Dec {dec_deg:+.3f} (below the altitude limit "
                       f"or beyond a mechanical limit)")
        expected = (max(abs(_wrap180(ra_deg - st["ra_deg"])), abs(dec_deg - st["dec_deg"]))
                    / self.settings["slew_rate_deg_s"] + self.settings["settle_time_s"])
        self._target = (ra_deg, dec_deg)
        self._motion = {"kind": "slewing", "end": self._clock.now() + expected, "goal": (ra_deg, dec_deg)}
        return expected

    def park(self) -> float:
        """Move to the park position and lock there; returns the expected
        duration. Parked returns 0, parking the time left."""
        st = self.status()
        if st["parked"]:
            return 0.0
        if st["state"] == "parking":
            return st["slew_remaining_s"]
        return self._move_to_fixed(":MP1#", "parking", self._park_ha_dec, st)

    def home(self) -> float:
        """Move to the zero (home) position and stop there; refused while parked."""
        st = self.status()
        if st["state"] in ("parked", "parking"):
            raise MountError(f"cannot home: mount is {st['state']}"
                             + ("; unpark() first" if st["parked"] else ""))
        return self._move_to_fixed(":MH#", "homing", self._home_ha_dec, st)

    def _move_to_fixed(self, cmd: str, kind: str, goal: tuple[float, float], st: dict) -> float:
        self._set(cmd, retry=False, what=kind)
        expected = (max(abs(_wrap180(goal[0] - st["ha_deg"])), abs(goal[1] - st["dec_deg"]))
                    / self.settings["slew_rate_deg_s"] + self.settings["settle_time_s"])
        self._target = None
        self._motion = {"kind": kind, "end": self._clock.now() + expected, "goal": goal}
        return expected

    def stop(self) -> None:
        """Halt both axes, tracking off (:Q# then :ST0#). Harmless when parked."""
        self._set(":Q#", what="stop")
        self._motion = None
        gls = self._gls()
        if gls["system"] in (1, 3, 5):       # :Q# leaves tracking as it was
            self._set(":ST0#", what="tracking off")

    def set_tracking(self, on: bool) -> None:
        """Sidereal tracking on or off; refused while parked or moving."""
        st = self.status()
        wanted = "tracking" if on else "stopped"
        if st["state"] == wanted:
            return
        if st["state"] not in ("tracking", "stopped"):
            raise MountError(f"cannot turn tracking {'on' if on else 'off'}: mount is {st['state']}")
        self._set(":ST1#" if on else ":ST0#", what=f"tracking {'on' if on else 'off'}")

    def guide(self, ra_ms: float, dec_ms: float) -> None:
        """Timed guide pulses (ms, signed; + is larger RA / north) at the guide
        rate; needs tracking. Pulses are sent once: they have no reply."""
        ra_ms, dec_ms = float(ra_ms), float(dec_ms)
        if not (math.isfinite(ra_ms) and math.isfinite(dec_ms)):
            raise MountError(f"invalid guide pulse ra_ms={ra_ms} dec_ms={dec_ms}")
        if max(abs(ra_ms), abs(dec_ms)) > MAX_PULSE_MS:
            raise MountError(f"guide pulse ra_ms={ra_ms:.0f} dec_ms={dec_ms:.0f} longer than {MAX_PULSE_MS} ms")
        st = self.status()
        if st["state"] != "tracking":
            raise MountError(f"cannot guide: mount is {st['state']}, guiding needs tracking")
        for ms, plus, minus in ((ra_ms, "ZS", "ZQ"), (dec_ms, "ZE", "ZC")):
            n = int(round(abs(ms)))
            if n:
                self.command(f":{plus if ms > 0 else minus}{n:05d}#", None)

"""INDI device drivers on top of ``drivers.indi.IndiClient``.

Each class is a plain driver (no actor code) taking ``(settings, clock, ...)``
with the same methods as the simulator it can replace:

    IndiMount(settings, clock, latitude_deg, longitude_deg)   like simulators.mount
    IndiCamera(settings, clock, name="camera")                 like simulators.camera
    IndiFocuser(settings, clock)     move_to(position), position()
    IndiFilterWheel(settings, clock) set_slot(n), slot(), names()
    IndiDome(settings, clock)        open(), close(), shutter_state()
    IndiWeather(settings, clock)     read() -> the weather dict of simulators.weather

Settings common to all (unknown keys are refused in the constructor, which
never touches the network):
    host              "localhost"
    port              7624
    device            the INDI device name (defaults: the Debian simulators,
                      "Telescope Simulator", "CCD Simulator", ...)
    timeout_s         5.0   wall seconds for the link and for simple commands
    connect_timeout_s 15.0  wall seconds for the device to appear and connect
    reconnect_device  false reconnect a device found disconnected (a driver
                      restarted by indiserver comes back disconnected with its
                      state lost); false raises IndiError instead, so the
                      owner notices the reset
Device-specific keys are listed on each class.

INDI drivers run on the wall clock: these drivers assume a unit clock with
speed 1 (a SimClock at speed 1, or real time). ``clock`` is used for
timestamps and for the sidereal time in mount status.
"""
from __future__ import annotations

import io
import logging
import math
import os
import signal
import threading
import time
import warnings

from drivers.indi import IndiClient, IndiError, IndiProperty

log = logging.getLogger(__name__)

SIDEREAL_RATE_DEG_S = 360.98564736629 / 86400.0
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "BZERO",
               "BSCALE", "END", "PCOUNT", "GCOUNT", "XTENSION"}


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


def _separation_deg(ra1, dec1, ra2, dec2) -> float:
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    c = math.sin(d1) * math.sin(d2) + math.cos(d1) * math.cos(d2) * math.cos(r1 - r2)
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
SIMULATOR_PREFIX = "indi_simulator_"


def _proc_argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _proc_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _indiserver_port(argv: list[str]) -> int:
    for i, arg in enumerate(argv[:-1]):
        if arg == "-p":
            try:
                return int(argv[i + 1])
            except ValueError:
                return -1
    return 7624


def local_driver_pid(driver_exec: str, device: str, port: int) -> int:
    """The pid of the INDI driver process ``driver_exec`` that serves ``device``
    under the indiserver listening on ``port`` on this machine.

    A driver runs several devices' worth of names only through INDIDEV (its
    environment names the device); without it, the one driver of that
    executable under the server is it. Raises IndiError when none or more than
    one process fits."""
    candidates = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        argv = _proc_argv(pid)
        if not argv or os.path.basename(argv[0]) != driver_exec:
            continue
        parent = _proc_ppid(pid)
        server = _proc_argv(parent) if parent else []
        if not server or os.path.basename(server[0]) != "indiserver" or _indiserver_port(server) != port:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            env = {}
        candidates.append((pid, env.get(b"INDIDEV", b"").decode(errors="replace")))
    named = [pid for pid, indidev in candidates if indidev == device]
    plain = [pid for pid, indidev in candidates if not indidev]
    chosen = named or plain
    if len(chosen) != 1:
        raise IndiError(f"{device}: found {len(chosen)} {driver_exec} processes under the indiserver on port "
                        f"{port} (expected one)")
    return chosen[0]


class IndiDevice:
    """Common part: settings, the client, connecting the device, and the
    check made before every command."""

    kind = "device"
    default_device = None
    COMMON = {"host": "localhost", "port": 7624, "device": None, "timeout_s": 5.0,
              "connect_timeout_s": 15.0, "reconnect_device": False}
    EXTRA: dict = {}

    def __init__(self, settings: dict | None, clock):
        self._clock = clock
        self.settings = self._validated(dict(settings or {}))
        self.device = self.settings["device"]
        self.client = IndiClient(self.settings["host"], self.settings["port"], self.settings["timeout_s"])
        self._wanted = False       # connect() succeeded at least once and close() was not called
        self._lock = threading.RLock()

    # -- settings -----------------------------------------------------------

    def _validated(self, given: dict) -> dict:
        defaults = {**self.COMMON, "device": self.default_device, **self.EXTRA}
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f"unknown INDI {self.kind} setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(defaults))}")
        s = {**defaults, **given}
        if not isinstance(s["host"], str) or not s["host"]:
            raise ValueError(f"INDI {self.kind} setting host must be a host name, got {s['host']!r}")
        if isinstance(s["port"], bool) or not isinstance(s["port"], int) or not 0 < s["port"] < 65536:
            raise ValueError(f"INDI {self.kind} setting port must be an integer 1-65535, got {s['port']!r}")
        if not isinstance(s["device"], str) or not s["device"]:
            raise ValueError(f"INDI {self.kind} setting device must be the INDI device name, got {s['device']!r}")
        if not isinstance(s["reconnect_device"], bool):
            raise ValueError(f"INDI {self.kind} setting reconnect_device must be true or false")
        for key, default in defaults.items():
            if key == "port":
                continue
            if isinstance(default, float):
                v = s[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"INDI {self.kind} setting {key} must be a finite number, got {v!r}")
                s[key] = float(v)
        for key in ("timeout_s", "connect_timeout_s"):
            if s[key] <= 0:
                raise ValueError(f"INDI {self.kind} setting {key} must be > 0, got {s[key]}")
        self._check_extra(s)
        return s

    def _check_extra(self, s: dict) -> None:
        pass

    # -- connection ---------------------------------------------------------

    def _err(self, text: str) -> IndiError:
        return IndiError(f"{self.device}: {text}")

    def connect(self) -> dict:
        """Connect to the server and the device (idempotent); returns a description."""
        with self._lock:
            self.client.ensure_connected()
            self._connect_device()
            self._wanted = True
            self._after_connect()
            return self.info()

    def _connect_device(self) -> None:
        c, dev, timeout = self.client, self.device, self.settings["connect_timeout_s"]
        prop = c.wait_for(dev, "CONNECTION", timeout=timeout, what="its CONNECTION property")
        if prop.values.get("CONNECT") == "On" and prop.state != "Alert":
            return
        c.send_switch(dev, "CONNECTION", {"CONNECT": True})
        start = prop.generation

        def connected(p: IndiProperty) -> bool:
            if p.generation > start and p.state == "Alert":
                raise self._err("the driver failed to connect to its hardware"
                                + (f": {p.message}" if p.message else "")
                                + self._recent_messages())
            return p.values.get("CONNECT") == "On" and p.state == "Ok"

        c.wait_for(dev, "CONNECTION", connected, timeout=timeout, what="CONNECTION to turn On")

    def _recent_messages(self) -> str:
        msgs = self.client.messages(self.device)[-3:]
        return (" (driver said: " + " | ".join(msgs) + ")") if msgs else ""

    def _after_connect(self) -> None:
        pass

    def info(self) -> dict:
        return {"device": self.device, "server": self.client.address, "driver_exec": self.driver_exec()}

    def driver_exec(self) -> str | None:
        """The executable of the device's driver, as it reports it (DRIVER_INFO)."""
        prop = self.client.get(self.device, "DRIVER_INFO")
        return prop.values.get("DRIVER_EXEC") if prop is not None else None

    def is_simulator(self) -> bool:
        """The device is one of INDI's own simulators (indi_simulator_*)."""
        return (self.driver_exec() or "").startswith(SIMULATOR_PREFIX)

    def kill_driver(self) -> int:
        """Fault injection: SIGKILL the device's driver process, as if it crashed
        (indiserver restarts it, the device coming back disconnected). Only an
        INDI simulator, and only under an indiserver on this machine; returns its pid."""
        exec_name = self.driver_exec()
        if not (exec_name or "").startswith(SIMULATOR_PREFIX):
            raise IndiError(f"{self.device}: its driver {exec_name or '(unknown)'} is not an INDI simulator: "
                            "refusing to kill it")
        if self.settings["host"] not in LOCAL_HOSTS:
            raise IndiError(f"{self.device}: its indiserver is on {self.settings['host']}, not this machine")
        pid = local_driver_pid(exec_name, self.device, self.settings["port"])
        os.kill(pid, signal.SIGKILL)
        log.warning("%s: killed its driver %s (pid %d) for fault injection", self.device, exec_name, pid)
        return pid

    def _ready(self) -> None:
        """Before every command: the link is up (reconnecting once if it
        dropped) and the device still reports itself connected."""
        if not self._wanted:
            raise self._err("not connected; call connect() first")
        c = self.client
        if c.ensure_connected():
            c.wait_for(self.device, "CONNECTION", timeout=self.settings["connect_timeout_s"],
                       what="its CONNECTION property after reconnecting")
        prop = c.get(self.device, "CONNECTION")
        if prop is None:
            try:
                prop = c.wait_for(self.device, "CONNECTION", timeout=self.settings["timeout_s"])
            except IndiError:
                raise self._err(f"the device has vanished from indiserver at {c.address} "
                                f"(its driver died or was unloaded)") from None
        if prop.values.get("CONNECT") != "On":
            if self.settings["reconnect_device"]:
                log.warning("%s reports itself disconnected; reconnecting (its state was lost)", self.device)
                self._connect_device()
                self._after_connect()
                self._on_device_reset()
                return
            raise self._err("the device reports itself disconnected (its driver was probably restarted "
                            "by indiserver, losing its state); call connect() again")

    def _on_device_reset(self) -> None:
        pass

    def _need(self, name: str, timeout: float | None = None) -> IndiProperty:
        return self.client.wait_for(self.device, name, timeout=timeout or self.settings["timeout_s"])

    def _maybe(self, name: str) -> IndiProperty | None:
        return self.client.get(self.device, name)

    def disconnect(self) -> None:
        """Close the connection to the server (the device stays connected in INDI)."""
        self._wanted = False
        self.client.close()

    def _send_and_confirm(self, name: str, kind: str, values: dict, timeout: float | None = None,
                          done=None, what: str | None = None) -> IndiProperty:
        """Send a new vector, then wait until the driver answers it: state
        Ok/Idle (or ``done(prop)``); raises on Alert."""
        c = self.client
        start = self._need(name).generation
        getattr(c, f"send_{kind}")(self.device, name, values)
        what = what or f"{name} {values}"

        def answered(p: IndiProperty) -> bool:
            if p.generation <= start:
                return False
            if p.state == "Alert":
                raise self._err(f"{what} refused (Alert)" + (f": {p.message}" if p.message else "")
                                + self._recent_messages())
            return done(p) if done else p.state in ("Ok", "Idle")

        return c.wait_for(self.device, name, answered, timeout=timeout or self.settings["timeout_s"], what=what)


# ---------------------------------------------------------------------------
# Mount
# ---------------------------------------------------------------------------

class IndiMount(IndiDevice):
    """An INDI telescope (EQUATORIAL_EOD_COORD, ON_COORD_SET, TELESCOPE_PARK,
    TELESCOPE_ABORT_MOTION, TELESCOPE_TRACK_STATE, TELESCOPE_TIMED_GUIDE_NS/WE).

    Extra settings:
        altitude_limit_deg 10.0  check_target refuses targets below it
        slew_rate_deg_s    3.0   for duration estimates only
        settle_time_s      2.0   added to duration estimates
        set_site           true  send GEOGRAPHIC_COORD (the site) at connect
        elevation_m        0.0   with set_site
    """
    kind = "mount"
    default_device = "Telescope Simulator"
    EXTRA = {"altitude_limit_deg": 10.0, "slew_rate_deg_s": 3.0, "settle_time_s": 2.0,
             "set_site": True, "elevation_m": 0.0}

    def __init__(self, settings: dict | None, clock, latitude_deg: float, longitude_deg: float):
        self.latitude_deg = float(latitude_deg)
        self.longitude_deg = float(longitude_deg)
        if not (-90.0 <= self.latitude_deg <= 90.0 and -180.0 <= self.longitude_deg <= 180.0):
            raise ValueError(f"site latitude {latitude_deg} / longitude {longitude_deg} out of range")
        super().__init__(settings, clock)
        self._target: tuple[float, float] | None = None
        self._motion: str | None = None

    def _check_extra(self, s):
        if not isinstance(s["set_site"], bool):
            raise ValueError("INDI mount setting set_site must be true or false")
        if not -89.0 <= s["altitude_limit_deg"] <= 89.0:
            raise ValueError(f"INDI mount setting altitude_limit_deg must be within [-89, 89], "
                             f"got {s['altitude_limit_deg']}")
        if s["slew_rate_deg_s"] <= 0 or s["settle_time_s"] < 0:
            raise ValueError("INDI mount settings: slew_rate_deg_s must be > 0, settle_time_s >= 0")

    def _after_connect(self):
        for name in ("EQUATORIAL_EOD_COORD", "TELESCOPE_PARK", "TELESCOPE_TRACK_STATE"):
            self._need(name, self.settings["connect_timeout_s"])
        # The definition carries placeholder coordinates; wait for the first real report.
        self.client.wait_for(self.device, "EQUATORIAL_EOD_COORD", lambda p: p.sets > 0,
                             timeout=self.settings["connect_timeout_s"], what="the first position report")
        if self.settings["set_site"] and self._maybe("GEOGRAPHIC_COORD") is not None:
            self._send_and_confirm("GEOGRAPHIC_COORD", "number",
                                   {"LAT": self.latitude_deg, "LONG": self.longitude_deg % 360.0,
                                    "ELEV": self.settings["elevation_m"]}, what="setting the site")

    def _on_device_reset(self):
        self._target, self._motion = None, None

    def info(self) -> dict:
        d = super().info()
        drv = self._maybe("DRIVER_INFO")
        if drv:
            d.update(driver=drv.values.get("DRIVER_EXEC"), version=drv.values.get("DRIVER_VERSION"))
        return d

    def _lst(self) -> float:
        return _lst_deg(self._clock.now(), self.longitude_deg)

    def _parked(self) -> bool:
        park = self._maybe("TELESCOPE_PARK")
        return bool(park and park.values.get("PARK") == "On" and park.state != "Busy")

    def status(self) -> dict:
        with self._lock:
            self._ready()
            eq = self._need("EQUATORIAL_EOD_COORD")
            park = self._maybe("TELESCOPE_PARK")
            track = self._maybe("TELESCOPE_TRACK_STATE")
            pier = self._maybe("TELESCOPE_PIER_SIDE")
            target_prop = self._maybe("TARGET_EOD_COORD")
        now = self._clock.now()
        ra = (eq.values.get("RA", 0.0) * 15.0) % 360.0
        dec = eq.values.get("DEC", 0.0)
        ha = _wrap180(_lst_deg(now, self.longitude_deg) - ra)
        alt, az = _alt_az(ha, dec, self.latitude_deg)
        parking = bool(park and park.state == "Busy") or self._motion == "park"
        if eq.state == "Busy":
            state = "parking" if parking else "slewing"
        elif eq.state == "Alert":
            state = "error"
        elif park is not None and park.values.get("PARK") == "On" and park.state != "Busy":
            state = "parked"
        elif park is not None and park.state == "Busy":
            state = "parking"
        elif track is not None and track.values.get("TRACK_ON") == "On":
            state = "tracking"
        else:
            state = "stopped"
        if state not in ("slewing", "parking"):
            self._motion = None
        target = self._target
        if target is None and target_prop is not None and state == "slewing":
            target = (target_prop.values.get("RA", 0.0) * 15.0, target_prop.values.get("DEC", 0.0))
        remaining = 0.0
        if state in ("slewing", "parking"):
            goal = target if state == "slewing" and target else self._park_radec(now)
            dist = _separation_deg(ra, dec, *goal) if goal else 0.0
            remaining = max(0.5, dist / self.settings["slew_rate_deg_s"] + 0.5)
        if pier is not None and pier.values.get("PIER_EAST") == "On":
            pier_side = "east"
        elif pier is not None and pier.values.get("PIER_WEST") == "On":
            pier_side = "west"
        else:
            pier_side = "east" if ha >= 0 else "west"
        return {
            "timestamp": now, "state": state, "ra_deg": ra, "dec_deg": dec, "ha_deg": ha,
            "alt_deg": alt, "az_deg": az, "pier_side": pier_side,
            "target_ra_deg": target[0] if target else None,
            "target_dec_deg": target[1] if target else None,
            "tracking": state == "tracking", "parked": state == "parked",
            "slew_remaining_s": remaining,
        }

    def _park_radec(self, now: float) -> tuple[float, float] | None:
        pos = self._maybe("TELESCOPE_PARK_POSITION")
        if pos is None or "PARK_HA" not in pos.values:
            return None
        ha = pos.values["PARK_HA"] * 15.0 if abs(pos.values["PARK_HA"]) <= 24 else pos.values["PARK_HA"]
        return ((_lst_deg(now, self.longitude_deg) - ha) % 360.0, pos.values.get("PARK_DEC", 90.0))

    def unpark(self) -> None:
        with self._lock:
            self._ready()
            park = self._need("TELESCOPE_PARK")
            if park.state == "Busy":
                raise self._err("cannot unpark while parking; stop() first or wait for the park to finish")
            if park.values.get("UNPARK") == "On" and park.state == "Ok":
                return
            if park.values.get("PARK") != "On":
                return
            self._send_and_confirm("TELESCOPE_PARK", "switch", {"UNPARK": True},
                                   done=lambda p: p.values.get("UNPARK") == "On" and p.state == "Ok",
                                   what="unpark")

    def check_target(self, ra_deg: float, dec_deg: float) -> tuple[float, float]:
        ra_deg, dec_deg = float(ra_deg), float(dec_deg)
        if not (math.isfinite(ra_deg) and math.isfinite(dec_deg)) or not -90.0 <= dec_deg <= 90.0:
            raise IndiError(f"invalid target RA {ra_deg} Dec {dec_deg} (Dec must be within [-90, 90])")
        ra_deg %= 360.0
        alt, _ = _alt_az(self._lst() - ra_deg, dec_deg, self.latitude_deg)
        limit = self.settings["altitude_limit_deg"]
        if alt < limit:
            raise IndiError(f"target RA {ra_deg:.3f} Dec {dec_deg:+.3f} is at altitude {alt:.1f} deg, "
                            f"below the limit of {limit:.1f} deg")
        return ra_deg, dec_deg

    def _estimate(self, ra: float, dec: float) -> float:
        eq = self._need("EQUATORIAL_EOD_COORD")
        dist = _separation_deg(eq.values.get("RA", 0.0) * 15.0, eq.values.get("DEC", 0.0), ra, dec)
        return dist / self.settings["slew_rate_deg_s"] + self.settings["settle_time_s"]

    def slew_to(self, ra_deg: float, dec_deg: float) -> float:
        """Start a slew (tracking on arrival); returns the expected duration in s."""
        with self._lock:
            ra_deg, dec_deg = self.check_target(ra_deg, dec_deg)
            self._ready()
            if self._parked():
                raise self._err("cannot slew: mount is parked; unpark() first")
            self._send_and_confirm("ON_COORD_SET", "switch", {"TRACK": True},
                                   done=lambda p: p.values.get("TRACK") == "On", what="ON_COORD_SET TRACK")
            expected = self._estimate(ra_deg, dec_deg)
            self._target = (ra_deg, dec_deg)
            self._send_and_confirm("EQUATORIAL_EOD_COORD", "number", {"RA": ra_deg / 15.0, "DEC": dec_deg},
                                   done=lambda p: p.state in ("Busy", "Ok"),
                                   what=f"slew to RA {ra_deg:.3f} Dec {dec_deg:+.3f}")
            self._motion = "slew"
            return expected

    def park(self) -> float:
        with self._lock:
            self._ready()
            if self._parked():
                return 0.0
            park_pos = self._park_radec(self._clock.now())
            expected = (self._estimate(*park_pos) if park_pos else 60.0)
            self._send_and_confirm("TELESCOPE_PARK", "switch", {"PARK": True},
                                   done=lambda p: p.state in ("Busy", "Ok"), what="park")
            self._motion = "park"
            return expected

    def stop(self) -> None:
        """Halt both axes, tracking off (as simulators.mount). Aborts a slew or
        park; harmless when parked (the mount stays parked)."""
        with self._lock:
            self._ready()
            if self._parked():
                return
            was_moving = self._need("EQUATORIAL_EOD_COORD").state == "Busy"
            self._send_and_confirm("TELESCOPE_ABORT_MOTION", "switch", {"ABORT": True},
                                   done=lambda p: p.state != "Busy", what="abort motion")
            self._motion = None
            # Let the coordinate vector leave Busy so status() reads "stopped"/"tracking".
            try:
                self.client.wait_for(self.device, "EQUATORIAL_EOD_COORD", lambda p: p.state != "Busy",
                                     timeout=self.settings["timeout_s"], what="motion to stop")
            except IndiError as exc:
                raise self._err(f"abort sent but the mount still reports motion: {exc}") from None
            if was_moving and self._maybe("TELESCOPE_TRACK_STATE") is not None:
                # INDI drivers restore the tracking of before the slew a moment after an abort.
                try:
                    self.client.wait_for(self.device, "TELESCOPE_TRACK_STATE",
                                         lambda p: p.values.get("TRACK_ON") == "On", timeout=1.0)
                except IndiError:
                    pass
            track = self._maybe("TELESCOPE_TRACK_STATE")
            if track is not None and track.values.get("TRACK_ON") == "On":
                self._send_and_confirm("TELESCOPE_TRACK_STATE", "switch", {"TRACK_OFF": True},
                                       done=lambda p: p.values.get("TRACK_OFF") == "On", what="tracking off")

    def set_tracking(self, on: bool) -> None:
        with self._lock:
            self._ready()
            if on and self._parked():
                raise self._err("cannot turn tracking on: mount is parked")
            el = "TRACK_ON" if on else "TRACK_OFF"
            self._send_and_confirm("TELESCOPE_TRACK_STATE", "switch", {el: True},
                                   # INDI reports tracking in progress as Busy
                                   done=lambda p: p.values.get(el) == "On",
                                   what=f"tracking {'on' if on else 'off'}")

    def guide(self, ra_ms: float, dec_ms: float) -> None:
        """Timed guide pulses (ms, signed): +RA is east (RA grows), +Dec is north."""
        ra_ms, dec_ms = float(ra_ms), float(dec_ms)
        if not (math.isfinite(ra_ms) and math.isfinite(dec_ms)):
            raise IndiError(f"invalid guide pulse ra_ms={ra_ms} dec_ms={dec_ms}")
        with self._lock:
            self._ready()
            track = self._maybe("TELESCOPE_TRACK_STATE")
            if not track or track.values.get("TRACK_ON") != "On":
                raise self._err("cannot guide: mount is not tracking")
            if ra_ms:
                el = "TIMED_GUIDE_E" if ra_ms > 0 else "TIMED_GUIDE_W"
                self.client.send_number(self.device, "TELESCOPE_TIMED_GUIDE_WE",
                                        {el: abs(ra_ms), ("TIMED_GUIDE_W" if ra_ms > 0 else "TIMED_GUIDE_E"): 0})
            if dec_ms:
                el = "TIMED_GUIDE_N" if dec_ms > 0 else "TIMED_GUIDE_S"
                self.client.send_number(self.device, "TELESCOPE_TIMED_GUIDE_NS",
                                        {el: abs(dec_ms), ("TIMED_GUIDE_S" if dec_ms > 0 else "TIMED_GUIDE_N"): 0})

    def close(self) -> None:
        self.disconnect()


# ---------------------------------------------------------------------------
# Camera
# ---------------------------------------------------------------------------

IMAGE_TYPES = {"science": "FRAME_LIGHT", "light": "FRAME_LIGHT", "focus": "FRAME_LIGHT",
               "pointing": "FRAME_LIGHT", "flat": "FRAME_FLAT", "dark": "FRAME_DARK", "bias": "FRAME_BIAS"}


class IndiCamera(IndiDevice):
    """An INDI CCD: CCD_EXPOSURE starts an exposure, the frame arrives as a
    FITS BLOB in CCD1 and is written atomically to the requested path with the
    caller's header keys merged over the driver's.

    Extra settings:
        readout_time      2.0   seconds; the actor's first poll comes after exptime + this
        blob_timeout_s    30.0  wall seconds after the shutter closes to wait for the frame
        blob_property     "CCD1"
    """
    kind = "camera"
    default_device = "CCD Simulator"
    EXTRA = {"readout_time": 2.0, "blob_timeout_s": 30.0, "blob_property": "CCD1"}

    def __init__(self, settings: dict | None, clock, name: str = "camera"):
        self.name = name
        super().__init__(settings, clock)
        self._state = "idle"
        self._exp: dict | None = None
        self._error: str | None = None
        self._progress_at_abort = 0.0
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()

    def _check_extra(self, s):
        if s["readout_time"] < 0 or s["blob_timeout_s"] <= 0:
            raise ValueError("INDI camera settings: readout_time must be >= 0, blob_timeout_s > 0")
        if not isinstance(s["blob_property"], str) or not s["blob_property"]:
            raise ValueError("INDI camera setting blob_property must be a property name")

    def _after_connect(self):
        self._need("CCD_EXPOSURE", self.settings["connect_timeout_s"])
        self._need(self.settings["blob_property"], self.settings["connect_timeout_s"])
        self.client.enable_blob(self.device, "Also")
        for name, element in (("UPLOAD_MODE", "UPLOAD_CLIENT"), ("CCD_TRANSFER_FORMAT", "FORMAT_FITS"),
                              ("CCD_COMPRESSION", "INDI_DISABLED")):
            prop = self._maybe(name)
            if prop is not None and element in prop.values and prop.values[element] != "On":
                self._send_and_confirm(name, "switch", {element: True},
                                       done=lambda p, e=element: p.values.get(e) == "On", what=f"{name} {element}")

    def info(self) -> dict:
        d = super().info()
        d["name"] = self.name
        ccd = self._maybe("CCD_INFO")
        if ccd:
            def known(key):      # drivers leave 0 until they know (the simulator until its first frame)
                v = ccd.values.get(key)
                return v if v else None
            d.update(width=known("CCD_MAX_X"), height=known("CCD_MAX_Y"),
                     pixel_size_um=known("CCD_PIXEL_SIZE"), bits_per_pixel=known("CCD_BITSPERPIXEL"))
        d["readout_time"] = self.settings["readout_time"]
        return d

    def start_exposure(self, exptime: float, path: str, header=None, ra_deg: float = float("nan"),
                       dec_deg: float = float("nan"), image_type: str = "science") -> None:
        """Start an exposure and return at once (the frame is received and
        written by a background thread; poll status()/collect())."""
        from observatory.imaging import as_fits_header
        exptime = float(exptime)
        if not math.isfinite(exptime) or exptime < 0:
            raise IndiError(f"{self.name}: exposure time must be >= 0 s, got {exptime}")
        if image_type not in IMAGE_TYPES:
            raise IndiError(f"{self.name}: unknown image type {image_type!r}; expected one of {sorted(IMAGE_TYPES)}")
        if not path:
            raise IndiError(f"{self.name}: no output path given")
        try:
            caller_header = as_fits_header(header)
        except (ValueError, TypeError, AttributeError) as exc:
            raise IndiError(f"{self.name}: header cannot go into FITS: {exc}") from exc
        with self._lock:
            if self._state in ("exposing", "reading"):
                raise IndiError(f"{self.name}: camera busy ({self._state})")
            self._ready()
            exp_prop = self._need("CCD_EXPOSURE")
            ftype = self._maybe("CCD_FRAME_TYPE")
            wanted = IMAGE_TYPES[image_type]
            if ftype is not None and wanted in ftype.values and ftype.values[wanted] != "On":
                self._send_and_confirm("CCD_FRAME_TYPE", "switch", {wanted: True},
                                       done=lambda p: p.values.get(wanted) == "On", what=f"frame type {wanted}")
            blob = self._need(self.settings["blob_property"])
            self._cancel = threading.Event()
            self._exp = {"exptime": exptime, "path": str(path), "image_type": image_type,
                         "header": caller_header, "start_unix": self._clock.now(), "start_wall": time.monotonic(),
                         "end_unix": None, "committed": False, "blob_gen": blob.generation,
                         "exp_gen": exp_prop.generation}
            self._error = None
            self._state = "exposing"
            try:
                self.client.send_number(self.device, "CCD_EXPOSURE", {"CCD_EXPOSURE_VALUE": max(exptime, 0.001)})
            except IndiError:
                self._state, self._exp = "idle", None
                raise
            self._thread = threading.Thread(target=self._run, args=(self._exp, self._cancel),
                                            name=f"indi-camera-{self.name}", daemon=True)
            self._thread.start()

    def _run(self, exp: dict, cancel: threading.Event) -> None:
        c, dev, blob_name = self.client, self.device, self.settings["blob_property"]
        deadline = exp["start_wall"] + exp["exptime"] + self.settings["blob_timeout_s"]
        try:
            def arrived(p: IndiProperty) -> bool:
                if cancel.is_set():
                    return True
                return p.generation > exp["blob_gen"] and any(
                    getattr(v, "data", b"") for v in p.values.values())

            def exposure_failed() -> str | None:
                p = c.get(dev, "CCD_EXPOSURE")
                if p is not None and p.generation > exp["exp_gen"] and p.state == "Alert":
                    return "the driver reported the exposure failed (Alert)" + self._recent_messages()
                conn = c.get(dev, "CONNECTION")
                if conn is None or conn.values.get("CONNECT") != "On":
                    return ("the device disconnected during the exposure (its driver was probably "
                            "restarted by indiserver)")
                return None

            while True:
                with self._lock:
                    if self._state == "exposing" and time.monotonic() >= exp["start_wall"] + exp["exptime"]:
                        self._state = "reading"
                        exp["end_unix"] = exp["start_unix"] + exp["exptime"]
                failed = exposure_failed()
                if failed:
                    raise IndiError(failed)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise IndiError(f"no frame arrived in {blob_name} within {self.settings['blob_timeout_s']:g} s "
                                    f"after the {exp['exptime']:g} s exposure")
                try:
                    prop = c.wait_for(dev, blob_name, arrived, timeout=min(left, 0.25), what=f"the frame ({blob_name})")
                    break
                except IndiError:
                    if c.link_error():
                        raise
                    continue
            if cancel.is_set():
                return
            blob = next(v for v in prop.values.values() if getattr(v, "data", b""))
            with self._lock:
                if cancel.is_set():
                    return
                exp["committed"] = True
                if exp["end_unix"] is None:
                    exp["end_unix"] = exp["start_unix"] + exp["exptime"]
                self._state = "reading"
            self._write(exp, blob)
            with self._lock:
                if self._exp is exp:
                    self._state = "complete"
        except Exception as exc:  # noqa: BLE001 - reported through status()/collect()
            with self._lock:
                if self._exp is exp and self._state != "aborted":
                    self._state = "error"
                    self._error = f"{self.name}: {exc}"
                    log.error("%s", self._error)

    def _write(self, exp: dict, blob) -> None:
        import numpy as np
        from astropy.io import fits

        from observatory.imaging import write_fits_atomic
        fmt = (blob.format or "").lower()
        if "fits" not in fmt and not fmt.endswith(".fit"):
            raise IndiError(f"frame arrived as {blob.format!r}, not FITS (set CCD_TRANSFER_FORMAT to FITS)")
        if fmt.endswith(".fz"):
            raise IndiError("frame arrived compressed (.fits.fz); disable CCD_COMPRESSION")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(blob.data)) as hdul:
                hdu = next((h for h in hdul if h.data is not None), hdul[0])
                data = np.array(hdu.data)
                header = fits.Header()
                for card in hdu.header.cards:
                    if card.keyword in _STRUCTURAL or card.keyword in ("", "COMMENT", "HISTORY"):
                        continue
                    header.append(card, end=True)
        for card in exp["header"].cards:
            if card.keyword in _STRUCTURAL:
                continue
            header[card.keyword] = (card.value, card.comment)
        header.setdefault("IMAGETYP", exp["image_type"])
        header["INDIDEV"] = (self.device, "INDI device that took the frame")
        write_fits_atomic(exp["path"], data, header)

    def status(self) -> dict:
        with self._lock:
            exp, state = self._exp, self._state
            if state == "exposing" and exp:
                progress = min(1.0, (time.monotonic() - exp["start_wall"]) / exp["exptime"]) if exp["exptime"] else 1.0
            elif state in ("reading", "complete"):
                progress = 1.0
            elif state == "aborted":
                progress = self._progress_at_abort
            else:
                progress = 0.0
            return {"state": state, "progress": progress,
                    "start_unix": exp["start_unix"] if exp else None,
                    "exptime": exp["exptime"] if exp else None,
                    "path": exp["path"] if exp else None,
                    "image_type": exp["image_type"] if exp else None,
                    "error": self._error}

    def collect(self) -> dict | None:
        with self._lock:
            exp, state = self._exp, self._state
            if state == "complete" and exp:
                result = {"path": exp["path"], "start_unix": exp["start_unix"], "end_unix": exp["end_unix"],
                          "exptime": exp["exptime"], "image_type": exp["image_type"]}
            elif state == "error":
                result = {"error": self._error}
            elif state == "aborted":
                result = {"aborted": True}
            else:
                return None
            self._state, self._exp, self._error = "idle", None, None
            return result

    def abort(self) -> bool:
        """Abort the exposure in progress (no file is written). False when
        there is nothing to abort or the frame is already being written."""
        with self._lock:
            exp = self._exp
            if exp is None or self._state not in ("exposing", "reading") or exp["committed"]:
                return False
            self._progress_at_abort = self.status()["progress"] if self._state == "exposing" else 1.0
            self._cancel.set()
            self._state = "aborted"
        try:
            if self.client.connected and self._maybe("CCD_ABORT_EXPOSURE") is not None:
                self.client.send_switch(self.device, "CCD_ABORT_EXPOSURE", {"ABORT": True})
        except IndiError as exc:
            log.warning("%s: abort not delivered: %s", self.name, exc)
        return True

    def close(self, timeout: float = 5.0) -> None:
        self.abort()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.disconnect()


# ---------------------------------------------------------------------------
# Focuser, filter wheel, dome
# ---------------------------------------------------------------------------

class IndiFocuser(IndiDevice):
    """An INDI focuser with ABS_FOCUS_POSITION.

    Extra settings:
        move_timeout_s 60.0  wall seconds for a move to finish
    """
    kind = "focuser"
    default_device = "Focuser Simulator"
    EXTRA = {"move_timeout_s": 60.0}

    def _after_connect(self):
        self._need("ABS_FOCUS_POSITION", self.settings["connect_timeout_s"])

    def limits(self) -> tuple[float, float] | None:
        return None

    def position(self) -> int:
        with self._lock:
            self._ready()
            return int(round(self._need("ABS_FOCUS_POSITION").values["FOCUS_ABSOLUTE_POSITION"]))

    def move_to(self, position: int, wait: bool = True) -> int:
        """Move to an absolute position (steps); with wait, block until the
        focuser reports it and return the position reached."""
        if isinstance(position, bool) or not isinstance(position, (int, float)) or not math.isfinite(position):
            raise IndiError(f"{self.device}: invalid focuser position {position!r}")
        target = int(round(position))
        with self._lock:
            self._ready()
            self._send_and_confirm(
                "ABS_FOCUS_POSITION", "number", {"FOCUS_ABSOLUTE_POSITION": target},
                timeout=self.settings["move_timeout_s"] if wait else self.settings["timeout_s"],
                done=(lambda p: p.state in ("Ok", "Idle")) if wait
                # Without waiting: until the move shows (Busy, or already there), so
                # that a status() right after never sees the old position at rest.
                else (lambda p: p.state == "Busy" or int(round(p.values["FOCUS_ABSOLUTE_POSITION"])) == target),
                what=f"focuser move to {target}")
            return self.position() if wait else target

    def status(self) -> dict:
        with self._lock:
            self._ready()
            p = self._need("ABS_FOCUS_POSITION")
            if p.state == "Alert":
                raise self._err("the focuser reports an error (Alert)" + self._recent_messages())
            position = int(round(p.values["FOCUS_ABSOLUTE_POSITION"]))
            return {"position": position, "moving": p.state == "Busy"}

    def close(self) -> None:
        self.disconnect()


class IndiFilterWheel(IndiDevice):
    """An INDI filter wheel (FILTER_SLOT, slots counted from 1; FILTER_NAME).

    Extra settings:
        move_timeout_s 30.0
    """
    kind = "filter wheel"
    default_device = "Filter Simulator"
    EXTRA = {"move_timeout_s": 30.0}

    def _after_connect(self):
        self._need("FILTER_SLOT", self.settings["connect_timeout_s"])

    def slot(self) -> int:
        with self._lock:
            self._ready()
            return int(round(self._need("FILTER_SLOT").values["FILTER_SLOT_VALUE"]))

    def names(self) -> list[str]:
        """The filters' names. Drivers define FILTER_NAME a moment after the slot
        property (on a busy machine, after connect() returns): wait for it once;
        a wheel without names gives []."""
        prop = self._maybe("FILTER_NAME")
        if prop is None and not getattr(self, "_names_missing", False):
            try:
                prop = self._need("FILTER_NAME")
            except IndiError:
                self._names_missing = True
        return list(prop.values.values()) if prop else []

    def status(self) -> dict:
        with self._lock:
            self._ready()
            p = self._need("FILTER_SLOT")
            if p.state == "Alert":
                raise self._err("the filter wheel reports an error (Alert)" + self._recent_messages())
            slot = int(round(p.values["FILTER_SLOT_VALUE"]))
            names = self.names()
            return {"slot": slot, "filter": names[slot - 1] if 0 < slot <= len(names) else str(slot),
                    "moving": p.state == "Busy"}

    def set_filter(self, which, wait: bool = True) -> int:
        """Select a filter by name (FILTER_NAME) or by slot number."""
        from drivers.accessory import AccessoryError, slot_for
        names = self.names()
        try:
            slot = slot_for(which, names or [str(i) for i in range(1, 100)], self.device)
        except AccessoryError as e:
            raise IndiError(str(e)) from None
        return self.set_slot(slot, wait=wait)

    def set_slot(self, n: int, wait: bool = True) -> int:
        if isinstance(n, bool) or not isinstance(n, int):
            raise IndiError(f"{self.device}: filter slot must be an integer, got {n!r}")
        with self._lock:
            self._ready()
            self._need("FILTER_SLOT")
            count = len(self.names())
            if n < 1 or (count and n > count):
                raise IndiError(f"{self.device}: no filter slot {n} (slots 1-{count or '?'})")
            self._send_and_confirm("FILTER_SLOT", "number", {"FILTER_SLOT_VALUE": n},
                                   timeout=self.settings["move_timeout_s"] if wait else self.settings["timeout_s"],
                                   done=(lambda p: p.state in ("Ok", "Idle")
                                         and int(round(p.values["FILTER_SLOT_VALUE"])) == n)
                                   if wait else (lambda p: True),
                                   what=f"filter slot {n}")
            return n

    def close(self) -> None:
        self.disconnect()


class IndiDome(IndiDevice):
    """An INDI dome or roll-off roof shutter (DOME_SHUTTER).

    ``open()``/``close()`` move the SHUTTER (aliases of open_shutter() and
    close_shutter()); ``disconnect()`` drops the server connection.

    Extra settings:
        shutter_timeout_s 120.0  wall seconds for the shutter to finish moving
        unpark_to_open    true   unpark the dome (DOME_PARK) before opening
    """
    kind = "dome"
    default_device = "Dome Simulator"
    EXTRA = {"shutter_timeout_s": 120.0, "unpark_to_open": True}

    def _check_extra(self, s):
        if not isinstance(s["unpark_to_open"], bool):
            raise ValueError("INDI dome setting unpark_to_open must be true or false")

    def _after_connect(self):
        self._need("DOME_SHUTTER", self.settings["connect_timeout_s"])

    def shutter_state(self) -> str:
        """open, closed, opening, closing, error or unknown."""
        with self._lock:
            self._ready()
            p = self._need("DOME_SHUTTER")
        if p.state == "Alert":
            return "error"
        if p.values.get("SHUTTER_OPEN") == "On":
            return "opening" if p.state == "Busy" else "open"
        if p.values.get("SHUTTER_CLOSE") == "On":
            return "closing" if p.state == "Busy" else "closed"
        return "unknown"

    def _move(self, element: str, word: str, wait: bool) -> str:
        with self._lock:
            self._ready()
            self._send_and_confirm("DOME_SHUTTER", "switch", {element: True},
                                   timeout=self.settings["shutter_timeout_s"] if wait else self.settings["timeout_s"],
                                   done=(lambda p: p.values.get(element) == "On" and p.state == "Ok")
                                   if wait else (lambda p: True),
                                   what=f"shutter {word}")
        return self.shutter_state()

    def status(self) -> dict:
        return {"shutter": self.shutter_state()}

    def open_shutter(self, wait: bool = True) -> str:
        with self._lock:
            self._ready()
            park = self._maybe("DOME_PARK")
            if self.settings["unpark_to_open"] and park and park.values.get("PARK") == "On":
                self._send_and_confirm("DOME_PARK", "switch", {"UNPARK": True},
                                       timeout=self.settings["shutter_timeout_s"],
                                       done=lambda p: p.values.get("UNPARK") == "On" and p.state == "Ok",
                                       what="dome unpark")
        return self._move("SHUTTER_OPEN", "open", wait)

    def close_shutter(self, wait: bool = True) -> str:
        return self._move("SHUTTER_CLOSE", "close", wait)

    open = open_shutter
    close = close_shutter


# ---------------------------------------------------------------------------
# Weather
# ---------------------------------------------------------------------------

# Our key -> INDI WEATHER_PARAMETERS element names tried in order.
WEATHER_ELEMENTS = {
    "ambient_c": ["WEATHER_TEMPERATURE", "WEATHER_AMBIENT_TEMPERATURE"],
    "sky_minus_ambient_c": ["WEATHER_SKY_DIFF", "WEATHER_CLOUD_SKY_DIFF", "WEATHER_SKY_TEMPERATURE_DIFF",
                            "AAG_TEMP_IR_CORR_DIFF"],
    "sky_c": ["WEATHER_SKY_TEMPERATURE", "WEATHER_CLOUD_SKY_TEMPERATURE", "AAG_CORRECTED_INFRARED_SKY"],
    "wind_kph": ["WEATHER_WIND_SPEED"],
    "gust_kph": ["WEATHER_WIND_GUST"],
    "rain": ["WEATHER_RAIN_HOUR", "WEATHER_RAIN_RATE", "WEATHER_RAIN", "WEATHER_PRECIPITATION"],
}


class IndiWeather(IndiDevice):
    """An INDI weather station (WEATHER_PARAMETERS, WEATHER_STATUS).

    ``read()`` never raises: it returns the latest sample in the format of
    simulators.weather and drivers/cloudwatcher.py (timestamp = when the
    device produced it; ``conditions`` the cloudwatcher's descriptive labels,
    or "unknown" without a sky temperature), the last
    sample with its old timestamp once the device goes silent (consumers
    judge the age), or None before the first sample. Values the device does
    not report are None (``rain`` is True when the rain element is > 0).

    Extra settings:
        elements         {our key: [INDI element names]} overriding WEATHER_ELEMENTS
        update_period_s  null   set WEATHER_UPDATE PERIOD at connect (null: leave it)
        retry_interval_s 10.0   wall seconds between reconnection attempts in read()
    """
    kind = "weather"
    default_device = "Weather Simulator"
    EXTRA = {"elements": None, "update_period_s": None, "retry_interval_s": 10.0}

    def __init__(self, settings: dict | None, clock):
        super().__init__(settings, clock)
        self._elements = {**WEATHER_ELEMENTS, **(self.settings["elements"] or {})}
        self._last: dict | None = None
        self._last_gen = None
        self._next_retry = 0.0

    def _check_extra(self, s):
        el = s["elements"]
        if el is not None:
            if not isinstance(el, dict) or set(el) - set(WEATHER_ELEMENTS) or not all(
                    isinstance(v, list) and all(isinstance(x, str) for x in v) for v in el.values()):
                raise ValueError(f"INDI weather setting elements must map some of {sorted(WEATHER_ELEMENTS)} "
                                 f"to lists of INDI element names, got {el!r}")
        p = s["update_period_s"]
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or p <= 0):
            raise ValueError(f"INDI weather setting update_period_s must be > 0 or null, got {p!r}")

    def _after_connect(self):
        self._need("WEATHER_PARAMETERS", self.settings["connect_timeout_s"])
        p = self.settings["update_period_s"]
        if p is not None and self._maybe("WEATHER_UPDATE") is not None:
            self._send_and_confirm("WEATHER_UPDATE", "number", {"PERIOD": float(p)}, what="update period")
        if self._maybe("WEATHER_REFRESH") is not None:
            self.client.send_switch(self.device, "WEATHER_REFRESH", {"REFRESH": True})

    def _pick(self, values: dict, key: str):
        for name in self._elements.get(key, []):
            v = values.get(name)
            if v is not None and isinstance(v, float) and math.isfinite(v):
                return v
        return None

    def read(self) -> dict | None:
        try:
            if time.monotonic() >= self._next_retry:
                if not self._wanted or not self.client.connected:
                    self._next_retry = time.monotonic() + self.settings["retry_interval_s"]
                    self.connect()
            prop = self.client.get(self.device, "WEATHER_PARAMETERS")
            conn = self.client.get(self.device, "CONNECTION")
        except IndiError as exc:
            log.warning("%s: %s", self.device, exc)
            return self._last
        if prop is None or conn is None or conn.values.get("CONNECT") != "On" or not prop.values:
            return self._last
        if prop.generation == self._last_gen:
            return self._last
        v = prop.values
        ambient = self._pick(v, "ambient_c")
        diff = self._pick(v, "sky_minus_ambient_c")
        if diff is None:
            sky = self._pick(v, "sky_c")
            if sky is not None and ambient is not None:
                diff = sky - ambient
        rain_v = self._pick(v, "rain")
        rain = bool(rain_v and rain_v > 0)
        wind = self._pick(v, "wind_kph")
        # The same descriptive labels as drivers/cloudwatcher.py (safety uses the values).
        if rain:
            conditions = "rain"
        elif wind is not None and wind > 50.0:
            conditions = "windy"
        elif diff is None:
            conditions = "unknown"
        elif diff > -10.0:
            conditions = "very_cloudy"
        elif diff > -25.0:
            conditions = "cloudy"
        else:
            conditions = "clear"
        wall = prop.timestamp if prop.timestamp is not None else time.time() - (time.monotonic() - prop.updated)
        stamp = self._clock.sim_at_wall(wall) if hasattr(self._clock, "sim_at_wall") else wall
        self._last = {
            "timestamp": stamp,
            "sky_minus_ambient_c": None if diff is None else round(diff, 2),
            "ambient_c": None if ambient is None else round(ambient, 2),
            "wind_kph": None if wind is None else round(wind, 1),
            "gust_kph": None if self._pick(v, "gust_kph") is None else round(self._pick(v, "gust_kph"), 1),
            "rain": rain,
            "conditions": conditions,
        }
        self._last_gen = prop.generation
        return self._last

    def close(self) -> None:
        self.disconnect()

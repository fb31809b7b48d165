"""Simulated German equatorial mount (iOptron class) driven by the shared clock.

Motion is a pure function of simulated time: a command records where the axes
were, where they are going and when they started, and ``status()`` works out
where they are *now*. There are no threads and no sleeps, so the simulator runs
at any clock speed, and an actor can poll it without blocking.

Coordinates
    The mount moves in hour angle (HA) and declination (Dec). RA, HA and local
    sidereal time (LST) are related by ``HA = LST - RA``; HA is reported in
    [-180, 180) degrees, positive west of the meridian.

States
    ``parked``   at the park position, tracking off; refuses slews until ``unpark()``.
    ``parking``  moving to the park position; becomes ``parked`` on arrival.
    ``slewing``  moving to a sky target (while tracking the sky, so the target
                 does not run away); becomes ``tracking`` on arrival + settle.
    ``tracking`` RA/Dec fixed (HA grows with sidereal time), apart from the
                 optional drift model and guide pulses.
    ``stopped``  axes fixed: HA/Dec constant, RA drifts with sidereal time.
    ``homing``   moving to the home position; becomes ``stopped`` on arrival.

Settings (all optional; unknown keys are rejected to catch typos)
    slew_rate_deg_s           3.0   each axis; axes move independently and a
                                    slew ends when the slower one arrives.
    settle_time_s             2.0   added to every slew, park and home.
    altitude_limit_deg       10.0   slews to targets below this are refused.
    park_ha_deg, park_dec_deg 0, pole   iOptron "zero position": counterweight
                                    down, optics at the celestial pole of the
                                    site's hemisphere (+90 north, -90 south).
                                    Always above the horizon away from the
                                    equator, and on no side of the meridian.
    home_ha_deg, home_dec_deg 0, pole   same as park by default, like iOptron.
    drift_ra_arcsec_per_min   0.0   tracking error while tracking (RA-axis
    drift_dec_arcsec_per_min  0.0   arcsec, i.e. multiply RA by cos(Dec) for sky).
    model, firmware                 strings reported by ``connect()``.

Guiding
    ``guide(ra_ms, dec_ms)`` applies pulses at 0.5 x sidereal rate
    (7.52 arcsec of axis angle per second of pulse). Positive ``ra_ms`` moves the
    pointing to larger RA (east), positive ``dec_ms`` to larger Dec (north);
    negative values move the other way. Pulses are applied instantly: they last
    at most seconds, far below anything the simulation resolves.

Persistence
    The mount is hardware: its state outlives the process that drives it. With
    ``state_file`` the state is written (JSON, temp file + ``os.replace``) on
    every command and read back at construction, so a new instance with the same
    file and clock reports the same position, including a slew in progress. A
    corrupt or unreadable file is moved aside to ``<name>.corrupt``, logged as a
    warning, and the mount starts parked: on real hardware a controller that
    lost its memory would re-home and park before trusting any position.

Simplifications: axes take the shortest way round (no cable-wrap or meridian
flip logic), the altitude limit is checked for slew targets only, and
acceleration is ignored.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from observatory.clock import SimClock

log = logging.getLogger(__name__)

# Earth's rotation relative to the stars, in degrees of hour angle per second.
SIDEREAL_RATE_DEG_S = 360.98564736629 / 86400.0
GUIDE_RATE_FACTOR = 0.5
STATE_FILE_VERSION = 1

STATES = ("parked", "parking", "slewing", "tracking", "stopped", "homing")
MOVING_STATES = ("parking", "slewing", "homing")
# What each motion becomes when it arrives.
_ARRIVAL_STATE = {"slewing": "tracking", "parking": "parked", "homing": "stopped"}

DEFAULT_SETTINGS = {
    "slew_rate_deg_s": 3.0,
    "settle_time_s": 2.0,
    "altitude_limit_deg": 10.0,
    "park_ha_deg": 0.0,
    "park_dec_deg": None,  # None: the celestial pole of the site's hemisphere
    "home_ha_deg": 0.0,
    "home_dec_deg": None,
    "drift_ra_arcsec_per_min": 0.0,
    "drift_dec_arcsec_per_min": 0.0,
    "model": "iOptron CEM40 (simulated)",
    "firmware": "sim-1.0",
}


# Marks "leave the slew target as it is" in _commit, where None means "clear it".
_KEEP = object()


class MountError(RuntimeError):
    """The mount refused a command or cannot do it in its present state."""


# ---------------------------------------------------------------------------
# Astronomy helpers


def gmst_deg(unix: float) -> float:
    """Greenwich mean sidereal time in degrees (IAU 1982 expression, ~0.1 s)."""
    days = unix / 86400.0 + 2440587.5 - 2451545.0  # days since J2000.0
    centuries = days / 36525.0
    gmst = (280.46061837 + 360.98564736629 * days
            + 0.000387933 * centuries ** 2 - centuries ** 3 / 38710000.0)
    return gmst % 360.0


def local_sidereal_deg(unix: float, longitude_deg: float) -> float:
    """Local mean sidereal time in degrees; longitude positive east."""
    return (gmst_deg(unix) + longitude_deg) % 360.0


def alt_az(ha_deg, dec_deg, latitude_deg: float):
    """Altitude and azimuth (degrees, azimuth from north through east) of a
    direction given in hour angle and declination. Accepts scalars or arrays."""
    ha = np.radians(ha_deg)
    dec = np.radians(dec_deg)
    lat = np.radians(latitude_deg)
    sin_alt = np.sin(dec) * np.sin(lat) + np.cos(dec) * np.cos(lat) * np.cos(ha)
    alt = np.degrees(np.arcsin(np.clip(sin_alt, -1.0, 1.0)))
    az = np.degrees(np.arctan2(-np.cos(dec) * np.sin(ha),
                               np.sin(dec) * np.cos(lat) - np.cos(dec) * np.cos(ha) * np.sin(lat)))
    az = np.mod(az, 360.0)
    if np.ndim(alt) == 0:
        return float(alt), float(az)
    return alt, az


def _wrap180(angle_deg: float) -> float:
    """Angle folded into [-180, 180)."""
    return (angle_deg + 180.0) % 360.0 - 180.0


def _clamp_dec(dec_deg: float) -> float:
    return max(-90.0, min(90.0, dec_deg))


# ---------------------------------------------------------------------------
# Motion model


@dataclass(frozen=True)
class _Segment:
    """One stretch of mount behaviour, valid from ``t0`` until the next command.

    For ``tracking``, ``lon_deg`` is RA (the sky frame). For ``stopped`` and
    ``parked``, it is HA (the mount frame). For motions, ``frame`` says which:
    a slew moves in RA/Dec while tracking, park and home move in HA/Dec.
    Motion segments go from (``lon_deg``, ``dec_deg``) by (``delta_lon_deg``,
    ``delta_dec_deg``) at ``rate_deg_s`` per axis, then settle for ``settle_s``.
    """

    state: str
    t0: float
    lon_deg: float
    dec_deg: float
    delta_lon_deg: float = 0.0
    delta_dec_deg: float = 0.0
    rate_deg_s: float = 0.0
    settle_s: float = 0.0

    @property
    def frame(self) -> str:
        return "sky" if self.state in ("tracking", "slewing") else "mount"

    @property
    def moving(self) -> bool:
        return self.state in MOVING_STATES

    @property
    def move_s(self) -> float:
        if not self.moving or self.rate_deg_s <= 0:
            return 0.0
        return max(abs(self.delta_lon_deg), abs(self.delta_dec_deg)) / self.rate_deg_s

    @property
    def end_time(self) -> float:
        return self.t0 + self.move_s + self.settle_s

    def resolved(self, t: float) -> "_Segment":
        """The segment in force at ``t``: a motion that has arrived (and settled)
        turns into its resting state, anchored at its arrival time."""
        if not self.moving or t < self.end_time:
            return self
        return _Segment(_ARRIVAL_STATE[self.state], self.end_time,
                        (self.lon_deg + self.delta_lon_deg) % 360.0,
                        _clamp_dec(self.dec_deg + self.delta_dec_deg))

    def axes_at(self, t: float) -> tuple[float, float]:
        """(lon, dec) of a motion segment at ``t``, in the segment's frame."""
        elapsed = max(0.0, t - self.t0)
        travel = self.rate_deg_s * elapsed
        lon = self.lon_deg + math.copysign(min(travel, abs(self.delta_lon_deg)), self.delta_lon_deg)
        dec = self.dec_deg + math.copysign(min(travel, abs(self.delta_dec_deg)), self.delta_dec_deg)
        return lon % 360.0, _clamp_dec(dec)


class SimulatedMount:
    """A German equatorial mount whose position is computed from the clock."""

    def __init__(self, settings: dict | None, clock: SimClock, latitude_deg: float,
                 longitude_deg: float, state_file: str | Path | None = None):
        self._clock = clock
        self.latitude_deg = float(latitude_deg)
        self.longitude_deg = float(longitude_deg)
        self.settings = self._validated_settings(settings or {})
        self.state_file = Path(state_file) if state_file is not None else None
        self._connected = False
        self._target: tuple[float, float] | None = None
        self._segment = self._rest("parked", self._clock.now(),
                                   self.settings["park_ha_deg"], self.settings["park_dec_deg"])
        if self.state_file is not None:
            if self.state_file.exists():
                self._load_state()
            else:
                self._save_state()

    # -- settings ----------------------------------------------------------

    def _validated_settings(self, given: dict) -> dict:
        unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
        if unknown:
            raise ValueError(f"unknown mount setting(s) {', '.join(unknown)} "
                             f"(known: {', '.join(DEFAULT_SETTINGS)})")
        settings = {**DEFAULT_SETTINGS, **given}
        pole = 90.0 if self.latitude_deg >= 0 else -90.0
        for key in ("park_dec_deg", "home_dec_deg"):
            if settings[key] is None:
                settings[key] = pole
        for key, value in settings.items():
            if key in ("model", "firmware"):
                settings[key] = str(value)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"mount setting {key} must be a finite number, got {value!r}")
            settings[key] = float(value)
        if settings["slew_rate_deg_s"] <= 0:
            raise ValueError(f"mount setting slew_rate_deg_s must be > 0, got {settings['slew_rate_deg_s']}")
        if settings["settle_time_s"] < 0:
            raise ValueError(f"mount setting settle_time_s must be >= 0, got {settings['settle_time_s']}")
        for key in ("park_dec_deg", "home_dec_deg"):
            if not -90.0 <= settings[key] <= 90.0:
                raise ValueError(f"mount setting {key} must be within [-90, 90], got {settings[key]}")
        return settings

    # -- public API ----------------------------------------------------------

    def connect(self) -> dict:
        self._connected = True
        return {
            "model": self.settings["model"],
            "firmware": self.settings["firmware"],
            "site": {"latitude_deg": self.latitude_deg, "longitude_deg": self.longitude_deg},
        }

    @property
    def connected(self) -> bool:
        return self._connected

    def status(self) -> dict:
        now = self._clock.now()
        seg = self._segment.resolved(now)
        ra, dec, ha = self._position(seg, now)
        alt, az = alt_az(ha, dec, self.latitude_deg)
        target = self._target
        return {
            "timestamp": now,
            "state": seg.state,
            "ra_deg": ra,
            "dec_deg": dec,
            "ha_deg": ha,
            "alt_deg": alt,
            "az_deg": az,
            # ASCOM convention: pointing west of the meridian (HA >= 0) the
            # telescope sits on the east side of the pier.
            "pier_side": "east" if ha >= 0 else "west",
            "target_ra_deg": target[0] if target else None,
            "target_dec_deg": target[1] if target else None,
            "tracking": seg.state == "tracking",
            "parked": seg.state == "parked",
            "slew_remaining_s": max(0.0, seg.end_time - now) if seg.moving else 0.0,
        }

    def unpark(self) -> None:
        """Release the park lock; the mount stays where it is, not tracking.
        Harmless when not parked; refused while still parking."""
        now = self._clock.now()
        seg = self._segment.resolved(now)
        if seg.state == "parking":
            raise MountError("cannot unpark while parking; stop() first or wait for the park to finish")
        if seg.state == "parked":
            self._commit(replace(seg, state="stopped", t0=now))

    def check_target(self, ra_deg: float, dec_deg: float) -> tuple[float, float]:
        """Raise MountError if a slew to this position would be refused now
        (whatever the park state); returns the normalised (ra, dec)."""
        ra_deg, dec_deg = float(ra_deg), float(dec_deg)
        if not (math.isfinite(ra_deg) and math.isfinite(dec_deg)) or not -90.0 <= dec_deg <= 90.0:
            raise MountError(f"invalid target RA {ra_deg} Dec {dec_deg} (Dec must be within [-90, 90])")
        ra_deg %= 360.0
        alt, _ = alt_az(self._lst(self._clock.now()) - ra_deg, dec_deg, self.latitude_deg)
        limit = self.settings["altitude_limit_deg"]
        if alt < limit:
            raise MountError(f"target RA {ra_deg:.3f} Dec {dec_deg:+.3f} is at altitude {alt:.1f} deg, "
                             f"below the limit of {limit:.1f} deg")
        return ra_deg, dec_deg

    def slew_to(self, ra_deg: float, dec_deg: float) -> float:
        """Start a slew to a sky position; returns the expected duration in
        simulated seconds (including settling). Tracking starts on arrival."""
        ra_deg, dec_deg = self.check_target(ra_deg, dec_deg)
        now = self._clock.now()
        seg = self._segment.resolved(now)
        if seg.state in ("parked", "parking"):
            raise MountError(f"cannot slew to RA {ra_deg:.3f} Dec {dec_deg:+.3f}: mount is {seg.state}"
                             + ("; unpark() first" if seg.state == "parked" else ""))
        ra_now, dec_now, _ = self._position(seg, now)
        motion = _Segment("slewing", now, ra_now, dec_now,
                          delta_lon_deg=_wrap180(ra_deg - ra_now),
                          delta_dec_deg=dec_deg - dec_now,
                          rate_deg_s=self.settings["slew_rate_deg_s"],
                          settle_s=self.settings["settle_time_s"])
        self._commit(motion, target=(ra_deg, dec_deg))
        return motion.end_time - now

    def park(self) -> float:
        """Move to the park position and lock there, tracking off; returns the
        expected duration. Idempotent: parked returns 0, parking the time left."""
        return self._move_to_fixed("parking", "parked",
                                   self.settings["park_ha_deg"], self.settings["park_dec_deg"])

    def home(self) -> float:
        """Move to the home position and stop there; returns the expected
        duration. Refused while parked or parking."""
        now = self._clock.now()
        state = self._segment.resolved(now).state
        if state in ("parked", "parking"):
            raise MountError(f"cannot home: mount is {state}" + ("; unpark() first" if state == "parked" else ""))
        return self._move_to_fixed("homing", None,
                                   self.settings["home_ha_deg"], self.settings["home_dec_deg"])

    def stop(self) -> None:
        """Halt both axes where they are now, tracking off. Aborts a slew, park
        or home; harmless when parked (the mount stays parked)."""
        now = self._clock.now()
        seg = self._segment.resolved(now)
        if seg.state in ("parked", "stopped"):
            return
        _, dec, ha = self._position(seg, now)
        self._commit(self._rest("stopped", now, ha, dec))

    def set_tracking(self, on: bool) -> None:
        """Switch sidereal tracking between ``stopped`` and ``tracking``. Refused
        while parked or moving (a slew always ends tracking)."""
        now = self._clock.now()
        seg = self._segment.resolved(now)
        wanted = "tracking" if on else "stopped"
        if seg.state == wanted:
            return
        if seg.state not in ("tracking", "stopped"):
            raise MountError(f"cannot turn tracking {'on' if on else 'off'}: mount is {seg.state}")
        ra, dec, ha = self._position(seg, now)
        self._commit(self._rest(wanted, now, ra if on else ha, dec))

    def guide(self, ra_ms: float, dec_ms: float) -> None:
        """Apply guide pulses (milliseconds, signed) at 0.5 x sidereal rate."""
        ra_ms, dec_ms = float(ra_ms), float(dec_ms)
        if not (math.isfinite(ra_ms) and math.isfinite(dec_ms)):
            raise MountError(f"invalid guide pulse ra_ms={ra_ms} dec_ms={dec_ms}")
        now = self._clock.now()
        seg = self._segment.resolved(now)
        if seg.state != "tracking":
            raise MountError(f"cannot guide: mount is {seg.state}, guiding needs tracking")
        ra, dec, _ = self._position(seg, now)
        deg_per_ms = GUIDE_RATE_FACTOR * SIDEREAL_RATE_DEG_S / 1000.0
        self._commit(self._rest("tracking", now, ra + ra_ms * deg_per_ms,
                                _clamp_dec(dec + dec_ms * deg_per_ms)))

    # -- internals -----------------------------------------------------------

    def _lst(self, unix: float) -> float:
        return local_sidereal_deg(unix, self.longitude_deg)

    def _rest(self, state: str, t0: float, lon_deg: float, dec_deg: float) -> _Segment:
        return _Segment(state, t0, lon_deg % 360.0, _clamp_dec(dec_deg))

    def _position(self, seg: _Segment, t: float) -> tuple[float, float, float]:
        """(ra, dec, ha) in degrees at ``t`` for an already resolved segment."""
        lst = self._lst(t)
        if seg.moving:
            lon, dec = seg.axes_at(t)
        elif seg.state == "tracking":
            minutes = max(0.0, t - seg.t0) / 60.0
            lon = seg.lon_deg + self.settings["drift_ra_arcsec_per_min"] * minutes / 3600.0
            dec = _clamp_dec(seg.dec_deg + self.settings["drift_dec_arcsec_per_min"] * minutes / 3600.0)
        else:
            lon, dec = seg.lon_deg, seg.dec_deg
        if seg.frame == "sky":
            ra = lon % 360.0
            ha = _wrap180(lst - ra)
        else:
            ha = _wrap180(lon)
            ra = (lst - ha) % 360.0
        return ra, dec, ha

    def _move_to_fixed(self, moving_state: str, locked_state: str | None,
                       ha_deg: float, dec_deg: float) -> float:
        now = self._clock.now()
        seg = self._segment.resolved(now)
        if locked_state is not None and seg.state == locked_state:
            return 0.0
        if seg.state == moving_state:
            return seg.end_time - now
        _, dec_now, ha_now = self._position(seg, now)
        motion = _Segment(moving_state, now, ha_now % 360.0, dec_now,
                          delta_lon_deg=_wrap180(ha_deg - ha_now),
                          delta_dec_deg=dec_deg - dec_now,
                          rate_deg_s=self.settings["slew_rate_deg_s"],
                          settle_s=self.settings["settle_time_s"])
        self._commit(motion, target=None)
        return motion.end_time - now

    def _commit(self, segment: _Segment, target=_KEEP) -> None:
        self._segment = segment
        if target is not _KEEP:
            self._target = target
        log.debug("mount %s at t=%.1f", segment.state, segment.t0)
        self._save_state()

    # -- persistence -----------------------------------------------------------

    def _state_document(self) -> dict:
        return {
            "version": STATE_FILE_VERSION,
            "segment": asdict(self._segment),
            "target": list(self._target) if self._target is not None else None,
        }

    def _save_state(self) -> None:
        if self.state_file is None:
            return
        # The simulated hardware goes on moving when its state cannot be saved
        # (a full disk): only a restart of the simulator would forget it.
        try:
            _write_json_atomic(self.state_file, self._state_document())
        except OSError as exc:
            log.warning("mount state not saved to %s: %s", self.state_file, exc)

    def _load_state(self) -> None:
        path = self.state_file
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or doc.get("version") != STATE_FILE_VERSION:
                raise ValueError(f"expected a version {STATE_FILE_VERSION} mount state document")
            raw = doc["segment"]
            segment = _Segment(
                state=str(raw["state"]), t0=float(raw["t0"]),
                lon_deg=float(raw["lon_deg"]), dec_deg=float(raw["dec_deg"]),
                delta_lon_deg=float(raw.get("delta_lon_deg", 0.0)),
                delta_dec_deg=float(raw.get("delta_dec_deg", 0.0)),
                rate_deg_s=float(raw.get("rate_deg_s", 0.0)),
                settle_s=float(raw.get("settle_s", 0.0)))
            if segment.state not in STATES:
                raise ValueError(f"unknown state {segment.state!r}")
            target = doc.get("target")
            target = (float(target[0]), float(target[1])) if target is not None else None
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            aside = path.with_name(path.name + ".corrupt")
            log.warning("mount state file %s is unreadable (%s); moved it to %s and starting parked",
                        path, exc, aside)
            try:
                os.replace(path, aside)
            except OSError as move_exc:
                log.warning("could not move %s aside: %s", path, move_exc)
            self._save_state()
            return
        self._segment = segment
        self._target = target


def _write_json_atomic(path: Path, document: dict) -> None:
    """Write so that a crash leaves either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(document, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise

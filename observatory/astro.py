"""Astronomy for the scheduler: site, sidereal time, alt/az, sun and moon.

Everything here is pure (no actors, no I/O besides astropy's bundled data).

Importing this module configures astropy for a unit with no internet: by
default astropy tries to download IERS tables and then *raises* once its
bundled predictions are more than 30 days old, which would stop the scheduler
for good on a remote site. With the settings below it uses the bundled tables
and at worst warns about degraded (arcsecond-level) accuracy.

Two speeds of computation:

* ``lst_deg`` and ``altaz`` are closed formulas in numpy (microseconds for a
  whole fields list), used on the scheduler's hot path;
* ``Ephemeris`` calls astropy (tenths of a second) once per night on a
  5-minute grid and answers later questions by interpolation.

Times are Unix seconds (UTC, as ``observatory.clock``), angles degrees.
"""
from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import astropy.units as u
from astropy.utils import data as _astropy_data
from astropy.utils import iers as _iers

# Must happen before the first time-scale conversion anywhere in the process.
_iers.conf.auto_max_age = None
_iers.conf.auto_download = False
_iers.conf.iers_degraded_accuracy = "warn"
_astropy_data.conf.allow_internet = False

from astropy.coordinates import AltAz, EarthLocation, get_body  # noqa: E402
from astropy.time import Time  # noqa: E402
from erfa import ErfaWarning  # noqa: E402

DAY_S = 86400.0
#: 2000-01-01T12:00:00 UTC, the J2000.0 epoch taken on the UTC scale (the
#: 64 s TT-UTC offset shifts precession by microarcseconds).
J2000_UNIX = 946728000.0
_DAYS_PER_CENTURY = 36525.0
_ARCSEC = 1.0 / 3600.0


@dataclass(frozen=True)
class Site:
    name: str
    latitude_deg: float
    longitude_deg: float  # east positive
    elevation_m: float

    def earth_location(self) -> EarthLocation:
        # Not Observer.at_site / EarthLocation.of_site: those download a site list.
        return EarthLocation.from_geodetic(lon=self.longitude_deg * u.deg,
                                           lat=self.latitude_deg * u.deg,
                                           height=self.elevation_m * u.m)

    @classmethod
    def from_dict(cls, d: dict) -> "Site":
        return cls(name=str(d.get("name", "site")), latitude_deg=float(d["latitude_deg"]),
                   longitude_deg=float(d["longitude_deg"]), elevation_m=float(d.get("elevation_m", 0.0)))


MAUNA_LOA = Site("Mauna Loa", 19.536, -155.576, 3400.0)


# --------------------------------------------------------------------------
# Closed formulas (numpy, no astropy objects)
# --------------------------------------------------------------------------

def lst_deg(unix, longitude_deg: float = 0.0, dut1_s: float = 0.0):
    """Local mean sidereal time in degrees [0, 360) for scalar or array ``unix``.

    GMST from the Earth rotation angle plus the IAU 2006 polynomial. UT1 is
    UTC + ``dut1_s``; leaving it 0 costs 15 arcsec per second of UT1-UTC,
    which leap seconds keep below 0.9 s (about 0.1-0.25 s in 2026-2029), so
    a few arcseconds: nothing for scheduling. This is *mean* sidereal time:
    apparent differs by the equation of the equinoxes (at most ~1.2 s of time).
    """
    du = (np.asarray(unix, dtype=float) + dut1_s - J2000_UNIX) / DAY_S
    # Splitting off the whole days keeps full precision in the 1.0027... term.
    era_turns = np.mod(du, 1.0) + 0.7790572732640 + 0.00273781191135448 * du
    t = du / _DAYS_PER_CENTURY
    poly_arcsec = 0.014506 + t * (4612.156534 + t * (1.3915817 + t * (-0.00000044 + t * -0.000029956)))
    lst = np.mod(360.0 * era_turns + poly_arcsec * _ARCSEC + longitude_deg, 360.0)
    return float(lst) if lst.ndim == 0 else lst


def precess_from_j2000(ra_deg, dec_deg, unix):
    """Mean place of date from J2000 (ICRS) RA/Dec, IAU 1976 angles, elementwise.

    Good to about 0.1 arcsec over decades; nutation (< 20 arcsec) and annual
    aberration (< 21 arcsec) are not applied.
    """
    t = (np.asarray(unix, dtype=float) - J2000_UNIX) / (DAY_S * _DAYS_PER_CENTURY)
    zeta = np.radians((2306.2181 * t + 0.30188 * t**2 + 0.017998 * t**3) * _ARCSEC)
    z = np.radians((2306.2181 * t + 1.09468 * t**2 + 0.018203 * t**3) * _ARCSEC)
    theta = np.radians((2004.3109 * t - 0.42665 * t**2 - 0.041833 * t**3) * _ARCSEC)
    ra0 = np.radians(ra_deg) + zeta
    dec0 = np.radians(dec_deg)
    a = np.cos(dec0) * np.sin(ra0)
    b = np.cos(theta) * np.cos(dec0) * np.cos(ra0) - np.sin(theta) * np.sin(dec0)
    c = np.sin(theta) * np.cos(dec0) * np.cos(ra0) + np.cos(theta) * np.sin(dec0)
    ra = np.mod(np.degrees(np.arctan2(a, b) + z), 360.0)
    dec = np.degrees(np.arcsin(np.clip(c, -1.0, 1.0)))
    return ra, dec


def altaz(ra_deg, dec_deg, unix, site: Site, *, elementwise: bool = False):
    """Geometric altitude and azimuth (degrees) of J2000 positions.

    Broadcasting: ``ra_deg`` and ``dec_deg`` broadcast together to a shape F
    (usually ``(N,)`` for N fields). By default (``elementwise=False``) the
    times form their own axes, appended after F: a scalar ``unix`` gives
    results of shape F, an array of shape ``(T,)`` gives ``F + (T,)`` (every
    field at every time). With ``elementwise=True`` all three inputs are
    broadcast with ordinary numpy rules instead (e.g. field i at time i).

    Hour-angle formula with mean sidereal time and positions precessed to the
    mean equinox of date; no refraction, nutation or aberration, so the
    result agrees with astropy's AltAz (pressure=0) to about 0.01 degree.
    Azimuth is measured from North through East, in [0, 360).
    """
    ra = np.asarray(ra_deg, dtype=float)
    dec = np.asarray(dec_deg, dtype=float)
    t = np.asarray(unix, dtype=float)
    if not elementwise and t.ndim:
        ra, dec = np.broadcast_arrays(ra, dec)
        extra = (np.newaxis,) * t.ndim
        ra, dec = ra[(...,) + extra], dec[(...,) + extra]
    ra_date, dec_date = precess_from_j2000(ra, dec, t)
    ha = np.radians(lst_deg(t, site.longitude_deg) - ra_date)
    dec_r = np.radians(dec_date)
    lat = math.radians(site.latitude_deg)
    sin_alt = math.sin(lat) * np.sin(dec_r) + math.cos(lat) * np.cos(dec_r) * np.cos(ha)
    alt = np.degrees(np.arcsin(np.clip(sin_alt, -1.0, 1.0)))
    az = np.degrees(np.arctan2(-np.cos(dec_r) * np.sin(ha),
                               math.cos(lat) * np.sin(dec_r) - math.sin(lat) * np.cos(dec_r) * np.cos(ha)))
    return alt, np.mod(az, 360.0)


def hadec_from_altaz(alt_deg: float, az_deg: float, latitude_deg: float) -> tuple[float, float]:
    """Hour angle (degrees, west positive, in (-180, 180]) and declination of a
    direction given by altitude and azimuth (east of north) at a latitude."""
    alt, az, lat = math.radians(alt_deg), math.radians(az_deg), math.radians(latitude_deg)
    sin_dec = math.sin(alt) * math.sin(lat) + math.cos(alt) * math.cos(lat) * math.cos(az)
    dec = math.asin(max(-1.0, min(1.0, sin_dec)))
    ha = math.atan2(-math.sin(az) * math.cos(alt),
                    math.sin(alt) * math.cos(lat) - math.cos(alt) * math.sin(lat) * math.cos(az))
    return (math.degrees(ha) + 180.0) % 360.0 - 180.0, math.degrees(dec)


# Dice-9: the centre, the four diagonals, the four sides (in dither steps).
DITHER_PATTERN = ((0, 0), (1, 1), (-1, -1), (1, -1), (-1, 1), (1, 0), (-1, 0), (0, 1), (0, -1))


def dither_offset(index: int, step: float) -> tuple[float, float]:
    """The ``index``-th offset (east, north) of the dice-9 pattern, in units of ``step``."""
    east, north = DITHER_PATTERN[index % len(DITHER_PATTERN)]
    return east * step, north * step


def angular_separation_deg(ra1, dec1, ra2, dec2):
    """Great-circle separation in degrees (Vincenty form: exact at 0 and 180)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(x, dtype=float)) for x in (ra1, dec1, ra2, dec2))
    dra = ra2 - ra1
    num = np.hypot(np.cos(dec2) * np.sin(dra),
                   np.cos(dec1) * np.sin(dec2) - np.sin(dec1) * np.cos(dec2) * np.cos(dra))
    den = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(dra)
    return np.degrees(np.arctan2(num, den))


# --------------------------------------------------------------------------
# Sun and moon from astropy, cached on a grid
# --------------------------------------------------------------------------

@contextmanager
def _quiet_astropy():
    """Silence the stale-table notices astropy emits on every call.

    For times past the bundled IERS and leap-second tables astropy falls back
    to mean polar motion and predicted UT1 and ERFA flags a "dubious year":
    arcseconds, irrelevant for sun and moon altitudes, and otherwise repeated
    in the log on every grid build.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*polar motion.*")
        warnings.filterwarnings("ignore", category=_iers.IERSDegradedAccuracyWarning)
        warnings.filterwarnings("ignore", category=ErfaWarning)
        yield


class _Chunk:
    """One local-noon-to-local-noon day of sun and moon values on a fixed grid."""

    __slots__ = ("t0", "times", "arrays", "lists")

    def __init__(self, t0: float, times: np.ndarray, arrays: dict[str, np.ndarray]):
        self.t0 = t0
        self.times = times
        self.arrays = arrays
        # Plain lists make the scalar path several times faster than numpy indexing.
        self.lists = {k: v.tolist() for k, v in arrays.items()}


class Ephemeris:
    """Sun and moon for one site, computed with astropy on a grid and interpolated.

    The grid (``step_s``, 5 minutes by default) is built one day at a time, a
    day running from local mean noon to the next, so one night is one astropy
    computation (about 0.3 s; the first one in a process also loads the IERS
    tables). Linear interpolation on a 5-minute grid is good to about 0.005
    degree for the sun and 0.01 degree for the moon, except within a few
    degrees of the zenith or nadir, where altitude has a cusp (errors up to
    0.15 degree there, where no decision depends on it).

    Not thread-safe: give each thread (actor) its own.
    """

    def __init__(self, site: Site, step_s: float = 300.0, max_cached_days: int = 16):
        if DAY_S % step_s:
            raise ValueError(f"grid step {step_s} s must divide one day")
        self.site = site
        self.location = site.earth_location()
        self.step_s = float(step_s)
        self.max_cached_days = max_cached_days
        self._n_steps = int(DAY_S / step_s)
        # Chunk k covers [origin + k*DAY, origin + (k+1)*DAY]; origin is local mean noon.
        self._origin = (43200.0 - site.longitude_deg * 240.0) % DAY_S
        self._chunks: OrderedDict[int, _Chunk] = OrderedDict()
        self._crossings: dict[tuple[int, float], list[tuple[float, bool]]] = {}

    # ---- public queries -------------------------------------------------

    def sun_alt(self, unix):
        """Sun's geometric altitude (degrees, no refraction), scalar or array."""
        return self._interp("sun_alt", unix)

    def sun_az(self, unix):
        """Sun's azimuth (degrees east of north, 0 to 360), scalar or array: within
        0.01 degree in twilight; the grid's interpolation is off by up to 1.5
        degree near the nadir, where the azimuth turns fast."""
        return self._interp("sun_az", unix) % 360.0

    def moon_alt(self, unix):
        """Moon's topocentric geometric altitude (degrees), scalar or array."""
        return self._interp("moon_alt", unix)

    def moon_radec(self, unix):
        """Moon's topocentric RA, Dec (degrees; GCRS, i.e. ICRS-aligned)."""
        ra = self._interp("moon_ra", unix)
        return (ra % 360.0), self._interp("moon_dec", unix)

    def moon_illumination(self, unix):
        """Illuminated fraction of the moon's disc, 0 (new) to 1 (full)."""
        return self._interp("moon_illum", unix)

    def dark_interval(self, unix: float, horizon_deg: float = -18.0,
                      max_search_days: int = 2) -> tuple[float, float]:
        """The interval with the sun below ``horizon_deg`` containing ``unix``.

        If the sun is above the horizon at ``unix``, the next such interval.
        Boundaries are found on the grid and refined against exact astropy
        altitudes (to well under a second). Where the sun does not cross the
        horizon within ``max_search_days`` (polar night) the interval is cut
        there; where it does not set within that time, ValueError.
        """
        unix = float(unix)
        # The state at ``unix`` comes from the refined crossings where there are
        # any in this day, so that it agrees with the returned boundaries.
        previous = self._previous_crossing(unix, horizon_deg, 0)
        dark_now = previous[1] if previous else self.sun_alt(unix) < horizon_deg
        if dark_now:
            if previous is None:
                previous = self._previous_crossing(unix, horizon_deg, max_search_days)
            start = previous[0] if previous else unix - max_search_days * DAY_S
            return start, self._next_crossing(unix, horizon_deg, max_search_days, setting=False)
        start = self._next_crossing(unix, horizon_deg, max_search_days, setting=True)
        if start is None:
            raise ValueError(f"the sun does not go below {horizon_deg} deg within "
                             f"{max_search_days} days after {_iso(unix)} at {self.site.name}")
        return start, self._next_crossing(start, horizon_deg, max_search_days, setting=False)

    def night_date(self, unix: float) -> str:
        """'YYYY-MM-DD' of the local evening on which the night containing ``unix`` began.

        Local mean solar time from the longitude, minus 12 h: from local noon to
        the next noon the date is that of the evening.
        """
        return night_date(unix, self.site.longitude_deg)

    def sun_alt_exact(self, unix):
        """Sun altitude straight from astropy (slow: tens of ms a call)."""
        unix_arr = np.atleast_1d(np.asarray(unix, dtype=float))
        alt = self._compute(unix_arr, moon=False)["sun_alt"]
        return float(alt[0]) if np.ndim(unix) == 0 else alt

    # ---- grid -----------------------------------------------------------

    def _chunk_index(self, unix: float) -> int:
        return math.floor((unix - self._origin) / DAY_S)

    def _chunk_start(self, k: int) -> float:
        return self._origin + k * DAY_S

    def _chunk(self, k: int) -> _Chunk:
        chunk = self._chunks.get(k)
        if chunk is None:
            t0 = self._chunk_start(k)
            times = t0 + self.step_s * np.arange(self._n_steps + 1)
            chunk = _Chunk(t0, times, self._compute(times, moon=True))
            self._chunks[k] = chunk
            while len(self._chunks) > self.max_cached_days:
                old, _ = self._chunks.popitem(last=False)
                for key in [key for key in self._crossings if key[0] == old]:
                    del self._crossings[key]
        else:
            self._chunks.move_to_end(k)
        return chunk

    def _compute(self, unix: np.ndarray, moon: bool) -> dict[str, np.ndarray]:
        with _quiet_astropy():
            t = Time(unix, format="unix", scale="utc")
            frame = AltAz(obstime=t, location=self.location, pressure=0 * u.hPa)
            sun = get_body("sun", t, self.location)
            sun_altaz = sun.transform_to(frame)
            # Azimuth unwrapped, like the moon's RA, for interpolation across north.
            out = {"sun_alt": sun_altaz.alt.deg, "sun_az": np.degrees(np.unwrap(sun_altaz.az.rad))}
            if moon:
                moon_c = get_body("moon", t, self.location)
                out["moon_alt"] = moon_c.transform_to(frame).alt.deg
                # Unwrapped so that linear interpolation never runs across 360 -> 0.
                out["moon_ra"] = np.degrees(np.unwrap(moon_c.ra.rad))
                out["moon_dec"] = moon_c.dec.deg
                # Our own formula: SkyCoord.separation compares the two frames'
                # per-time attributes element by element, which costs 0.2 s here.
                elongation = np.radians(angular_separation_deg(sun.ra.deg, sun.dec.deg,
                                                               moon_c.ra.deg, moon_c.dec.deg))
                sun_d, moon_d = sun.distance.au, moon_c.distance.au
                phase_angle = np.arctan2(sun_d * np.sin(elongation), moon_d - sun_d * np.cos(elongation))
                out["moon_illum"] = (1.0 + np.cos(phase_angle)) / 2.0
        return out

    def _interp(self, name: str, unix):
        if np.ndim(unix) == 0:
            unix = float(unix)
            chunk = self._chunk(self._chunk_index(unix))
            x = (unix - chunk.t0) / self.step_s
            i = min(int(x), self._n_steps - 1)
            values = chunk.lists[name]
            return values[i] + (x - i) * (values[i + 1] - values[i])
        t = np.asarray(unix, dtype=float)
        out = np.empty(t.shape)
        ks = np.floor((t - self._origin) / DAY_S).astype(np.int64)
        for k in np.unique(ks):
            mask = ks == k
            chunk = self._chunk(int(k))
            out[mask] = np.interp(t[mask], chunk.times, chunk.arrays[name])
        return out

    # ---- horizon crossings ----------------------------------------------

    def _previous_crossing(self, unix: float, horizon_deg: float, max_days: int):
        """The last (time, sun_is_setting) crossing at or before ``unix``, or None."""
        k0 = self._chunk_index(unix)
        for k in range(k0, k0 - max_days - 1, -1):
            earlier = [c for c in self._chunk_crossings(k, horizon_deg) if c[0] <= unix]
            if earlier:
                return earlier[-1]
        return None

    def _next_crossing(self, unix: float, horizon_deg: float, max_days: int, setting: bool):
        """Time of the first setting (or rising) crossing after ``unix``.

        A rising crossing not found in time is reported at the search limit
        (the night is at least that long); a setting one as None.
        """
        k0 = self._chunk_index(unix)
        for k in range(k0, k0 + max_days + 1):
            for t, is_setting in self._chunk_crossings(k, horizon_deg):
                if t > unix and is_setting == setting:
                    return t
        return None if setting else self._chunk_start(k0 + max_days + 1)

    def _chunk_crossings(self, k: int, horizon_deg: float) -> list[tuple[float, bool]]:
        """Sorted (time, sun_is_setting) pairs where the sun crosses the horizon in chunk k."""
        key = (k, float(horizon_deg))
        cached = self._crossings.get(key)
        if cached is not None:
            return cached
        chunk = self._chunk(k)
        below = chunk.arrays["sun_alt"] < horizon_deg
        idx = np.nonzero(below[1:] != below[:-1])[0]
        crossings = []
        if idx.size:
            times = self._refine(chunk.times[idx], chunk.times[idx + 1], horizon_deg)
            crossings = [(float(t), bool(below[i + 1])) for t, i in zip(times, idx)]
        self._crossings[key] = crossings
        return crossings

    def _refine(self, lo: np.ndarray, hi: np.ndarray, horizon_deg: float, parts: int = 16) -> np.ndarray:
        """Crossing times inside the brackets [lo, hi], to well under a second.

        A one-round multi-section bisection: each bracket is cut into ``parts``
        pieces, all brackets' exact altitudes come from a single astropy call
        (per-call overhead dominates, so one call with 17*k times costs about
        as much as one with k), and the crossing is interpolated inside the
        piece where the sign changes (over ~19 s the sun's altitude is linear
        to microdegrees).
        """
        frac = np.linspace(0.0, 1.0, parts + 1)
        t = lo[:, None] + (hi - lo)[:, None] * frac[None, :]
        f = self._compute(t.ravel(), moon=False)["sun_alt"].reshape(t.shape) - horizon_deg
        result = np.empty(len(lo))
        for row in range(len(lo)):
            sign_change = np.nonzero(np.signbit(f[row, 1:]) != np.signbit(f[row, :-1]))[0]
            j = int(sign_change[0]) if sign_change.size else parts - 1
            f0, f1 = f[row, j], f[row, j + 1]
            w = f0 / (f0 - f1) if f0 != f1 else 0.5
            result[row] = t[row, j] + w * (t[row, j + 1] - t[row, j])
        return result


def night_date(unix: float, longitude_deg: float) -> str:
    """'YYYY-MM-DD' of the local evening that began the night containing ``unix``."""
    local_minus_noon = float(unix) + longitude_deg * 240.0 - 43200.0
    return datetime.fromtimestamp(local_minus_noon, tz=timezone.utc).strftime("%Y-%m-%d")


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")

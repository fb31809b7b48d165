"""Simulated DSLR-class camera on the shared simulated clock.

The driver API is non-blocking like a real camera's: ``start_exposure``
returns at once, a background thread waits out the exposure and readout in
simulated time, renders a star field and writes the FITS file atomically;
the caller polls ``status()`` and picks the result up with ``collect()``.

The sky is a deterministic function of position (``SkyCatalog``), not of the
frame, so two frames a few pixels apart in pointing show the same stars
shifted: drift measurement, pointing correction and plate solving can be
tested against the true pointing, which the header carries as SIM-RA/SIM-DEC.

With the setting ``sky_model`` on, the sky background of a frame whose
header gives the site (LAT-OBS, LONG-OBS) follows the real sun and moon at
the frame's time: a dark sky brightening with airmass, moonlight after
Krisciunas & Schaefer (1991) and twilight (``SimulatedCamera.sky_brightness``).
The sun and moon come from low-precision closed formulas (``sky_geometry``),
not astropy: well under a millisecond an exposure.
"""
from __future__ import annotations

import math
import threading
import time
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from astropy.io import fits

from observatory.clock import SimClock, iso
from observatory.imaging import as_fits_header, write_fits_atomic

__all__ = ["CameraError", "SimulatedCamera", "SkyCatalog", "tan_project", "tan_offset",
           "DEFAULT_SETTINGS", "IMAGE_TYPES", "CATALOGS", "SkyGeometry", "SkyBrightness",
           "sky_geometry", "ks_airmass", "moonlight_nl", "nl_from_v_mag", "v_mag_from_nl"]

MODEL = "simulated DSLR"

DEFAULT_SETTINGS: dict = {
    "width": 5208,
    "height": 3476,
    "pixel_size_um": 4.3,
    "focal_length_mm": 85.0,
    "readout_time": 5.0,
    "bias": 2048,
    "read_noise_e": 10.0,
    "gain_e_per_adu": 1.5,
    "saturation_adu": 15000,
    "sky_e_per_s_per_px": 20.0,
    "dark_e_per_s_per_px": 0.02,
    "flat_e_per_s_per_px": 10000.0,
    "fwhm_px": 2.2,
    "star_density": 1.0,
    "zero_point_mag": 14.0,
    "limit_mag": 13.0,
    "hot_pixel_fraction": 2e-6,
    "seed": 0,
    "catalog": "random",
    "pointing_error_arcsec": 0.0,
    "pointing_error_pa_deg": None,
    "rotation_deg": 0.0,
    # Focus model (off while best_focus is None): see SimulatedCamera.psf_fwhm_px.
    "best_focus": None,
    "defocus_fwhm_per_step": 0.004,
    "focus_temp_coeff": 0.0,
    "focus_temp_ref_c": 10.0,
    # Twilight sky of 'flat' frames given SUNALT: see SimulatedCamera.twilight_rate.
    "twilight_factor_per_deg": 2.75,
    "twilight_ref_sun_alt_deg": -6.0,
    # Sky of sky frames from the sun and moon given LAT-OBS/LONG-OBS (off
    # by default): see SimulatedCamera.sky_brightness.
    "sky_model": False,
    "sky_dark_mag_arcsec2": 21.6,
    "sky_extinction_k": 0.172,
}

# Header keys the camera reads from the caller's header (see SimulatedCamera).
FOCUS_KEY, AMBTEMP_KEY, SUNALT_KEY, SUNRATE_KEY = "FOCUSPOS", "AMBTEMP", "SUNALT", "SUNRATE"
LAT_KEY, LON_KEY, ELEV_KEY = "LAT-OBS", "LONG-OBS", "ELEV-OBS"
# The twilight model's exponential is held flat above this sun altitude.
_TWILIGHT_TOP_DEG = 0.0
# Samples of the sun altitude across one flat exposure (its mean brightness).
_TWILIGHT_SAMPLES = 64
# Sky frames see twilight only with the sun above this altitude (the end of
# astronomical twilight).
_TWILIGHT_BOTTOM_DEG = -18.0
# The night-sky model is averaged over an exposure at one sample per this
# many seconds (at least 1, at most _SKY_MAX_SAMPLES).
_SKY_SAMPLE_S = 30.0
_SKY_MAX_SAMPLES = 16

# Skies the ``catalog`` setting chooses between.
CATALOGS = ("random", "tycho2")

# Frame types that see the sky; 'dark' and 'bias' keep the shutter closed.
_SKY_TYPES = frozenset({"science", "pointing", "focus"})
IMAGE_TYPES = _SKY_TYPES | {"flat", "dark", "bias"}

# Longest single wall-clock wait: bounds how late an abort or close is noticed
# and keeps a waiting thread robust to wall-clock steps.
_WAIT_SLICE_S = 0.1
# Noise is drawn in fixed row blocks, each from its own generator, so frames
# are reproducible whatever the number of worker threads.
_NOISE_BLOCK_ROWS = 256
_NOISE_THREADS = 2


class CameraError(RuntimeError):
    """A camera command cannot be carried out (busy, not connected, bad argument...)."""


# ---------------------------------------------------------------------------
# The sky


class SkyCatalog:
    """A deterministic random star catalogue covering the whole sky.

    The sky is cut into declination bands 1 degree high, each cut into
    right-ascension cells of about 1 degree wide on the sky (fewer cells
    towards the poles, so every cell is about 1 square degree). Each cell's
    stars come from a generator seeded by (seed, band, cell): a star's place
    and brightness never depend on which frame asks for it.

    Star counts follow log10 N(<m) = log10(n10) + slope (m - 10) per square
    degree (about 8 stars brighter than mag 10 per square degree, an
    all-sky average; no Milky Way), times ``density``, from ``bright_mag`` to
    ``limit_mag``.
    """

    _CACHE_CELLS = 4096

    def __init__(self, seed: int = 0, density: float = 1.0, limit_mag: float = 13.0,
                 bright_mag: float = 3.0, n10_per_sq_deg: float = 8.0, slope: float = 0.4):
        if density < 0:
            raise ValueError(f"star density must be >= 0, got {density}")
        if limit_mag <= bright_mag:
            raise ValueError(f"limit_mag {limit_mag} must be fainter than bright_mag {bright_mag}")
        self.seed = int(seed)
        self.density = float(density)
        self.limit_mag = float(limit_mag)
        self.bright_mag = float(bright_mag)
        self.slope = float(slope)
        self._per_sq_deg = density * n10_per_sq_deg * (
            10 ** (slope * (limit_mag - 10)) - 10 ** (slope * (bright_mag - 10)))
        self._cache: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def cells_in_band(band: int) -> int:
        centre_dec = -89.5 + band
        return max(1, int(round(360.0 * math.cos(math.radians(centre_dec)))))

    def _cell(self, band: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (band, k)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        n_cells = self.cells_in_band(band)
        width = 360.0 / n_cells
        sin_lo, sin_hi = math.sin(math.radians(band - 90.0)), math.sin(math.radians(band - 89.0))
        area_sq_deg = width * (sin_hi - sin_lo) * math.degrees(1.0)
        rng = np.random.default_rng([self.seed, band, k])
        n = rng.poisson(self._per_sq_deg * area_sq_deg)
        ra = (k + rng.random(n)) * width
        # Uniform in sin(dec) is uniform in area.
        dec = np.degrees(np.arcsin(sin_lo + rng.random(n) * (sin_hi - sin_lo)))
        lo, hi = 10 ** (self.slope * self.bright_mag), 10 ** (self.slope * self.limit_mag)
        mag = np.log10(lo + rng.random(n) * (hi - lo)) / self.slope
        cell = (ra, dec, mag)
        with self._lock:
            self._cache[key] = cell
            while len(self._cache) > self._CACHE_CELLS:
                self._cache.popitem(last=False)
        return cell

    def stars_near(self, ra_deg: float, dec_deg: float, radius_deg: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ra, dec, mag) arrays of at least every star within ``radius_deg``
        (whole cells are returned, so a few lie beyond)."""
        dec_lo, dec_hi = dec_deg - radius_deg, dec_deg + radius_deg
        bands = range(max(0, math.floor(dec_lo + 90.0)), min(179, math.floor(dec_hi + 90.0)) + 1)
        covers_pole = dec_hi >= 90.0 or dec_lo <= -90.0
        if not covers_pole:
            # Widest RA extent of a spherical cap around (ra, dec).
            ratio = math.sin(math.radians(radius_deg)) / math.cos(math.radians(dec_deg))
            half_ra = 180.0 if ratio >= 1.0 else math.degrees(math.asin(ratio))
        parts = []
        for band in bands:
            n_cells = self.cells_in_band(band)
            width = 360.0 / n_cells
            if covers_pole or half_ra >= 180.0:
                cells = range(n_cells)
            else:
                first = math.floor((ra_deg - half_ra) / width)
                last = math.floor((ra_deg + half_ra) / width)
                cells = sorted({c % n_cells for c in range(first, last + 1)})
            parts.extend(self._cell(band, k) for k in cells)
        if not parts:
            empty = np.empty(0)
            return empty, empty, empty
        return tuple(np.concatenate(column) for column in zip(*parts))  # type: ignore[return-value]


def tan_project(ra_deg, dec_deg, ra0_deg: float, dec0_deg: float):
    """Gnomonic (TAN) projection about (ra0, dec0).

    Returns standard coordinates (xi, eta) in degrees (xi towards east, eta
    towards north) and a mask of points on the near hemisphere (the only ones
    the projection can show).
    """
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    ra0, dec0 = math.radians(ra0_deg), math.radians(dec0_deg)
    cos_dra = np.cos(ra - ra0)
    cos_c = math.sin(dec0) * np.sin(dec) + math.cos(dec0) * np.cos(dec) * cos_dra
    front = cos_c > 1e-6
    safe = np.where(front, cos_c, 1.0)
    xi = np.cos(dec) * np.sin(ra - ra0) / safe
    eta = (math.cos(dec0) * np.sin(dec) - math.sin(dec0) * np.cos(dec) * cos_dra) / safe
    return np.degrees(xi), np.degrees(eta), front


def tan_offset(ra0_deg: float, dec0_deg: float, east_deg: float, north_deg: float
               ) -> tuple[float, float]:
    """The sky position at standard coordinates (east, north) degrees about
    (ra0, dec0): the inverse of ``tan_project`` for one point."""
    xi, eta = math.radians(east_deg), math.radians(north_deg)
    ra0, dec0 = math.radians(ra0_deg), math.radians(dec0_deg)
    denom = math.cos(dec0) - eta * math.sin(dec0)
    ra = ra0 + math.atan2(xi, denom)
    dec = math.atan2(math.sin(dec0) + eta * math.cos(dec0), math.hypot(xi, denom))
    return math.degrees(ra) % 360.0, math.degrees(dec)


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): avoids a scipy dependency.
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-x * x))


def _pixel_gaussian(offsets: np.ndarray, sigma: float) -> np.ndarray:
    """Fraction of a 1-D Gaussian falling in unit pixels centred at ``offsets``.

    Integrating over the pixel, rather than sampling the centre, keeps
    centroids unbiased and FWHMs right for barely sampled stars (2 px FWHM).
    """
    scale = 1.0 / (sigma * math.sqrt(2.0))
    return 0.5 * (_erf((offsets + 0.5) * scale) - _erf((offsets - 0.5) * scale))


# ---------------------------------------------------------------------------
# Sun, moon and the brightness of the night sky
#
# Positions: the low-precision formulas of the Astronomical Almanac (sun to
# about 0.01 degree, moon to about 0.3 degree, 1950-2050), ecliptic of date,
# taken to J2000 by removing the general precession in longitude (the slow
# motion of the ecliptic itself, 47"/century, is neglected). Checked against
# astropy's get_body in tests/test_camera_sky.py. Altitudes are geometric (no
# refraction), as the unit's SUNALT.

_UNIX_EPOCH_JD = 2440587.5
_J2000_JD = 2451545.0
_DELTA_T_S = 69.0                     # TT - UT1 in the 2020s; 69 s moves the moon 0.01 deg
_OBLIQUITY_J2000_DEG = 23.4392911
_PRECESSION_DEG_PER_CENTURY = 1.396971
_EARTH_RADIUS_KM = 6378.137
_EARTH_POLAR_RATIO = 0.99664719       # b/a of the WGS84 ellipsoid
_AU_KM = 149597870.7
_MOON_MEAN_DISTANCE_KM = 384400.0


def _sin_d(a: float) -> float:
    return math.sin(math.radians(a))


def _cos_d(a: float) -> float:
    return math.cos(math.radians(a))


def _direction(lon_deg: float, lat_deg: float) -> tuple[float, float, float]:
    cos_lat = _cos_d(lat_deg)
    return cos_lat * _cos_d(lon_deg), cos_lat * _sin_d(lon_deg), _sin_d(lat_deg)


def _rotate_x(v: tuple[float, float, float], angle_deg: float) -> tuple[float, float, float]:
    c, s = _cos_d(angle_deg), _sin_d(angle_deg)
    return v[0], c * v[1] - s * v[2], s * v[1] + c * v[2]


def _rotate_z(v: tuple[float, float, float], angle_deg: float) -> tuple[float, float, float]:
    c, s = _cos_d(angle_deg), _sin_d(angle_deg)
    return c * v[0] - s * v[1], s * v[0] + c * v[1], v[2]


def _scaled(v, k: float) -> tuple[float, float, float]:
    return v[0] * k, v[1] * k, v[2] * k


def _angle_deg(a, b) -> float:
    """Angle between two vectors (any lengths), robust at 0 and 180."""
    cross = (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])
    return math.degrees(math.atan2(math.sqrt(cross[0] ** 2 + cross[1] ** 2 + cross[2] ** 2),
                                   a[0] * b[0] + a[1] * b[1] + a[2] * b[2]))


@dataclass(frozen=True)
class SkyGeometry:
    """Where the sun and moon are for one observer, time and pointing (degrees)."""
    sun_alt_deg: float
    moon_alt_deg: float           # topocentric
    target_alt_deg: float
    moon_sep_deg: float           # topocentric moon to target
    moon_phase_deg: float         # Sun-Moon-observer angle: 0 full, 180 new
    moon_distance_km: float       # from the observer
    moon_ra_deg: float            # topocentric, J2000
    moon_dec_deg: float


def sky_geometry(unix: float, ra_deg: float, dec_deg: float, latitude_deg: float,
                 longitude_deg: float, elevation_m: float = 0.0) -> SkyGeometry:
    """The sun and moon seen from a site (geodetic, east longitude) at Unix
    time ``unix`` (UTC), and a J2000 target (ra_deg, dec_deg)."""
    d_ut = float(unix) / 86400.0 + _UNIX_EPOCH_JD - _J2000_JD
    n = d_ut + _DELTA_T_S / 86400.0                  # days from J2000.0, TT
    t = n / 36525.0
    obliquity = 23.439 - 0.0000004 * n
    to_j2000_ecliptic = -_PRECESSION_DEG_PER_CENTURY * t

    def ecliptic_of_date_to_j2000(v):
        return _rotate_x(_rotate_z(v, to_j2000_ecliptic), _OBLIQUITY_J2000_DEG)

    # Sun: geocentric, km.
    mean_lon = 280.460 + 0.9856474 * n
    g = 357.528 + 0.9856003 * n
    sun_lon = mean_lon + 1.915 * _sin_d(g) + 0.020 * _sin_d(2.0 * g)
    sun_au = 1.00014 - 0.01671 * _cos_d(g) - 0.00014 * _cos_d(2.0 * g)
    sun = _scaled(ecliptic_of_date_to_j2000(_direction(sun_lon, 0.0)), sun_au * _AU_KM)

    # Moon: geocentric, km.
    moon_lon = (218.32 + 481267.881 * t
                + 6.29 * _sin_d(135.0 + 477198.87 * t) - 1.27 * _sin_d(259.3 - 413335.36 * t)
                + 0.66 * _sin_d(235.7 + 890534.22 * t) + 0.21 * _sin_d(269.9 + 954397.74 * t)
                - 0.19 * _sin_d(357.5 + 35999.05 * t) - 0.11 * _sin_d(186.5 + 966404.03 * t))
    moon_lat = (5.13 * _sin_d(93.3 + 483202.02 * t) + 0.28 * _sin_d(228.2 + 960400.89 * t)
                - 0.28 * _sin_d(318.3 + 6003.15 * t) - 0.17 * _sin_d(217.6 - 407332.21 * t))
    parallax = (0.9508 + 0.0518 * _cos_d(135.0 + 477198.87 * t) + 0.0095 * _cos_d(259.3 - 413335.36 * t)
                + 0.0078 * _cos_d(235.7 + 890534.22 * t) + 0.0028 * _cos_d(269.9 + 954397.74 * t))
    moon = _scaled(ecliptic_of_date_to_j2000(_direction(moon_lon, moon_lat)),
                   _EARTH_RADIUS_KM / _sin_d(parallax))

    # Observer: zenith direction and geocentric position, equator of date -> J2000.
    lst = 280.46061837 + 360.98564736629 * d_ut + float(longitude_deg)     # mean sidereal time

    def equator_of_date_to_j2000(v):
        return ecliptic_of_date_to_j2000(_rotate_x(v, -obliquity))

    lat = float(latitude_deg)
    zenith = equator_of_date_to_j2000(_direction(lst, lat))
    u = math.atan(_EARTH_POLAR_RATIO * math.tan(math.radians(lat)))
    height = float(elevation_m) / (_EARTH_RADIUS_KM * 1000.0)
    rho_cos = math.cos(u) + height * _cos_d(lat)
    rho_sin = _EARTH_POLAR_RATIO * math.sin(u) + height * _sin_d(lat)
    observer = equator_of_date_to_j2000(_scaled((rho_cos * _cos_d(lst), rho_cos * _sin_d(lst), rho_sin),
                                                _EARTH_RADIUS_KM))
    moon_topo = (moon[0] - observer[0], moon[1] - observer[1], moon[2] - observer[2])
    target = _direction(float(ra_deg), float(dec_deg))

    def altitude(v):
        return 90.0 - _angle_deg(v, zenith)

    moon_to_sun = (sun[0] - moon[0], sun[1] - moon[1], sun[2] - moon[2])
    return SkyGeometry(
        sun_alt_deg=altitude(sun),
        moon_alt_deg=altitude(moon_topo),
        target_alt_deg=altitude(target),
        moon_sep_deg=_angle_deg(moon_topo, target),
        moon_phase_deg=_angle_deg(moon_to_sun, _scaled(moon_topo, -1.0)),
        moon_distance_km=math.sqrt(moon_topo[0] ** 2 + moon_topo[1] ** 2 + moon_topo[2] ** 2),
        moon_ra_deg=math.degrees(math.atan2(moon_topo[1], moon_topo[0])) % 360.0,
        moon_dec_deg=90.0 - _angle_deg(moon_topo, (0.0, 0.0, 1.0)),
    )


# Krisciunas & Schaefer (1991), PASP 103, 1033: "A model of the brightness of
# moonlight". Surface brightness in nanolamberts (nL), V band.

def nl_from_v_mag(v_mag: float) -> float:
    """Surface brightness in nL of V mag/arcsec^2 (K&S eq. 1)."""
    return 34.08 * math.exp(20.7233 - 0.92104 * float(v_mag))


def v_mag_from_nl(b_nl: float) -> float:
    """V mag/arcsec^2 of a surface brightness in nL (K&S eq. 1 inverted)."""
    return (20.7233 - math.log(float(b_nl) / 34.08)) / 0.92104


def ks_airmass(zenith_deg: float) -> float:
    """K&S eq. 3, X = (1 - 0.96 sin^2 Z)^-1/2: the airmass of a scattering
    layer, finite (5) at the horizon; Z is held at 90 below it."""
    z = min(abs(float(zenith_deg)), 90.0)
    return 1.0 / math.sqrt(1.0 - 0.96 * _sin_d(z) ** 2)


def moonlight_nl(phase_deg: float, separation_deg: float, moon_zenith_deg: float,
                 target_zenith_deg: float, k: float,
                 moon_distance_km: float = _MOON_MEAN_DISTANCE_KM) -> float:
    """Sky brightness (nL) the moon adds at a target, after K&S (1991).

    - the moon's illuminance outside the atmosphere, in foot-candles
      (eq. 8; phase angle alpha in degrees, 0 full, 180 new):
      I* = 10^(-0.4 (3.84 + 0.026 |alpha| + 4e-9 alpha^4)),
      times (mean distance / distance)^2 (K&S use the mean distance);
    - the scattering function of the angle rho between moon and target
      (eqs. 17, 18, 21), Rayleigh plus Mie:
      f(rho) = 10^5.36 (1.06 + cos^2 rho) + 10^(6.15 - rho/40),
      the Mie part being 6.2e7 / rho^2 within 10 degrees of the moon;
    - moonlight dimmed on the way down and scattered along the line of sight
      (eq. 15): B = f(rho) I* 10^(-0.4 k X(Z_moon)) (1 - 10^(-0.4 k X(Z))),
      X from ``ks_airmass``, k the extinction in mag per airmass.

    0 with the moon below the horizon (moon_zenith_deg >= 90). The
    opposition surge (up to 35% brighter within 7 degrees of full) and
    eclipses are not modelled.
    """
    if moon_zenith_deg >= 90.0:
        return 0.0
    alpha = abs(float(phase_deg))
    illuminance = 10.0 ** (-0.4 * (3.84 + 0.026 * alpha + 4e-9 * alpha ** 4))
    illuminance *= (_MOON_MEAN_DISTANCE_KM / float(moon_distance_km)) ** 2
    rho = max(float(separation_deg), 0.25)           # inside the moon's disc: its edge
    rayleigh = 10.0 ** 5.36 * (1.06 + _cos_d(rho) ** 2)
    mie = 10.0 ** (6.15 - rho / 40.0) if rho >= 10.0 else 6.2e7 / rho ** 2
    return ((rayleigh + mie) * illuminance * 10.0 ** (-0.4 * k * ks_airmass(moon_zenith_deg))
            * (1.0 - 10.0 ** (-0.4 * k * ks_airmass(target_zenith_deg))))


@dataclass(frozen=True)
class SkyBrightness:
    """The modelled sky of one exposure (``SimulatedCamera.sky_brightness``)."""
    rate: float                   # e-/s/px, mean over the exposure
    dark_rate: float              # e-/s/px of the moonless, sunless sky at that airmass
    moon_rate: float              # e-/s/px of moonlight
    twilight_rate: float          # e-/s/px of twilight
    v_mag: float                  # the total as V mag/arcsec^2 on the dark sky's scale (nan if undefined)
    geometry: SkyGeometry         # at mid-exposure


# ---------------------------------------------------------------------------
# The camera


@dataclass
class _Exposure:
    index: int
    exptime: float
    path: Path
    header: fits.Header
    ra_deg: float
    dec_deg: float
    image_type: str
    start_unix: float
    # Where the frame is really centred (the commanded pointing plus the
    # pointing error); set by start_exposure.
    true_ra_deg: float = math.nan
    true_dec_deg: float = math.nan
    # Focus position, ambient temperature, sun altitude... read from the
    # caller's header (keyword arguments of SimulatedCamera.render).
    conditions: dict = field(default_factory=dict)
    # The modelled night sky (from the header's site), set by _run.
    sky: SkyBrightness | None = None
    abort: threading.Event = field(default_factory=threading.Event)
    # Set once the file is being written: from then on abort is too late.
    committed: bool = False
    fault: str | None = None
    thread: threading.Thread | None = None

    @property
    def end_unix(self) -> float:
        return self.start_unix + self.exptime


class SimulatedCamera:
    """A simulated DSLR-class camera.

    Settings (all optional; unknown keys are refused):

    - ``width``, ``height`` (5208, 3476): frame size in pixels.
    - ``pixel_size_um`` (4.3): pixel pitch in micrometres.
    - ``focal_length_mm`` (85.0): lens focal length; with the pixel size it
      sets the pixel scale, 206.265 * pixel_size_um / focal_length_mm
      arcsec/px (10.4"/px by default, a 15 x 10 degree field).
    - ``readout_time`` (5.0): simulated seconds between the end of the
      exposure and the file being written.
    - ``bias`` (2048): bias level in ADU.
    - ``read_noise_e`` (10.0): read noise in electrons RMS.
    - ``gain_e_per_adu`` (1.5): electrons per ADU.
    - ``saturation_adu`` (15000): stored values are clipped here (14-bit-ish).
    - ``sky_e_per_s_per_px`` (20.0): sky background rate, dark-site DSLR:
      the moonless sky at the zenith with the sun below -18 degrees when
      the sky model applies (below), the rate of every sky frame otherwise.
    - ``dark_e_per_s_per_px`` (0.02): dark current.
    - ``flat_e_per_s_per_px`` (10000.0): illumination of 'flat' frames.
    - ``fwhm_px`` (2.2): FWHM of the Gaussian star images in pixels.
    - ``star_density`` (1.0): multiplies the number of stars on the sky.
    - ``zero_point_mag`` (14.0): magnitude of a star giving 1 e-/s. The
      default puts the 5-sigma limit of a 120 s frame near mag 10.5: a few
      thousand stars on a full frame (a real 85 mm lens goes deeper, but more
      stars cost rendering time and add nothing to the tests).
    - ``limit_mag`` (13.0): faintest star in the simulated sky.
    - ``hot_pixel_fraction`` (2e-6): fraction of pixels that are hot (fixed
      places per camera name and seed; 20-300 e-/s each).
    - ``seed`` (0): seeds the sky (cameras with the same seed see the same
      sky), the hot pixels, the noise and the pointing error's direction.
    - ``catalog`` ("random"): the sky. "random" is ``SkyCatalog`` (a
      deterministic random sky, ``seed``, ``star_density`` and
      ``limit_mag`` apply); "tycho2" is the real sky from astrometry.net's
      Tycho-2 index files (``observatory.catalog.Tycho2Catalog``: about 9
      stars per square degree, complete to VT ~9-10; ``star_density`` does
      not apply, ``limit_mag`` does), so frames can be plate-solved by
      ``solve-field``. A missing index raises CameraError at construction.
    - ``pointing_error_arcsec`` (0.0): a systematic pointing error, as a
      real mount's model error: every sky frame is centred this far from
      the commanded (ra, dec), in a fixed direction on the sky.
    - ``pointing_error_pa_deg`` (None): that direction, as a position angle
      (0 = north, 90 = east); None draws it once from ``seed`` (cameras with
      the same seed on one mount share it).
    - ``rotation_deg`` (0.0): camera rotation, the position angle of the
      frame's +y axis (0 = north up, 90 = east up).
    - ``best_focus`` (None): focuser position (steps) of sharpest focus;
      None turns the focus model off (stars are always ``fwhm_px`` wide).
      With a number, sky frames are rendered at the focuser position the
      caller's header gives as FOCUSPOS (none given: in focus); see
      ``psf_fwhm_px``.
    - ``defocus_fwhm_per_step`` (0.004): px of blur FWHM per step away from
      best focus.
    - ``focus_temp_coeff`` (0.0): steps per degree C the best focus moves
      with the ambient temperature (header AMBTEMP), about
      ``focus_temp_ref_c`` (10.0) where it is ``best_focus``.
    - ``twilight_factor_per_deg`` (2.75), ``twilight_ref_sun_alt_deg``
      (-6.0): the twilight sky of 'flat' frames whose header gives the sun
      altitude as SUNALT; see ``twilight_rate``. Without SUNALT a flat is
      lit at ``flat_e_per_s_per_px`` as before.
    - ``sky_model`` (False): True gives sky frames (science, pointing,
      focus) whose header has the site (LAT-OBS, LONG-OBS; ELEV-OBS, else
      0 m) the sky of the real sun and moon at the exposure's time and true
      pointing (``sky_brightness``): dark sky with airmass, moonlight after
      Krisciunas & Schaefer (1991), twilight. False, or a header without the
      site: the constant ``sky_e_per_s_per_px`` as before. Off by default
      because a bright moon is 10-60 times the dark sky, and at the default
      ``sky_e_per_s_per_px`` a 120 s frame saturates its background at
      about 8 times it (the whole full-moon night of the unit tests would).
    - ``sky_dark_mag_arcsec2`` (21.6): the V surface brightness that
      ``sky_e_per_s_per_px`` stands for (a dark site; K&S's Mauna Kea zenith
      is 21.59), so that moonlight is added on the same scale; 15-24.
    - ``sky_extinction_k`` (0.172): V extinction, mag per airmass (K&S's
      Mauna Kea value); 0-2.

    Frames: north up (+y), east left (-x) (turned by ``rotation_deg``),
    centred on the requested pointing plus the pointing error (0-based
    pixel ((width-1)/2, (height-1)/2)); the header's SIM-RA/SIM-DEC give
    that true centre. Monochrome, no Bayer pattern, no vignetting. Noise is Gaussian with the Poisson variance of the
    expected signal plus read noise.
    """

    def __init__(self, name: str, settings: Mapping | None = None, clock: SimClock | None = None):
        settings = dict(settings or {})
        unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
        if unknown:
            raise CameraError(f"{name}: unknown camera setting(s) {unknown}; "
                              f"known: {sorted(DEFAULT_SETTINGS)}")
        self.name = name
        self.settings = {**DEFAULT_SETTINGS, **settings}
        self._validate_settings()
        self.clock = clock if clock is not None else SimClock.starting_now()
        s = self.settings
        self.width, self.height = int(s["width"]), int(s["height"])
        self.pixel_scale_arcsec = 206.265 * float(s["pixel_size_um"]) / float(s["focal_length_mm"])
        if s["catalog"] == "tycho2":
            from observatory.catalog import CatalogError, shared_tycho2
            self.catalog = shared_tycho2(limit_mag=float(s["limit_mag"]))
            try:
                self.catalog.index_files()
            except CatalogError as exc:
                raise CameraError(f"{name}: catalog 'tycho2': {exc}") from exc
        else:
            self.catalog = SkyCatalog(seed=int(s["seed"]), density=float(s["star_density"]),
                                      limit_mag=float(s["limit_mag"]))
        self._pointing_error = self._make_pointing_error()
        self._name_hash = zlib.crc32(name.encode())
        self._hot_x, self._hot_y, self._hot_rate = self._make_hot_pixels()

        self._lock = threading.Lock()
        self._state = "idle"
        self._exposure: _Exposure | None = None
        self._error: str | None = None
        self._progress_at_abort = 0.0
        self._connected = False
        self._closed = False
        self._count = 0
        self._next_fault: str | None = None
        self.transparency = 1.0        # < 1 under cloud (set by fault injection in tests)
        # Includes threads of aborted exposures that may still be rendering.
        self._threads: list[threading.Thread] = []

    def _validate_settings(self) -> None:
        s = self.settings
        positive = ["width", "height", "pixel_size_um", "focal_length_mm", "gain_e_per_adu",
                    "saturation_adu", "fwhm_px"]
        non_negative = ["readout_time", "bias", "read_noise_e", "sky_e_per_s_per_px",
                        "dark_e_per_s_per_px", "flat_e_per_s_per_px", "star_density",
                        "hot_pixel_fraction", "seed"]
        for key in positive + non_negative:
            value = s[key]
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CameraError(f"{self.name}: setting {key} must be a number, got {value!r}")
            if value < 0 or (key in positive and value == 0):
                raise CameraError(f"{self.name}: setting {key} must be "
                                  f"{'> 0' if key in positive else '>= 0'}, got {value}")
        if s["width"] < 16 or s["height"] < 16:
            raise CameraError(f"{self.name}: frame {s['width']}x{s['height']} is too small")
        if s["saturation_adu"] > 65535 or s["bias"] >= s["saturation_adu"]:
            raise CameraError(f"{self.name}: need bias < saturation_adu <= 65535")
        if s["catalog"] not in CATALOGS:
            raise CameraError(f"{self.name}: setting catalog must be one of {list(CATALOGS)}, "
                              f"got {s['catalog']!r}")
        for key, nullable in (("pointing_error_arcsec", False), ("pointing_error_pa_deg", True),
                              ("rotation_deg", False)):
            value = s[key]
            if value is None and nullable:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CameraError(f"{self.name}: setting {key} must be a number, got {value!r}")
        if not 0 <= s["pointing_error_arcsec"] <= 180 * 3600 / 4:
            raise CameraError(f"{self.name}: setting pointing_error_arcsec must be within "
                              f"[0, 162000] (45 deg), got {s['pointing_error_arcsec']}")
        for key, nullable, low in (("best_focus", True, 0.0), ("defocus_fwhm_per_step", False, 0.0),
                                   ("focus_temp_coeff", False, None), ("focus_temp_ref_c", False, None),
                                   ("twilight_factor_per_deg", False, 1.0),
                                   ("twilight_ref_sun_alt_deg", False, -90.0)):
            value = s[key]
            if value is None and nullable:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CameraError(f"{self.name}: setting {key} must be a number, got {value!r}")
            if low is not None and value < low:
                raise CameraError(f"{self.name}: setting {key} must be >= {low}, got {value}")
        if s["twilight_factor_per_deg"] <= 1.0 or s["twilight_ref_sun_alt_deg"] > _TWILIGHT_TOP_DEG:
            raise CameraError(f"{self.name}: need twilight_factor_per_deg > 1 and "
                              f"twilight_ref_sun_alt_deg <= {_TWILIGHT_TOP_DEG}")
        if not isinstance(s["sky_model"], bool):
            raise CameraError(f"{self.name}: setting sky_model must be true or false, got {s['sky_model']!r}")
        for key, low, high in (("sky_dark_mag_arcsec2", 15.0, 24.0), ("sky_extinction_k", 0.0, 2.0)):
            value = s[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CameraError(f"{self.name}: setting {key} must be a number, got {value!r}")
            if not low <= value <= high:
                raise CameraError(f"{self.name}: setting {key} must be within [{low}, {high}], got {value}")

    def _make_pointing_error(self) -> tuple[float, float]:
        """(east, north) degrees of the systematic pointing error."""
        s = self.settings
        size = float(s["pointing_error_arcsec"]) / 3600.0
        pa = s["pointing_error_pa_deg"]
        if pa is None:
            pa = float(np.random.default_rng([int(s["seed"]), 7]).uniform(0.0, 360.0))
        pa = math.radians(float(pa))
        # Standard coordinates of the point `size` degrees away along a great circle.
        plane = math.degrees(math.tan(math.radians(size)))
        return plane * math.sin(pa), plane * math.cos(pa)

    # -- focus and twilight models ------------------------------------------

    def best_focus_at(self, ambient_temp_c: float | None = None) -> float | None:
        """The focuser position (steps) of sharpest focus at this ambient
        temperature (None: at ``focus_temp_ref_c``), or None when the focus
        model is off: ``best_focus + focus_temp_coeff * (T - focus_temp_ref_c)``."""
        s = self.settings
        if s["best_focus"] is None:
            return None
        best = float(s["best_focus"])
        if ambient_temp_c is not None and s["focus_temp_coeff"]:
            best += float(s["focus_temp_coeff"]) * (float(ambient_temp_c) - float(s["focus_temp_ref_c"]))
        return best

    def psf_fwhm_px(self, focus_position: float | None = None,
                    ambient_temp_c: float | None = None) -> float:
        """FWHM (px) of the stars rendered at this focuser position.

        Geometric defocus blurs a point into a disc whose diameter grows
        linearly with the distance from best focus; added in quadrature to
        the in-focus image (seeing and optics, ``fwhm_px``) it gives
        ``sqrt(fwhm_px^2 + (defocus_fwhm_per_step * |pos - best|)^2)``, a
        hyperbola in position (the V-curve), rendered as a Gaussian. Without
        the focus model or a position: ``fwhm_px``.
        """
        base = float(self.settings["fwhm_px"])
        best = self.best_focus_at(ambient_temp_c)
        if best is None or focus_position is None:
            return base
        blur = float(self.settings["defocus_fwhm_per_step"]) * abs(float(focus_position) - best)
        return math.hypot(base, blur)

    def twilight_rate(self, sun_alt_deg: float, sun_rate_deg_per_min: float = 0.0,
                      exptime: float = 0.0) -> float:
        """Sky rate (e-/s/px) of a 'flat' frame in twilight, averaged over the exposure.

        ``flat_e_per_s_per_px * twilight_factor_per_deg ** (h - twilight_ref_sun_alt_deg)``
        plus the night sky (``sky_e_per_s_per_px``), h being the sun's
        altitude (degrees; held at 0 above the horizon): the sky fades by a
        constant factor per degree of solar depression (2.75 by default,
        1.1 mag per degree), lit at ``flat_e_per_s_per_px`` when the sun is
        at ``twilight_ref_sun_alt_deg``. The sun moves at
        ``sun_rate_deg_per_min`` during the exposure (SUNRATE; negative in
        the evening), so the mean is taken along the way.
        """
        s = self.settings
        factor, ref = float(s["twilight_factor_per_deg"]), float(s["twilight_ref_sun_alt_deg"])
        h0 = float(sun_alt_deg)
        if sun_rate_deg_per_min and exptime > 0:
            t = (np.arange(_TWILIGHT_SAMPLES) + 0.5) / _TWILIGHT_SAMPLES * exptime
            h = np.minimum(h0 + float(sun_rate_deg_per_min) * t / 60.0, _TWILIGHT_TOP_DEG)
            relative = float(np.mean(factor ** (h - ref)))
        else:
            relative = factor ** (min(h0, _TWILIGHT_TOP_DEG) - ref)
        return float(s["flat_e_per_s_per_px"]) * relative + float(s["sky_e_per_s_per_px"])

    def sky_brightness(self, start_unix: float, exptime: float, ra_deg: float, dec_deg: float,
                       latitude_deg: float, longitude_deg: float, elevation_m: float = 0.0
                       ) -> SkyBrightness:
        """The sky of a sky frame pointed at J2000 (ra_deg, dec_deg), from
        ``start_unix`` for ``exptime`` seconds, at a site (degrees, east
        longitude, metres), in e-/s/px: the sum of

        - dark sky: ``sky_e_per_s_per_px * X 10^(-0.4 k (X - 1))`` (K&S eq. 2),
          X = ``ks_airmass`` of the target's zenith distance, k =
          ``sky_extinction_k``: 1 at the zenith, about 1.7 at 30 degrees
          altitude;
        - moonlight: ``moonlight_nl`` (K&S) over the dark zenith sky's
          brightness in nL (``sky_dark_mag_arcsec2`` through K&S eq. 1),
          times ``sky_e_per_s_per_px``; 0 with the moon down;
        - twilight, with the sun above -18 degrees: the flats' twilight sky
          (``twilight_rate`` without its night sky), less its value at -18
          (so it starts from 0 there), times the same airmass gradient as
          the dark sky. Uniform in azimuth: no brighter towards the sun.

        Averaged over the exposure (one sample per 30 s, at most 16).
        ``v_mag`` expresses the total on the dark sky's scale.
        """
        s = self.settings
        exptime = max(0.0, float(exptime))
        n = min(_SKY_MAX_SAMPLES, max(1, math.ceil(exptime / _SKY_SAMPLE_S)))
        dark = moon = twilight = 0.0
        for i in range(n):
            geo = sky_geometry(float(start_unix) + (i + 0.5) / n * exptime, ra_deg, dec_deg,
                               latitude_deg, longitude_deg, elevation_m)
            parts = self._sky_parts(geo)
            dark, moon, twilight = dark + parts[0] / n, moon + parts[1] / n, twilight + parts[2] / n
        mid = geo if n == 1 else sky_geometry(float(start_unix) + exptime / 2.0, ra_deg, dec_deg,
                                              latitude_deg, longitude_deg, elevation_m)
        rate = dark + moon + twilight
        zenith = float(s["sky_e_per_s_per_px"])
        v_mag = (float(s["sky_dark_mag_arcsec2"]) - 2.5 * math.log10(rate / zenith)
                 if zenith > 0 and rate > 0 else math.nan)
        return SkyBrightness(rate=rate, dark_rate=dark, moon_rate=moon, twilight_rate=twilight,
                             v_mag=v_mag, geometry=mid)

    def _sky_parts(self, geo: SkyGeometry) -> tuple[float, float, float]:
        """(dark, moon, twilight) e-/s/px of one ``SkyGeometry``."""
        s = self.settings
        zenith = float(s["sky_e_per_s_per_px"])
        k = float(s["sky_extinction_k"])
        target_zd = 90.0 - geo.target_alt_deg
        x = ks_airmass(target_zd)
        gradient = x * 10.0 ** (-0.4 * k * (x - 1.0))
        moon_nl = moonlight_nl(geo.moon_phase_deg, geo.moon_sep_deg, 90.0 - geo.moon_alt_deg,
                               target_zd, k, geo.moon_distance_km)
        moon = zenith * moon_nl / nl_from_v_mag(float(s["sky_dark_mag_arcsec2"]))
        twilight = 0.0
        if geo.sun_alt_deg > _TWILIGHT_BOTTOM_DEG:
            factor, ref = float(s["twilight_factor_per_deg"]), float(s["twilight_ref_sun_alt_deg"])
            h = min(geo.sun_alt_deg, _TWILIGHT_TOP_DEG)
            twilight = (float(s["flat_e_per_s_per_px"]) * gradient
                        * (factor ** (h - ref) - factor ** (_TWILIGHT_BOTTOM_DEG - ref)))
        return zenith * gradient, moon, twilight

    def conditions_from_header(self, header: Mapping | fits.Header | None,
                               image_type: str = "science") -> dict:
        """The ``render`` keyword arguments a caller's header asks for.

        Read only where a model uses them (so without ``best_focus`` and for
        frames other than flats nothing is read): FOCUSPOS (focuser
        position, steps) and AMBTEMP (ambient temperature, C) for sky frames
        with the focus model on; SUNALT (sun altitude at the exposure start,
        deg) and SUNRATE (deg per minute) for flats. A key that is missing
        or undefined is ignored; one that is not a finite number is a
        CameraError. With ``sky_model`` on, for sky frames: LAT-OBS and
        LONG-OBS (degrees, east positive; both or the sky stays constant)
        and ELEV-OBS (metres, else 0) as ``site``, which ``start_exposure``
        turns into the sky rate (``sky_brightness``) at the exposure's time
        and true pointing.
        """
        fits_header = header if isinstance(header, fits.Header) else as_fits_header(header)
        out: dict = {}
        if self.settings["best_focus"] is not None and image_type in _SKY_TYPES:
            out["focus_position"] = self._header_number(fits_header, FOCUS_KEY)
            if self.settings["focus_temp_coeff"]:
                out["ambient_temp_c"] = self._header_number(fits_header, AMBTEMP_KEY)
        if image_type == "flat":
            out["sun_alt_deg"] = self._header_number(fits_header, SUNALT_KEY)
            if out["sun_alt_deg"] is not None:
                out["sun_rate_deg_per_min"] = self._header_number(fits_header, SUNRATE_KEY)
        if self.settings["sky_model"] and image_type in _SKY_TYPES:
            lat = self._header_number(fits_header, LAT_KEY)
            lon = self._header_number(fits_header, LON_KEY)
            if lat is not None and lon is not None:
                if not -90.0 <= lat <= 90.0:
                    raise CameraError(f"{self.name}: header {LAT_KEY} must be within [-90, 90], got {lat}")
                elev = self._header_number(fits_header, ELEV_KEY)
                out["site"] = (lat, lon, 0.0 if elev is None else elev)
        return {k: v for k, v in out.items() if v is not None}

    def _header_number(self, header: fits.Header, key: str) -> float | None:
        value = header.get(key)
        if value is None or isinstance(value, fits.card.Undefined):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CameraError(f"{self.name}: header {key} must be a number, got {value!r}")
        return float(value)

    def true_pointing(self, ra_deg: float, dec_deg: float) -> tuple[float, float]:
        """Where a frame commanded at (ra, dec) is really centred."""
        east, north = self._pointing_error
        if east == 0.0 and north == 0.0:
            return float(ra_deg) % 360.0, float(dec_deg)
        return tan_offset(ra_deg, dec_deg, east, north)

    # -- device API ---------------------------------------------------------

    def connect(self) -> dict:
        """Connect (idempotent) and describe the camera."""
        with self._lock:
            if self._closed:
                raise CameraError(f"{self.name}: camera is closed")
            self._connected = True
        s = self.settings
        return {
            "name": self.name,
            "model": MODEL,
            "width": self.width,
            "height": self.height,
            "pixel_size_um": float(s["pixel_size_um"]),
            "focal_length_mm": float(s["focal_length_mm"]),
            "pixel_scale_arcsec": self.pixel_scale_arcsec,
            "field_deg": [self.width * self.pixel_scale_arcsec / 3600.0,
                          self.height * self.pixel_scale_arcsec / 3600.0],
            "gain_e_per_adu": float(s["gain_e_per_adu"]),
            "saturation_adu": int(s["saturation_adu"]),
            "readout_time": float(s["readout_time"]),
        }

    def start_exposure(self, exptime: float, path: str, header: Mapping | fits.Header | None,
                       ra_deg: float, dec_deg: float, image_type: str = "science") -> None:
        """Start an exposure and return at once.

        The frame, pointed at (ra_deg, dec_deg), is written to ``path`` after
        ``exptime`` + ``readout_time`` simulated seconds. Raises CameraError
        when busy, not connected, closed or given a bad argument. An earlier
        result that was never collected is dropped.
        """
        exptime = float(exptime)
        if not math.isfinite(exptime) or exptime < 0:
            raise CameraError(f"{self.name}: exposure time must be >= 0 s, got {exptime}")
        if image_type not in IMAGE_TYPES:
            raise CameraError(f"{self.name}: unknown image type {image_type!r}; "
                              f"expected one of {sorted(IMAGE_TYPES)}")
        if not path:
            raise CameraError(f"{self.name}: no output path given")
        if not (math.isfinite(ra_deg) and math.isfinite(dec_deg) and -90.0 <= dec_deg <= 90.0):
            raise CameraError(f"{self.name}: bad pointing ra={ra_deg} dec={dec_deg}")
        try:
            caller_header = as_fits_header(header)
        except (ValueError, TypeError, AttributeError) as exc:
            raise CameraError(f"{self.name}: header cannot go into FITS: {exc}") from exc
        conditions = self.conditions_from_header(caller_header, image_type)
        with self._lock:
            if self._closed:
                raise CameraError(f"{self.name}: camera is closed")
            if not self._connected:
                raise CameraError(f"{self.name}: not connected")
            if self._state in ("exposing", "reading"):
                current = self._exposure
                raise CameraError(f"{self.name}: busy ({self._state} {current.path.name if current else ''})")
            self._count += 1
            true_ra, true_dec = self.true_pointing(float(ra_deg), float(dec_deg))
            exposure = _Exposure(index=self._count, exptime=exptime, path=Path(path),
                                 header=caller_header, ra_deg=float(ra_deg) % 360.0,
                                 dec_deg=float(dec_deg), image_type=image_type,
                                 start_unix=self.clock.now(), fault=self._next_fault,
                                 true_ra_deg=true_ra, true_dec_deg=true_dec,
                                 conditions=conditions)
            self._next_fault = None
            self._exposure = exposure
            self._state = "exposing"
            self._error = None
            exposure.thread = threading.Thread(target=self._run, args=(exposure,),
                                               name=f"{self.name}-exposure-{exposure.index}",
                                               daemon=True)
            exposure.thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [exposure.thread]

    def status(self) -> dict:
        with self._lock:
            exposure, state = self._exposure, self._state
            if state == "exposing" and exposure is not None:
                progress = self._exposure_progress(exposure)
            elif state in ("reading", "complete"):
                progress = 1.0
            elif state == "aborted":
                progress = self._progress_at_abort
            else:
                progress = 0.0
            return {
                "state": state,
                "progress": progress,
                "start_unix": exposure.start_unix if exposure else None,
                "exptime": exposure.exptime if exposure else None,
                "path": str(exposure.path) if exposure else None,
                "image_type": exposure.image_type if exposure else None,
                "error": self._error,
            }

    def collect(self) -> dict | None:
        """The finished exposure's result, returning the camera to idle.

        complete -> {'path', 'start_unix', 'end_unix', 'exptime', 'image_type'}
        (end_unix is when the shutter closed); error -> {'error': message};
        aborted -> {'aborted': True}; otherwise (idle, exposing, reading) None.
        """
        with self._lock:
            exposure, state = self._exposure, self._state
            if state == "complete" and exposure is not None:
                result = {"path": str(exposure.path), "start_unix": exposure.start_unix,
                          "end_unix": exposure.end_unix, "exptime": exposure.exptime,
                          "image_type": exposure.image_type}
            elif state == "error":
                result = {"error": self._error}
            elif state == "aborted":
                result = {"aborted": True}
            else:
                return None
            self._state, self._exposure, self._error = "idle", None, None
            return result

    def abort(self) -> bool:
        """Stop the exposure in progress; no file is written.

        Returns False when there is nothing to abort, or when the file is
        already being written (the exposure then completes normally).
        """
        with self._lock:
            exposure = self._exposure
            if exposure is None or self._state not in ("exposing", "reading") or exposure.committed:
                return False
            self._progress_at_abort = (self._exposure_progress(exposure)
                                       if self._state == "exposing" else 1.0)
            exposure.abort.set()
            self._state = "aborted"
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Abort any exposure and stop its thread; the camera cannot be used again."""
        self.abort()
        with self._lock:
            self._closed = True
            self._connected = False
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def inject_fault(self, kind: str) -> None:
        """Make the next exposure fail, for tests of the layers above.

        'error': the readout fails (state 'error', no file); 'hang': the
        readout never finishes (state stays 'reading' until abort or close).
        """
        if kind not in ("error", "hang"):
            raise CameraError(f"{self.name}: unknown fault {kind!r}; expected 'error' or 'hang'")
        with self._lock:
            self._next_fault = kind

    # -- exposure thread ----------------------------------------------------

    def _exposure_progress(self, exposure: _Exposure) -> float:
        if exposure.exptime <= 0:
            return 1.0
        return min(1.0, max(0.0, (self.clock.now() - exposure.start_unix) / exposure.exptime))

    def _wait_until(self, sim_unix: float, abort: threading.Event) -> bool:
        """Wait until simulated time ``sim_unix``; False if aborted first."""
        while not abort.is_set():
            remaining = self.clock.wall_at_sim(sim_unix) - time.time()
            if remaining <= 0:
                return True
            abort.wait(min(remaining, _WAIT_SLICE_S))
        return False

    def _run(self, exposure: _Exposure) -> None:
        try:
            # Rendered while "exposing", so at moderate clock speeds the
            # frame is ready when the simulated readout ends.
            conditions = dict(exposure.conditions)
            site = conditions.pop("site", None)
            if site is not None:
                exposure.sky = self.sky_brightness(exposure.start_unix, exposure.exptime,
                                                   exposure.true_ra_deg, exposure.true_dec_deg, *site)
                conditions["sky_e_per_s_per_px"] = exposure.sky.rate
            data = self.render(exposure.exptime, exposure.true_ra_deg, exposure.true_dec_deg,
                               exposure.image_type, noise_seed=exposure.index, **conditions)
            if not self._wait_until(exposure.end_unix, exposure.abort):
                return
            with self._lock:
                if exposure.abort.is_set():
                    return
                self._state = "reading"
            readout_end = exposure.end_unix + float(self.settings["readout_time"])
            if not self._wait_until(readout_end, exposure.abort):
                return
            if exposure.fault == "hang":
                while not exposure.abort.wait(_WAIT_SLICE_S):
                    pass
                return
            if exposure.fault == "error":
                raise CameraError(f"{self.name}: simulated readout failure")
            with self._lock:
                if exposure.abort.is_set():
                    return
                exposure.committed = True
            write_fits_atomic(exposure.path, data, self._header(exposure))
            with self._lock:
                if self._exposure is exposure:
                    self._state = "complete"
        except Exception as exc:  # the thread must report, never die silently
            with self._lock:
                if self._exposure is exposure and not exposure.abort.is_set():
                    self._state = "error"
                    self._error = f"{type(exc).__name__}: {exc}"

    def _header(self, exposure: _Exposure) -> fits.Header:
        s = self.settings
        header = exposure.header.copy()
        own = {
            "DATE-OBS": (iso(exposure.start_unix), "UTC start of exposure"),
            "MJD-OBS": (exposure.start_unix / 86400.0 + 40587.0, "MJD (UTC) start of exposure"),
            "EXPTIME": (exposure.exptime, "[s] exposure time"),
            "IMAGETYP": (exposure.image_type, "frame type"),
            "INSTRUME": (MODEL, "camera model"),
            "CAMERA": (self.name, "camera name"),
            "XPIXSZ": (float(s["pixel_size_um"]), "[um] pixel width"),
            "YPIXSZ": (float(s["pixel_size_um"]), "[um] pixel height"),
            "XBINNING": (1, "binning factor"),
            "YBINNING": (1, "binning factor"),
            "FOCALLEN": (float(s["focal_length_mm"]), "[mm] focal length"),
            "PIXSCALE": (round(self.pixel_scale_arcsec, 6), "[arcsec/px] nominal pixel scale"),
            "GAIN": (float(s["gain_e_per_adu"]), "[e-/ADU] conversion gain"),
            "RDNOISE": (float(s["read_noise_e"]), "[e-] read noise"),
            "BIASLEV": (int(s["bias"]), "[ADU] bias level"),
            "SATURATE": (int(s["saturation_adu"]), "[ADU] saturation level"),
            "SIM-RA": (exposure.true_ra_deg, "[deg] TRUE pointing RA (simulation truth)"),
            "SIM-DEC": (exposure.true_dec_deg, "[deg] TRUE pointing Dec (simulation truth)"),
            "SIM-FWHM": (self.psf_fwhm_px(exposure.conditions.get("focus_position"),
                                          exposure.conditions.get("ambient_temp_c")),
                         "[px] simulated PSF FWHM"),
            "SIM-SEED": (int(s["seed"]), "simulated sky seed"),
        }
        if float(s["pointing_error_arcsec"]) > 0:
            own["SIM-CRA"] = (exposure.ra_deg, "[deg] commanded RA (before pointing error)")
            own["SIM-CDEC"] = (exposure.dec_deg, "[deg] commanded Dec (before pointing error)")
            own["SIM-PERR"] = (float(s["pointing_error_arcsec"]), "[arcsec] simulated pointing error")
        if s["catalog"] != "random":
            own["SIM-CAT"] = (str(s["catalog"]), "simulated sky catalogue")
        if float(s["rotation_deg"]) != 0:
            own["SIM-ROT"] = (float(s["rotation_deg"]), "[deg] PA of +y axis (simulation truth)")
        if s["best_focus"] is not None:
            own["SIM-BFOC"] = (self.best_focus_at(exposure.conditions.get("ambient_temp_c")),
                               "[steps] TRUE best focus (simulation truth)")
        if "sun_alt_deg" in exposure.conditions:
            c = exposure.conditions
            own["SIM-SKYR"] = (self.twilight_rate(c["sun_alt_deg"], c.get("sun_rate_deg_per_min", 0.0),
                                                  exposure.exptime),
                               "[e-/s/px] simulated twilight sky rate")
        if exposure.sky is not None:
            sky, geo = exposure.sky, exposure.sky.geometry
            own["SIM-SKYR"] = (round(sky.rate, 4), "[e-/s/px] simulated sky rate (dark+moon+twilight)")
            if math.isfinite(sky.v_mag):
                own["SIM-SKYV"] = (round(sky.v_mag, 3), "[mag/arcsec2] simulated sky, V equivalent")
            own["SIM-SKYM"] = (round(sky.moon_rate, 4), "[e-/s/px] moonlight part of SIM-SKYR")
            own["SIM-SKYT"] = (round(sky.twilight_rate, 4), "[e-/s/px] twilight part of SIM-SKYR")
            own["SIM-SUNA"] = (round(geo.sun_alt_deg, 3), "[deg] sun altitude, mid-exposure (sim)")
            own["SIM-MOOA"] = (round(geo.moon_alt_deg, 3), "[deg] moon altitude, mid-exposure (sim)")
            own["SIM-MOOS"] = (round(geo.moon_sep_deg, 3), "[deg] moon-frame separation (sim)")
            own["SIM-MOOP"] = (round(geo.moon_phase_deg, 3), "[deg] moon phase angle, 0 full (sim)")
        header.update(as_fits_header(own))
        return header

    # -- rendering ----------------------------------------------------------

    def _make_hot_pixels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([int(self.settings["seed"]), self._name_hash, 1])
        n = int(round(float(self.settings["hot_pixel_fraction"]) * self.width * self.height))
        return (rng.integers(0, self.width, n), rng.integers(0, self.height, n),
                rng.uniform(20.0, 300.0, n))

    def render(self, exptime: float, ra_deg: float, dec_deg: float,
               image_type: str = "science", noise_seed: int = 0, *,
               focus_position: float | None = None, ambient_temp_c: float | None = None,
               sun_alt_deg: float | None = None, sun_rate_deg_per_min: float | None = None,
               sky_e_per_s_per_px: float | None = None) -> np.ndarray:
        """The uint16 frame (height x width) an exposure would produce, centred
        exactly on (ra_deg, dec_deg) (no pointing error: ``start_exposure``
        adds it, see ``true_pointing``).

        ``focus_position`` and ``ambient_temp_c`` set the star size when the
        focus model is on (``psf_fwhm_px``); ``sun_alt_deg`` (and
        ``sun_rate_deg_per_min``) light a 'flat' with the twilight sky
        (``twilight_rate``). ``start_exposure`` takes them from the header
        (``conditions_from_header``). ``sky_e_per_s_per_px`` replaces the
        setting of that name as the sky rate of a sky frame (``start_exposure``
        passes the modelled sky, ``sky_brightness(...).rate``).
        """
        s = self.settings
        is_bias = image_type == "bias"
        level = 0.0 if is_bias else float(s["dark_e_per_s_per_px"]) * exptime
        if image_type in _SKY_TYPES:
            sky = s["sky_e_per_s_per_px"] if sky_e_per_s_per_px is None else sky_e_per_s_per_px
            level += float(sky) * exptime
        elif image_type == "flat":
            if sun_alt_deg is None:
                level += float(s["flat_e_per_s_per_px"]) * exptime
            else:
                level += self.twilight_rate(sun_alt_deg, sun_rate_deg_per_min or 0.0, exptime) * exptime
        electrons = np.full((self.height, self.width), level, dtype=np.float32)
        if image_type in _SKY_TYPES and exptime > 0:
            self._add_stars(electrons, exptime, ra_deg, dec_deg,
                            self.psf_fwhm_px(focus_position, ambient_temp_c))
        if not is_bias and exptime > 0:
            np.add.at(electrons, (self._hot_y, self._hot_x),
                      (self._hot_rate * exptime).astype(np.float32))
        return self._digitise(electrons, noise_seed)

    def _add_stars(self, electrons: np.ndarray, exptime: float, ra_deg: float, dec_deg: float,
                   fwhm_px: float) -> None:
        s = self.settings
        height, width = electrons.shape
        scale_deg = self.pixel_scale_arcsec / 3600.0
        sigma = float(fwhm_px) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        half = max(2, math.ceil(3.5 * sigma))
        radius_deg = (math.hypot(width, height) / 2.0 + half + 2) * scale_deg * 1.01
        ra, dec, mag = self.catalog.stars_near(ra_deg, dec_deg, radius_deg)
        xi, eta, front = tan_project(ra, dec, ra_deg, dec_deg)
        rotation = math.radians(float(s["rotation_deg"]))
        if rotation:
            # The frame's +y axis points to position angle `rotation`.
            cos_r, sin_r = math.cos(rotation), math.sin(rotation)
            xi, eta = xi * cos_r - eta * sin_r, xi * sin_r + eta * cos_r
        x = (width - 1) / 2.0 - xi / scale_deg
        y = (height - 1) / 2.0 + eta / scale_deg
        visible = front & (x > -half - 1) & (x < width + half) & (y > -half - 1) & (y < height + half)
        x, y, mag = x[visible], y[visible], mag[visible]
        if len(x) == 0:
            return
        flux = (10.0 ** (-0.4 * (mag - float(s["zero_point_mag"]))) * exptime
                * self.transparency).astype(np.float32)

        offsets = np.arange(-half, half + 1)
        xc, yc = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
        cols = xc[:, None] + offsets                       # (n, S)
        rows = yc[:, None] + offsets
        wx = _pixel_gaussian(cols - x[:, None], sigma).astype(np.float32)
        wy = _pixel_gaussian(rows - y[:, None], sigma).astype(np.float32)
        stamps = flux[:, None, None] * wy[:, :, None] * wx[:, None, :]   # (n, S, S)
        rr = np.broadcast_to(rows[:, :, None], stamps.shape)
        cc = np.broadcast_to(cols[:, None, :], stamps.shape)
        inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
        np.add.at(electrons.reshape(-1), rr[inside] * width + cc[inside], stamps[inside])

    def _digitise(self, electrons: np.ndarray, noise_seed: int) -> np.ndarray:
        """Shot and read noise, gain, bias and clipping, in parallel row blocks."""
        s = self.settings
        read_var = float(s["read_noise_e"]) ** 2
        inv_gain = 1.0 / float(s["gain_e_per_adu"])
        # +0.5 turns the truncating uint16 cast into rounding (values are >= 0).
        offset = float(s["bias"]) + 0.5
        top = float(s["saturation_adu"])
        height = electrons.shape[0]
        out = np.empty(electrons.shape, dtype=np.uint16)
        starts = list(range(0, height, _NOISE_BLOCK_ROWS))
        seeds = np.random.SeedSequence([int(s["seed"]), self._name_hash, int(noise_seed)]).spawn(len(starts))

        def block(i: int) -> None:
            r0, r1 = starts[i], min(starts[i] + _NOISE_BLOCK_ROWS, height)
            signal = electrons[r0:r1]
            noisy = np.random.default_rng(seeds[i]).standard_normal(signal.shape, dtype=np.float32)
            sd = signal + np.float32(read_var)
            np.sqrt(sd, out=sd)
            noisy *= sd
            noisy += signal
            noisy *= np.float32(inv_gain)
            noisy += np.float32(offset)
            np.clip(noisy, 0.0, top, out=noisy)
            out[r0:r1] = noisy

        if len(starts) == 1:
            block(0)
        else:
            with ThreadPoolExecutor(max_workers=_NOISE_THREADS) as pool:
                list(pool.map(block, range(len(starts))))
        return out

"""Plate solving: astrometry.net's ``solve-field`` and a fast hinted solver.

Two solvers with one result type (``Solution``):

- ``solve_field``: runs astrometry.net's ``solve-field`` (Debian package
  ``astrometry.net`` plus index files, e.g. ``astrometry-data-tycho2-10-19``)
  as a subprocess in its own session, with position and scale hints, under a
  CPU limit and a wall-clock timeout after which its whole process group is
  killed. It needs nothing but an image (blind solving works, slowly) and
  fits SIP distortion terms.
- ``fast_solve``: for the common case of a pointing image, where the
  pointing (within a few degrees), the pixel scale (within a couple of per
  cent) and the camera rotation (within a few degrees) are known. It
  projects catalogue stars about the hinted pointing, finds the rotation and
  offset on which the most (source, star) pairs agree (a vote over a grid of
  rotations), then matches and fits a TAN WCS by least squares with outlier
  rejection, re-projecting about the fitted centre until it settles. It
  returns None when the match is not convincing. Tens of milliseconds on a
  full DSLR frame; see docs/solving.md.

``solve`` runs the fast solver first and falls back to ``solve-field``.

Conventions: pixel coordinates are 0-based (x along columns, y along rows)
everywhere in this module's API; WCS cards are FITS (1-based CRPIX).
``rotation`` is the position angle of the image's +y axis, degrees east of
north (0 = north up; then east is left on a normally oriented frame).
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import sep
from astropy.io import fits

__all__ = [
    "Solution",
    "SolveError",
    "solve_field",
    "fast_solve",
    "solve",
    "extract_sources",
    "offset_arcsec",
    "offset_components_arcsec",
    "solve_field_available",
    "tan_project",
    "tan_deproject",
]

SOLVE_FIELD = "solve-field"
DEBIAN_PACKAGES = "astrometry.net and astrometry-data-tycho2-10-19"

# Extraction: frames bigger than this many pixels are binned 2 x 2 first
# (four times fewer pixels for sep; centroids stay far better than a pixel).
_BIN_ABOVE_PX = 8_000_000
_PIXSTACK = 2_000_000
_EDGE_PX = 4
# A source with nearly all of its flux in its peak pixel is a hot pixel or
# a cosmic ray, not a star (a barely sampled star puts at most about half
# its flux in one pixel, even binned).
_MAX_PEAK_FRACTION = 0.85


class SolveError(RuntimeError):
    """A solve could not be attempted (unreadable image, solver missing or
    crashing); the message says which and why. A field that merely does not
    solve gives None, not this."""


# ---------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class Solution:
    """Where a frame points.

    ``ra_deg``/``dec_deg``: sky position of the frame centre, 0-based pixel
    ((width-1)/2, (height-1)/2). ``rotation``: position angle of the +y
    axis, degrees east of north. ``pixel_scale``: arcsec per pixel.
    ``parity``: +1 for a normally oriented sky (east left of north, as seen
    through a lens), -1 mirrored. ``wcs_header``: the WCS as FITS cards
    (key -> value; TAN, or TAN-SIP from solve-field) for ``wcs()``.
    ``n_matched``/``rms_arcsec``: stars matched to the catalogue and the RMS
    of their residuals. ``method``: "fast" or "solve-field". ``seconds``:
    wall time of the solve (for ``fast``, including source extraction when
    ``solve`` did it).
    """

    ra_deg: float
    dec_deg: float
    rotation: float
    pixel_scale: float
    wcs_header: dict[str, Any]
    n_matched: int
    rms_arcsec: float
    method: str
    seconds: float
    width: int = 0
    height: int = 0
    parity: int = 1

    def header(self) -> fits.Header:
        """The WCS cards as a ``fits.Header``."""
        header = fits.Header()
        for key, value in self.wcs_header.items():
            header[key] = value
        return header

    def wcs(self):
        """An ``astropy.wcs.WCS`` of the solution (0-based pixel methods work as usual)."""
        from astropy.wcs import WCS, FITSFixedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            return WCS(self.header())

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return asdict(self)

    def with_seconds(self, seconds: float) -> "Solution":
        return Solution(**{**asdict(self), "seconds": float(seconds)})


def offset_arcsec(solution: Solution, ra_deg: float, dec_deg: float) -> float:
    """Angular distance (arcsec) from (ra, dec) to the solved frame centre."""
    return _separation_deg(solution.ra_deg, solution.dec_deg, ra_deg, dec_deg) * 3600.0


def offset_components_arcsec(solution: Solution, ra_deg: float, dec_deg: float
                             ) -> tuple[float, float]:
    """(east, north) arcsec of the solved centre relative to (ra, dec): the
    standard coordinates of the solved centre in a tangent plane at (ra,
    dec). A mount that points (east, north) off should move by minus this."""
    xi, eta, _ = tan_project(np.array([solution.ra_deg]), np.array([solution.dec_deg]),
                             ra_deg, dec_deg)
    return float(xi[0]) * 3600.0, float(eta[0]) * 3600.0


def _separation_deg(ra1, dec1, ra2, dec2):
    ra1, dec1, ra2, dec2 = (np.radians(v) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


# ---------------------------------------------------------------------------
# Projections


def tan_project(ra_deg, dec_deg, ra0_deg: float, dec0_deg: float):
    """Gnomonic projection about (ra0, dec0): (xi east, eta north) in degrees
    and a mask of the points on the near hemisphere."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    ra0, dec0 = math.radians(ra0_deg), math.radians(dec0_deg)
    cos_dra = np.cos(ra - ra0)
    cos_c = math.sin(dec0) * np.sin(dec) + math.cos(dec0) * np.cos(dec) * cos_dra
    front = cos_c > 1e-6
    safe = np.where(front, cos_c, 1.0)
    xi = np.cos(dec) * np.sin(ra - ra0) / safe
    eta = (math.cos(dec0) * np.sin(dec) - math.sin(dec0) * np.cos(dec) * cos_dra) / safe
    return np.degrees(xi), np.degrees(eta), front


def tan_deproject(xi_deg, eta_deg, ra0_deg: float, dec0_deg: float):
    """Inverse of ``tan_project``: (ra, dec) degrees of standard coordinates."""
    xi, eta = np.radians(xi_deg), np.radians(eta_deg)
    ra0, dec0 = math.radians(ra0_deg), math.radians(dec0_deg)
    denom = math.cos(dec0) - eta * math.sin(dec0)
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(math.sin(dec0) + eta * math.cos(dec0), np.hypot(xi, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _tan_wcs_cards(crval: tuple[float, float], cd: np.ndarray, width: int, height: int) -> dict:
    return {
        "WCSAXES": 2,
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CUNIT1": "deg",
        "CUNIT2": "deg",
        "EQUINOX": 2000.0,
        "CRVAL1": float(crval[0]),
        "CRVAL2": float(crval[1]),
        "CRPIX1": (width - 1) / 2.0 + 1.0,
        "CRPIX2": (height - 1) / 2.0 + 1.0,
        "CD1_1": float(cd[0, 0]),
        "CD1_2": float(cd[0, 1]),
        "CD2_1": float(cd[1, 0]),
        "CD2_2": float(cd[1, 1]),
        "IMAGEW": int(width),
        "IMAGEH": int(height),
    }


def _cd_geometry(cd: np.ndarray) -> tuple[float, float, int]:
    """(rotation deg E of N of +y, pixel scale arcsec, parity) of a CD matrix."""
    det = float(np.linalg.det(cd))
    rotation = math.degrees(math.atan2(cd[0, 1], cd[1, 1]))
    return rotation, math.sqrt(abs(det)) * 3600.0, (1 if det < 0 else -1)


# ---------------------------------------------------------------------------
# Images and sources


def _load_image(path_or_array) -> tuple[np.ndarray, int, tuple[int, int], fits.Header, str]:
    """(float32 image for extraction, binning, full (height, width), header, label).

    FITS files are memory-mapped without scaling and binned 2 x 2 straight
    from the map when large, which costs a few hundredths of a second on a
    full DSLR frame instead of a few tenths for a full float conversion.
    """
    if isinstance(path_or_array, np.ndarray):
        label, raw, header, bscale, bzero = "<array>", path_or_array, fits.Header(), 1.0, 0.0
        return _prepare(raw, bscale, bzero, label) + (header, label)
    path = Path(path_or_array)
    label = str(path)
    if not path.is_file():
        raise SolveError(f"{label}: file not found" if not path.exists() else f"{label}: not a regular file")
    try:
        with _truncation_is_an_error(label), \
                fits.open(path, memmap=True, do_not_scale_image_data=True) as hdul:
            for hdu in hdul:
                if getattr(hdu, "is_image", False) and hdu.data is not None:
                    header = hdu.header.copy()
                    bscale = float(header.get("BSCALE", 1.0))
                    bzero = float(header.get("BZERO", 0.0))
                    image, binning, shape = _prepare(hdu.data, bscale, bzero, label)
                    break
            else:
                raise SolveError(f"{label}: no image data in any HDU")
    except SolveError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise SolveError(f"{label}: not a readable FITS image ({type(exc).__name__}: {exc})") from exc
    return image, binning, shape, header, label


class _truncation_is_an_error:
    """astropy only warns about a truncated FITS file (and then fails, or
    reads garbage, later): make it a SolveError at once."""

    def __init__(self, label: str):
        self.label = label
        self._catcher = warnings.catch_warnings(record=True)

    def __enter__(self):
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, exc_type, exc, tb):
        self._catcher.__exit__(exc_type, exc, tb)
        for w in self._caught:
            text = str(w.message)
            if "truncated" in text:
                raise SolveError(f"{self.label}: truncated FITS file ({text})")
            # Anything else is passed on as it was.
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return False


def _prepare(raw: np.ndarray, bscale: float, bzero: float, label: str
             ) -> tuple[np.ndarray, int, tuple[int, int]]:
    if raw.ndim != 2:
        raise SolveError(f"{label}: expected a 2-D image, got shape {raw.shape}")
    if min(raw.shape) < 16:
        raise SolveError(f"{label}: image too small to solve ({raw.shape})")
    if not np.issubdtype(raw.dtype, np.number) or np.iscomplexobj(raw):
        raise SolveError(f"{label}: image data is not real numbers ({raw.dtype})")
    height, width = raw.shape
    if raw.size > _BIN_ABOVE_PX:
        raw = raw[:height // 2 * 2, :width // 2 * 2]
        image = raw[0::2, 0::2].astype(np.float32)
        image += raw[1::2, 0::2]
        image += raw[0::2, 1::2]
        image += raw[1::2, 1::2]
        binning = 2
        zero = 4.0 * bzero
    else:
        image = np.array(raw, dtype=np.float32)  # native byte order copy
        binning = 1
        zero = bzero
    if bscale != 1.0:
        image *= np.float32(bscale)
    if zero:
        image += np.float32(zero)
    if raw.dtype.kind == "f" and not np.all(np.isfinite(image)):
        image = np.nan_to_num(image, nan=float(np.nanmedian(image)), posinf=0.0, neginf=0.0)
    return np.ascontiguousarray(image), binning, (height, width)


def extract_sources(path_or_array, n_max: int = 300, threshold_sigma: float = 5.0
                    ) -> tuple[np.ndarray, tuple[int, int]]:
    """The brightest point sources of a frame, for solving.

    Returns ((n, 3) array of 0-based x, y, flux, brightest first; the
    frame's (height, width)). Large frames are binned 2 x 2 first. Sources
    at the edge and single-pixel spikes (hot pixels, cosmic rays) are
    dropped. Raises SolveError for an unreadable image.
    """
    image, binning, shape, _, label = _load_image(path_or_array)
    return _extract(image, binning, label, n_max, threshold_sigma), shape


def _extract(image: np.ndarray, binning: int, label: str, n_max: int, threshold_sigma: float
             ) -> np.ndarray:
    try:
        mesh = 64
        background = sep.Background(image, bw=mesh, bh=mesh)
        rms = float(background.globalrms)
        background.subfrom(image)
        if not rms > 0:
            return np.empty((0, 3))
        pixstack = int(min(max(image.size // 8, 300_000), _PIXSTACK))
        while True:
            sep.set_extract_pixstack(pixstack)
            try:
                objects = sep.extract(image, threshold_sigma, err=rms)
                break
            except Exception as exc:  # noqa: BLE001 - sep raises bare Exception
                if "pixel buffer full" not in str(exc) or pixstack >= 8 * _PIXSTACK:
                    raise
                pixstack *= 2
    except Exception as exc:  # noqa: BLE001
        raise SolveError(f"{label}: source extraction failed ({exc})") from exc
    if len(objects) == 0:
        return np.empty((0, 3))
    h, w = image.shape
    x, y, flux, peak = objects["x"], objects["y"], objects["flux"], objects["peak"]
    keep = ((objects["flag"] & sep.OBJ_TRUNC) == 0) & (flux > 0) \
        & (x >= _EDGE_PX) & (x <= w - 1 - _EDGE_PX) & (y >= _EDGE_PX) & (y <= h - 1 - _EDGE_PX) \
        & (peak < _MAX_PEAK_FRACTION * flux)
    x, y, flux = x[keep], y[keep], flux[keep]
    order = np.argsort(flux)[::-1][:n_max]
    # A binned pixel i covers full pixels b*i .. b*i+b-1: its centre is b*i + (b-1)/2.
    out = np.column_stack([x[order] * binning + (binning - 1) / 2.0,
                           y[order] * binning + (binning - 1) / 2.0,
                           flux[order]])
    return out


# ---------------------------------------------------------------------------
# The fast solver


def _fit_affine(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares q = A p + t for (n, 2) arrays; returns (A, t)."""
    design = np.column_stack([p, np.ones(len(p))])
    coef, *_ = np.linalg.lstsq(design, q, rcond=None)
    return coef[:2].T, coef[2]


def _robust_fit(p: np.ndarray, q: np.ndarray, min_sigma: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Affine fit with iterative rejection of pairs beyond 3 sigma.

    Returns (A, t, inlier mask) or None with fewer than 4 pairs left.
    """
    keep = np.ones(len(p), dtype=bool)
    for _ in range(5):
        if keep.sum() < 4:
            return None
        a, t = _fit_affine(p[keep], q[keep])
        resid = np.linalg.norm(p @ a.T + t - q, axis=1)
        # A 2-D Gaussian residual's norm has median 1.177 sigma.
        sigma = max(float(np.median(resid[keep])) / 1.177, min_sigma)
        new_keep = resid <= 3.0 * sigma
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if keep.sum() < 4:
        return None
    a, t = _fit_affine(p[keep], q[keep])
    return a, t, keep


def _mutual_nearest(pred: np.ndarray, cat: np.ndarray, radius: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one nearest neighbours within ``radius``: indices (i_pred, i_cat).

    Each prediction takes its nearest catalogue star; a star chosen by
    several keeps the closest. Catalogue stars are sorted by x and each
    prediction looks only at the strip x +- radius (a few dozen stars),
    not at the whole catalogue.
    """
    empty = (np.empty(0, dtype=int), np.empty(0, dtype=int))
    if len(pred) == 0 or len(cat) == 0:
        return empty
    lo_box, hi_box = pred.min(axis=0) - radius, pred.max(axis=0) + radius
    near = np.flatnonzero(np.all((cat >= lo_box) & (cat <= hi_box), axis=1))
    if len(near) == 0:
        return empty
    near = near[np.argsort(cat[near, 0], kind="stable")]
    sub = cat[near]
    lo = np.searchsorted(sub[:, 0], pred[:, 0] - radius, side="left")
    hi = np.searchsorted(sub[:, 0], pred[:, 0] + radius, side="right")
    width = int((hi - lo).max())
    if width == 0:
        return empty
    cols = lo[:, None] + np.arange(width)
    valid = cols < hi[:, None]
    cols = np.minimum(cols, len(sub) - 1)
    d2 = ((pred[:, None, :] - sub[cols]) ** 2).sum(axis=2)
    d2[~valid] = np.inf
    best = np.argmin(d2, axis=1)
    rows = np.arange(len(pred))
    dist2 = d2[rows, best]
    ok = dist2 <= radius * radius
    i_pred, i_cat, dist2 = rows[ok], near[cols[rows[ok], best[ok]]], dist2[ok]
    # One source per star: the closest.
    order = np.lexsort((dist2, i_cat))
    i_pred, i_cat = i_pred[order], i_cat[order]
    first = np.ones(len(i_cat), dtype=bool)
    first[1:] = i_cat[1:] != i_cat[:-1]
    return i_pred[first], i_cat[first]


def _project_finite(ra, dec, ra0: float, dec0: float) -> np.ndarray:
    """(n, 2) TAN standard coordinates; far-side points at infinity (never matched)."""
    xi, eta, front = tan_project(ra, dec, ra0, dec0)
    out = np.column_stack([xi, eta])
    out[~front] = np.inf
    return out


def _rotation_matrix(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    # Turns (east, north) of a +y-at-PA-0 frame to a +y-at-PA-angle frame.
    return np.array([[c, s], [-s, c]])


def fast_solve(sources_xy_flux, shape: Sequence[int], ra_hint: float, dec_hint: float,
               pixel_scale_arcsec: float, catalog=None, rotation_hint: float = 0.0, *,
               max_offset_deg: float = 5.0, rotation_tolerance_deg: float = 5.0,
               scale_tolerance: float = 0.03, n_vote: int = 50, min_matches: int = 8,
               parity: int = 1) -> Solution | None:
    """Solve a frame from its sources, given hints; None when not convincing.

    ``sources_xy_flux``: (x, y, flux) rows, 0-based pixels (e.g.
    ``extract_sources`` or ``FrameMetrics.sources``). ``shape``: (height,
    width) of the frame. ``ra_hint``/``dec_hint``: where the frame centre
    should be (the commanded pointing), within ``max_offset_deg``.
    ``pixel_scale_arcsec``: within ``scale_tolerance`` (fraction).
    ``rotation_hint``: position angle of the +y axis (deg E of N), within
    ``rotation_tolerance_deg``. ``catalog``: anything with
    ``stars_near(ra, dec, radius) -> (ra, dec, mag)``; default the shared
    Tycho-2 catalogue. ``parity`` -1 for mirrored frames.

    Method:

    1. Catalogue stars within the field's half-diagonal plus
       ``max_offset_deg`` of the hint are projected (TAN) about the hint.
    2. For each rotation on a grid covering the tolerance (plus the
       meridian convergence a Dec offset brings near the poles), every pair
       of (one of the ``n_vote`` brightest sources, one of a matching number
       of the brightest stars) votes for the offset of the frame centre; the
       rotation and offset with the most votes win. Bins are wide enough
       (about 0.6% of the half-diagonal) to absorb the projection's
       distortion at the wrong tangent point and a small scale error.
    3. That guess seeds a match of all sources to all stars (mutual nearest
       neighbours), an affine fit with 3-sigma rejection, and a
       re-projection about the fitted centre; repeated with a shrinking
       match radius until the centre moves by less than 0.1 arcsec.
    4. Accepted only when at least ``min_matches`` stars match, far more
       than chance alignments would give, with a fitted scale within
       tolerance, near-orthogonal axes and a sub-2-pixel RMS.
    """
    t0 = time.perf_counter()
    height, width = int(shape[0]), int(shape[1])
    if catalog is None:
        from observatory.catalog import shared_tycho2
        catalog = shared_tycho2()
    if not (pixel_scale_arcsec and pixel_scale_arcsec > 0):
        raise ValueError(f"pixel scale must be > 0, got {pixel_scale_arcsec}")
    if parity not in (1, -1):
        raise ValueError(f"parity must be +1 or -1, got {parity}")
    src = np.asarray(sources_xy_flux, dtype=float).reshape(-1, 3) if len(sources_xy_flux) else np.empty((0, 3))
    src = src[np.all(np.isfinite(src), axis=1)]
    src = src[np.argsort(src[:, 2])[::-1]]
    if len(src) < min_matches:
        return None
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    scale = pixel_scale_arcsec / 3600.0
    dx, dy = src[:, 0] - cx, src[:, 1] - cy
    # (east, north) degrees of each source for a frame with +y at PA 0.
    base = np.column_stack([-parity * dx * scale, dy * scale])

    half_diag_px = math.hypot(width, height) / 2.0
    half_diag = half_diag_px * scale
    region = half_diag * (1 + scale_tolerance) + max_offset_deg
    cat_ra, cat_dec, cat_mag = catalog.stars_near(float(ra_hint), float(dec_hint), region)
    if len(cat_ra) < min_matches:
        return None
    xi, eta, front = tan_project(cat_ra, cat_dec, ra_hint, dec_hint)
    cat_ra, cat_dec, cat_mag = cat_ra[front], cat_dec[front], cat_mag[front]
    cat_h = np.column_stack([xi[front], eta[front]])

    # -- 2. vote -----------------------------------------------------------
    n_src = min(n_vote, len(src))
    field_area = width * height * scale * scale
    region_area = math.pi * region * region
    n_cat = int(min(len(cat_h), math.ceil(2.0 * n_src * region_area / field_area)))
    bright = np.argsort(cat_mag, kind="stable")[:n_cat]
    cat_vote = cat_h[bright]
    bin_deg = max(0.006 * half_diag_px, 6.0) * scale
    span = max_offset_deg + 2 * bin_deg
    n_bins = int(math.ceil(2 * span / bin_deg))
    # Meridians converge: in the hint's tangent plane, north at a point up to
    # max_offset away turns by up to asin(tan(offset) tan(dec)) (any angle
    # when the pole is that close).
    reach = math.tan(math.radians(max_offset_deg)) * math.tan(math.radians(min(abs(dec_hint), 89.999)))
    convergence = math.degrees(math.asin(reach)) if reach < 1.0 else 180.0
    rot_range = min(180.0, rotation_tolerance_deg + convergence)
    rot_step = math.degrees(1.2 * bin_deg / half_diag)
    n_rot = max(1, int(math.ceil(2 * rot_range / rot_step)) + 1)
    rotations = rotation_hint + (np.linspace(-rot_range, rot_range, n_rot) if n_rot > 1 else np.zeros(1))
    if rot_range >= 180.0:
        rotations = rotation_hint + np.arange(0.0, 360.0, rot_step)

    best = (-1, 0.0, 0.0, 0.0)   # score, rotation, offset xi, offset eta
    vote_src = base[:n_src]
    for rot in rotations:
        r = _rotation_matrix(math.radians(rot))
        # Sky (east, north) offsets of the sources for this rotation.
        rotated = vote_src @ r.T
        diff = (cat_vote[None, :, :] - rotated[:, None, :]).reshape(-1, 2)
        ij = np.floor((diff + span) * (1.0 / bin_deg)).astype(np.int64)
        # Negative bins wrap to huge unsigned values: one comparison per axis.
        inside = (ij[:, 0].astype(np.uint64) < n_bins) & (ij[:, 1].astype(np.uint64) < n_bins)
        ij = ij[inside]
        if len(ij) == 0:
            continue
        votes = np.bincount(ij[:, 0] * n_bins + ij[:, 1], minlength=n_bins * n_bins).reshape(n_bins, n_bins)
        # An offset near a bin corner splits its votes: score 2 x 2 blocks.
        score = votes[:-1, :-1] + votes[1:, :-1] + votes[:-1, 1:] + votes[1:, 1:]
        k = int(np.argmax(score))
        s = int(score.flat[k])
        if s > best[0]:
            i, j = divmod(k, n_bins - 1)
            best = (s, float(rot), (i + 1) * bin_deg - span, (j + 1) * bin_deg - span)
    score, rot, off_xi, off_eta = best
    if score < min(min_matches, 5):
        return None

    # -- 3. match and fit ----------------------------------------------------
    pix = np.column_stack([dx, dy])
    r = _rotation_matrix(math.radians(rot))
    # Initial linear model: pixel offsets -> hint-plane (xi, eta).
    a = r @ np.array([[-parity * scale, 0.0], [0.0, scale]])
    t = np.array([off_xi, off_eta])
    plane_ra, plane_dec = float(ra_hint), float(dec_hint)
    cat_plane = cat_h
    radius = 2.5 * bin_deg
    min_sigma = 0.3 * scale
    floor = 2.5 * scale
    fit = None
    for iteration in range(10):
        pred = pix @ a.T + t
        i_src, i_cat = _mutual_nearest(pred, cat_plane, radius)
        if len(i_src) < min_matches:
            return None
        fit = _robust_fit(pix[i_src], cat_plane[i_cat], min_sigma)
        if fit is None:
            return None
        a, t, inl = fit
        i_src, i_cat = i_src[inl], i_cat[inl]
        # Move the tangent point to the fitted centre (pixel cx, cy) and
        # refit the same pairs there, so that a and t belong to that plane.
        new_ra, new_dec = (float(v) for v in tan_deproject(t[0], t[1], plane_ra, plane_dec))
        moved = float(_separation_deg(new_ra, new_dec, plane_ra, plane_dec)) * 3600.0
        plane_ra, plane_dec = new_ra, new_dec
        cat_plane = _project_finite(cat_ra, cat_dec, plane_ra, plane_dec)
        fit = _robust_fit(pix[i_src], cat_plane[i_cat], min_sigma)
        if fit is None:
            return None
        a, t, inl = fit
        resid = np.linalg.norm(pix[i_src][inl] @ a.T + t - cat_plane[i_cat][inl], axis=1)
        rms = float(np.sqrt(np.mean(resid ** 2)))
        new_radius = min(radius, max(4.0 * rms, floor))
        if iteration >= 1 and moved < 0.1 and new_radius > 0.95 * radius:
            break
        radius = new_radius

    # Final match and fit about the fitted centre.
    crval_ra, crval_dec = (float(v) for v in tan_deproject(t[0], t[1], plane_ra, plane_dec))
    cat_plane = _project_finite(cat_ra, cat_dec, crval_ra, crval_dec)
    i_src, i_cat = _mutual_nearest(pix @ a.T, cat_plane, radius)
    if len(i_src) < min_matches:
        return None
    fit = _robust_fit(pix[i_src], cat_plane[i_cat], min_sigma)
    if fit is None:
        return None
    a, t, inl = fit
    n_matched = int(inl.sum())
    resid = np.linalg.norm(pix[i_src][inl] @ a.T + t - cat_plane[i_cat][inl], axis=1)
    rms_deg = float(np.sqrt(np.mean(resid ** 2)))
    # t is now far under a pixel: fold it into the centre.
    crval_ra, crval_dec = (float(v) for v in tan_deproject(t[0], t[1], crval_ra, crval_dec))

    # -- 4. is it convincing? --------------------------------------------
    rotation, fitted_scale, fitted_parity = _cd_geometry(a)
    sv = np.linalg.svd(a, compute_uv=False)
    finite = np.all(np.isfinite(cat_plane), axis=1)
    in_field = np.all(np.abs(cat_plane[finite] @ np.linalg.inv(a).T) <= [width / 2.0, height / 2.0], axis=1)
    density = max(int(in_field.sum()), 1) / (width * height)              # stars per px^2
    chance = len(src) * math.pi * (radius / scale) ** 2 * density       # expected chance matches
    convincing = (
        n_matched >= max(min_matches, chance + 5.0 * math.sqrt(chance) + 3.0)
        and abs(fitted_scale / pixel_scale_arcsec - 1.0) <= max(2 * scale_tolerance, 0.02)
        and sv[0] / sv[1] < 1.02
        and fitted_parity == parity
        and rms_deg < 2.5 * scale
        and _separation_deg(crval_ra, crval_dec, ra_hint, dec_hint) <= max_offset_deg + 2 * bin_deg
    )
    if not convincing:
        return None
    return Solution(
        ra_deg=crval_ra, dec_deg=crval_dec, rotation=rotation, pixel_scale=fitted_scale,
        wcs_header=_tan_wcs_cards((crval_ra, crval_dec), a, width, height),
        n_matched=n_matched, rms_arcsec=rms_deg * 3600.0, method="fast",
        seconds=time.perf_counter() - t0, width=width, height=height, parity=fitted_parity)


# ---------------------------------------------------------------------------
# solve-field


def solve_field_available() -> str | None:
    """Path of the solve-field executable, or None."""
    return shutil.which(SOLVE_FIELD)


def solve_field(path: str | os.PathLike, ra_hint: float | None = None, dec_hint: float | None = None,
                radius_deg: float | None = 15.0, scale_low: float | None = None,
                scale_high: float | None = None, downsample: int | None = 2,
                timeout_s: float = 60.0, workdir: str | os.PathLike | None = None, *,
                sources=None, shape: Sequence[int] | None = None, tweak_order: int | None = 2,
                keep_files: bool = False, extra_args: Sequence[str] = ()) -> Solution | None:
    """Plate-solve a FITS image with astrometry.net's solve-field.

    ``ra_hint``/``dec_hint``/``radius_deg``: search only index stars within
    ``radius_deg`` of the hint (all three needed for the hint to apply).
    ``scale_low``/``scale_high``: pixel scale bounds, arcsec/px.
    ``downsample``: solve-field bins the image by this factor before its
    own source extraction (2-4 suits a DSLR frame). ``timeout_s``: CPU
    limit passed to solve-field, and a wall-clock limit (plus a few seconds
    of grace) after which its whole process group is killed. ``workdir``:
    where its files go (default a temporary directory, removed afterwards
    unless ``keep_files``). ``sources``: optionally (x, y, flux) rows (0-based)
    of an extraction already done, with ``shape`` = (height, width): solve-field
    then skips its own extraction, much faster.

    Returns the Solution (TAN-SIP when ``tweak_order`` >= 2; centre at the
    frame's central pixel), or None when the field did not solve in time.
    Raises SolveError when solve-field is not installed, the image is
    unreadable or solve-field fails.
    """
    t0 = time.perf_counter()
    exe = solve_field_available()
    if exe is None:
        raise SolveError(f"{SOLVE_FIELD} not found on PATH; install the Debian packages "
                         f"{DEBIAN_PACKAGES}")
    path = Path(path)
    if sources is None:
        height, width = _check_fits(path)
    else:
        if shape is None:
            raise ValueError("solve_field: sources need the frame shape (height, width)")
        height, width = int(shape[0]), int(shape[1])
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="solve-")) if own_dir else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    stem = "field"
    try:
        if sources is not None:
            src = np.asarray(sources, dtype=float).reshape(-1, 3)
            table = fits.BinTableHDU.from_columns([
                # xylists are 1-based (FITS pixel convention).
                fits.Column(name="X", format="D", array=src[:, 0] + 1.0),
                fits.Column(name="Y", format="D", array=src[:, 1] + 1.0),
                fits.Column(name="FLUX", format="D", array=src[:, 2]),
            ])
            input_file = work / f"{stem}.xyls"
            table.writeto(input_file, overwrite=True)
        else:
            input_file = path
        out = {k: work / f"{stem}.{k}" for k in ("wcs", "corr", "solved", "axy")}
        cmd = [exe, "--no-plots", "--overwrite", "--no-remove-lines", "--uniformize", "0",
               "--no-verify", "--crpix-center",
               "--dir", str(work), "--temp-dir", str(work), "--out", stem,
               "--wcs", str(out["wcs"]), "--corr", str(out["corr"]), "--solved", str(out["solved"]),
               "--axy", str(out["axy"]),
               "--new-fits", "none", "--index-xyls", "none", "--rdls", "none", "--match", "none",
               "--cpulimit", str(max(1, int(math.ceil(timeout_s))))]
        if scale_low is not None and scale_high is not None:
            cmd += ["--scale-units", "arcsecperpix", "--scale-low", f"{scale_low:g}",
                    "--scale-high", f"{scale_high:g}"]
        if ra_hint is not None and dec_hint is not None and radius_deg is not None:
            cmd += ["--ra", f"{float(ra_hint) % 360.0:.6f}", "--dec", f"{float(dec_hint):.6f}",
                    "--radius", f"{float(radius_deg):g}"]
        if tweak_order is None or tweak_order < 1:
            cmd += ["--no-tweak"]
        else:
            cmd += ["--tweak-order", str(int(tweak_order))]
        if sources is not None:
            cmd += ["--width", str(width), "--height", str(height),
                    "--x-column", "X", "--y-column", "Y", "--sort-column", "FLUX"]
        elif downsample and downsample > 1:
            cmd += ["--downsample", str(int(downsample))]
        cmd += list(extra_args)
        cmd.append(str(input_file))
        returncode, output = _run_group(cmd, timeout_s + 5.0, cwd=work)
        if returncode is None:
            return None   # timed out, killed
        if not out["solved"].exists() or not out["wcs"].exists():
            if returncode != 0:
                tail = output.strip().splitlines()[-5:]
                raise SolveError(f"{SOLVE_FIELD} failed on {path} (exit {returncode}): "
                                 + " | ".join(tail))
            return None
        return _solution_from_files(out["wcs"], out["corr"], width, height,
                                    time.perf_counter() - t0)
    finally:
        if own_dir and not keep_files:
            shutil.rmtree(work, ignore_errors=True)


def _check_fits(path: Path) -> tuple[int, int]:
    """(height, width) of a FITS image; SolveError if it is not one."""
    if not path.exists():
        raise SolveError(f"{path}: file not found")
    if not path.is_file():
        raise SolveError(f"{path}: not a regular file")
    try:
        with _truncation_is_an_error(str(path)), \
                fits.open(path, memmap=True, do_not_scale_image_data=True) as hdul:
            for hdu in hdul:
                if getattr(hdu, "is_image", False) and hdu.header.get("NAXIS", 0) == 2:
                    shape = (int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"]))
                    # Touch the data: a truncated file fails here, not in solve-field.
                    hdu.data[-1, -1]
                    return shape
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise SolveError(f"{path}: not a readable FITS image ({type(exc).__name__}: {exc})") from exc
    raise SolveError(f"{path}: no 2-D image in any HDU")


def _run_group(cmd: list[str], timeout_s: float, cwd: Path) -> tuple[int | None, str]:
    """Run in a new session; on timeout (or any interruption) kill the whole
    process group. Returns (exit code or None when killed, output)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True,
                            errors="replace")
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return None, ""
    except BaseException:
        # Interrupted (KeyboardInterrupt, a signal turned exception...):
        # solve-field's children share its process group, none may outlive it.
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process group of ``proc`` (its own session).

    The SIGKILL goes to the group even when the leader has exited on
    SIGTERM: a child still running keeps the group alive.
    """
    pgid = proc.pid  # start_new_session: the group id is the leader's pid
    with _no_such_process():
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        pass
    with _no_such_process():
        os.killpg(pgid, signal.SIGKILL)
    try:
        proc.communicate(timeout=5.0)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass


class _no_such_process:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, (ProcessLookupError, PermissionError))


def _solution_from_files(wcs_path: Path, corr_path: Path, width: int, height: int,
                         seconds: float) -> Solution:
    from astropy.wcs import WCS, FITSFixedWarning

    header = fits.getheader(wcs_path)
    cards = {}
    for card in header.cards:
        key = card.keyword
        if not key or key in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "COMMENT", "HISTORY", "DATE") \
                or key.startswith("NAXIS"):
            continue
        value = card.value
        if isinstance(value, (bool, int, float, str)):
            cards[key] = value
    cards.setdefault("IMAGEW", width)
    cards.setdefault("IMAGEH", height)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    (ra, dec), = wcs.all_pix2world([[cx, cy]], 0)
    # Local CD at the centre, from finite differences (includes SIP).
    pts = wcs.all_pix2world([[cx, cy], [cx + 1, cy], [cx, cy + 1]], 0)
    xi, eta, _ = tan_project(pts[:, 0], pts[:, 1], float(ra), float(dec))
    cd = np.array([[xi[1] - xi[0], xi[2] - xi[0]], [eta[1] - eta[0], eta[2] - eta[0]]])
    rotation, scale, parity = _cd_geometry(cd)
    n_matched, rms = 0, math.nan
    if corr_path.exists():
        try:
            corr = fits.getdata(corr_path, 1)
            n_matched = len(corr)
            if n_matched:
                x, y = wcs.all_world2pix(corr["index_ra"], corr["index_dec"], 1)
                rms_px = float(np.sqrt(np.mean((x - corr["field_x"]) ** 2 + (y - corr["field_y"]) ** 2)))
                rms = rms_px * scale
        except (OSError, ValueError, KeyError, IndexError):
            pass
    return Solution(ra_deg=float(ra) % 360.0, dec_deg=float(dec), rotation=rotation, pixel_scale=scale,
                    wcs_header=cards, n_matched=int(n_matched), rms_arcsec=float(rms),
                    method="solve-field", seconds=float(seconds), width=int(width),
                    height=int(height), parity=parity)


# ---------------------------------------------------------------------------
# Both


def _header_float(header: Mapping, *keys: str) -> float | None:
    for key in keys:
        value = header.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def solve(path_or_array, ra_hint: float | None = None, dec_hint: float | None = None,
          pixel_scale_arcsec: float | None = None, *, catalog=None, rotation_hint: float = 0.0,
          max_offset_deg: float = 5.0, radius_deg: float = 15.0, downsample: int = 2,
          timeout_s: float = 60.0, workdir: str | os.PathLike | None = None,
          use_fast: bool = True, use_solve_field: bool = True,
          scale_tolerance: float = 0.03) -> Solution | None:
    """Solve a frame: the fast solver first, then solve-field.

    Hints left out are taken from the FITS header when it has them
    (RA-MNT/DEC-MNT, else RA/DEC, in degrees; PIXSCALE, else XPIXSZ and
    FOCALLEN). The fast solver needs all of position and scale; solve-field
    uses what there is (a blind solve can be slow: ``timeout_s`` bounds it).
    Returns None if neither solved. ``seconds`` of the result covers
    everything done here (reading, extraction, the failed fast attempt).
    Raises SolveError for an unreadable image, a missing catalogue, or a
    missing or failing solve-field when it was needed.
    """
    t0 = time.perf_counter()
    image, binning, shape, header, label = _load_image(path_or_array)
    if ra_hint is None or dec_hint is None:
        ra_h, dec_h = _header_float(header, "RA-MNT", "RA"), _header_float(header, "DEC-MNT", "DEC")
        if ra_h is not None and dec_h is not None:
            ra_hint, dec_hint = ra_h, dec_h
    if pixel_scale_arcsec is None:
        pixel_scale_arcsec = _header_float(header, "PIXSCALE")
        if pixel_scale_arcsec is None:
            pixel_um, focal_mm = _header_float(header, "XPIXSZ"), _header_float(header, "FOCALLEN")
            if pixel_um and focal_mm:
                pixel_scale_arcsec = 206.265 * pixel_um / focal_mm
    have_hints = ra_hint is not None and dec_hint is not None and pixel_scale_arcsec
    if use_fast and have_hints:
        from observatory.catalog import CatalogError

        sources = _extract(image, binning, label, 300, 5.0)
        try:
            solution = fast_solve(sources, shape, ra_hint, dec_hint, pixel_scale_arcsec, catalog,
                                  rotation_hint, max_offset_deg=max_offset_deg,
                                  scale_tolerance=scale_tolerance)
        except CatalogError as exc:
            raise SolveError(f"{label}: no star catalogue for the fast solver: {exc}") from exc
        if solution is not None:
            return solution.with_seconds(time.perf_counter() - t0)
    if not use_solve_field:
        return None
    del image
    tmp_file = None
    try:
        if isinstance(path_or_array, np.ndarray):
            fd, tmp_name = tempfile.mkstemp(prefix="solve-", suffix=".fits",
                                            dir=str(workdir) if workdir else None)
            os.close(fd)
            tmp_file = Path(tmp_name)
            fits.PrimaryHDU(np.asarray(path_or_array)).writeto(tmp_file, overwrite=True)
            target = tmp_file
        else:
            target = Path(path_or_array)
        low = high = None
        if pixel_scale_arcsec:
            low, high = pixel_scale_arcsec * (1 - 2 * scale_tolerance), pixel_scale_arcsec * (1 + 2 * scale_tolerance)
        solution = solve_field(target, ra_hint, dec_hint, radius_deg if ra_hint is not None else None,
                               low, high, downsample, timeout_s, workdir)
    finally:
        if tmp_file is not None:
            tmp_file.unlink(missing_ok=True)
    if solution is None:
        return None
    return solution.with_seconds(time.perf_counter() - t0)

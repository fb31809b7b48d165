"""Image files and quick-look measurements: atomic FITS writing, lossless
fpack-style compression (``.fits.fz``), source extraction with sep (background, star count, FWHM, ellipticity) and the
pixel drift between two frames.

Pure functions, no actor code. Images travel between processes as file paths,
so everything here accepts a path (and, for tests and in-process callers, an
array).
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import sep
from astropy.io import fits

__all__ = [
    "ImageError",
    "CompressionError",
    "CompressedFrame",
    "FrameMetrics",
    "as_fits_header",
    "write_fits_atomic",
    "write_wcs",
    "read_image",
    "read_header",
    "compress_frame",
    "remove_plain",
    "find_twins",
    "measure_frame",
    "measure_drift",
]

# sep's default pixel stack (300k) overflows on a full DSLR frame with bright
# stars; 2M pixels costs about 50 MB only while extracting.
_PIXSTACK = 2_000_000
_MAX_SOURCES_KEPT = 200
# Sources closer than this to the frame edge have centroids and shapes biased
# by the cut-off part of their profile.
_EDGE_MARGIN_PX = 8
# A pixel-integrated image of a point can be no narrower than about 1 px FWHM
# (a single hot pixel or cosmic ray measures about 0.7): anything narrower is
# not a star.
_MIN_STAR_FWHM_PX = 1.0
# FWHM^2 of a Gaussian with the variance of a unit box (1/12 px^2).
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_PIXEL_FWHM2_PX2 = _FWHM_PER_SIGMA ** 2 / 12.0
# sep's background time grows with the number of meshes: 128 px meshes halve
# it on a full frame and still follow the smooth sky of a wide field; small
# frames keep 64 px so that they have enough meshes.
_BIG_FRAME_PX = 2048


class ImageError(ValueError):
    """An image file (or array) cannot be used; the message names which and why."""


# ---------------------------------------------------------------------------
# Writing


def as_fits_header(header: Mapping | fits.Header | None) -> fits.Header:
    """A ``fits.Header`` from a dict of values or (value, comment) tuples (or a copy of a Header)."""
    if header is None:
        return fits.Header()
    if isinstance(header, fits.Header):
        return header.copy()
    out = fits.Header()
    for key, item in header.items():
        value, comment = item if isinstance(item, tuple) else (item, None)
        if isinstance(value, (float, np.floating)):
            # FITS cannot store NaN/inf; an undefined value keeps the keyword.
            if not math.isfinite(value):
                value = None
        if isinstance(value, np.generic):
            value = value.item()
        # Long keys would otherwise become HIERARCH cards with a warning each.
        card_key = key if len(key) <= 8 else f"HIERARCH {key}"
        out[card_key] = (value, comment) if comment is not None else value
    return out


def write_fits_atomic(path: str | os.PathLike, data: np.ndarray,
                      header: Mapping | fits.Header | None = None) -> Path:
    """Write ``data`` with ``header`` as a single-HDU FITS file at ``path``.

    The file is written under a temporary name in the same directory, flushed
    to disk, then renamed over ``path``: readers (and a crash or power cut)
    see either no file or the complete one, never half of it. ``header`` is a
    ``fits.Header`` or a dict whose values are plain values or
    ``(value, comment)`` tuples; non-finite floats are written as undefined.
    Returns the final path.
    """
    hdu = fits.PrimaryHDU(data=np.asarray(data), header=as_fits_header(header))
    return _write_atomic(Path(path), hdu)


def _write_atomic(path: Path, hdus, verify=None) -> Path:
    """Write an HDU (or HDUList) to a hidden temporary beside ``path``
    (``.<name>.<random>.part``), fsync it, call ``verify(temporary path)`` if
    given (it raises to refuse the file), rename it over ``path`` and fsync the
    directory. On any failure the temporary is removed and ``path`` is as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        # mkstemp creates 0600; archive and analysis readers may be other users.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as stream:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", fits.verify.VerifyWarning)
                try:
                    hdus.writeto(stream)
                except AttributeError as exc:
                    # astropy's free-space check, handling the OSError of a full disk
                    # while writing to a stream, fails itself: raise the real error.
                    cause = exc.__context__
                    if isinstance(cause, OSError):
                        if cause.errno:
                            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from cause
                        raise OSError(errno.ENOSPC, f"No space left on device? ({cause})", str(path)) from cause
                    raise
            stream.flush()
            os.fsync(stream.fileno())
        if verify is not None:
            verify(Path(tmp_name))
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    """A rename or unlink is only durable once the directory entry itself is on disk."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_wcs(path: str | os.PathLike, solution) -> Path:
    """Add a plate solution's WCS (and where it came from) to a frame's header.
    The file is rewritten atomically, like every frame: a crash leaves the
    frame as it was, never half-updated. A compressed frame (``.fits.fz``)
    stays compressed, verified like ``compress_frame``'s."""
    data, header = read_image(path)
    header = _without_layout(header)     # the data's own layout is written afresh
    for key, value in solution.wcs_header.items():
        header[key] = value
    header["SOLVED"] = (True, "WCS from a plate solve")
    header["SOLVEMTH"] = (solution.method, "plate solver: fast or solve-field")
    header["SOLVNMAT"] = (int(solution.n_matched), "stars matched to the catalogue")
    header["SOLVRMS"] = (round(float(solution.rms_arcsec), 3), "[arcsec] RMS of the match")
    if is_compressed(path):
        _write_compressed(Path(path), data, header, label=str(path))
        return Path(path)
    return write_fits_atomic(path, data, header)


# ---------------------------------------------------------------------------
# Reading


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, fits.Header]:
    """The first 2-D image in a FITS file and its header (for a ``.fits.fz``,
    the compressed image in extension 1, decompressed).

    Raises ImageError (naming the file) for a missing or unreadable file, a
    file that is not FITS, a file without image data, or an image that is not
    two-dimensional.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file")
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                if getattr(hdu, "is_image", False) and hdu.data is not None:
                    data, header = hdu.data, hdu.header.copy()
                    break
            else:
                raise ImageError(f"{path}: no image data in any HDU")
    except ImageError:
        raise
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise ImageError(f"{path}: not a readable FITS file ({exc})") from exc
    if data.ndim != 2:
        raise ImageError(f"{path}: expected a 2-D image, got shape {data.shape}")
    return data, header


def read_header(path: str | os.PathLike) -> fits.Header:
    """The header of a frame's image: the primary header of a plain FITS file,
    extension 1's image header of a ``.fits.fz`` (whose primary header is
    empty). The pixels are not read. Raises ImageError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found" if not path.exists() else f"{path}: not a regular file")
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                if getattr(hdu, "is_image", False) and hdu.header.get("NAXIS", 0):
                    return hdu.header.copy()
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise ImageError(f"{path}: not a readable FITS file ({exc})") from exc
    raise ImageError(f"{path}: no image in any HDU")


# ---------------------------------------------------------------------------
# Compression: the fpack format (tile-compressed FITS, ``.fits.fz``)

#: ``images.compress`` values: "none" keeps frames as written, "rice" rewrites
#: each analysed frame as ``<name>.fits.fz``.
COMPRESSION_CHOICES = ("none", "rice")
COMPRESSED_SUFFIX = ".fz"
# Layout keywords: written afresh from the data whatever the file's form
# (primary HDU, image extension, or the compressed table behind a .fits.fz).
_LAYOUT_KEYS = frozenset({"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND",
                          "PCOUNT", "GCOUNT", "BZERO", "BSCALE"})


class CompressionError(ImageError):
    """A frame could not be compressed (or its compressed form did not verify).
    The message names the file; the original frame is untouched."""


@dataclass(frozen=True)
class CompressedFrame:
    """What ``compress_frame`` did. ``source`` still exists: it is removed
    (``remove_plain``) only once the exposure's record names ``path``."""

    source: Path
    path: Path
    algorithm: str            # RICE_1 (integer pixels) or GZIP_2 (floating point, lossless)
    source_bytes: int
    compressed_bytes: int
    seconds: float            # read, compress, write, fsync, read back and compare

    @property
    def ratio(self) -> float:
        """Original size over compressed size (2.0: half the disk)."""
        return self.source_bytes / self.compressed_bytes if self.compressed_bytes else math.inf

    def to_dict(self) -> dict:
        """For the frame's figures (exposures.metrics): the archive moves the
        record from ``compressed_from`` to ``compressed_path``."""
        return {"compressed_path": str(self.path), "compressed_from": str(self.source),
                "compress_algorithm": self.algorithm, "compress_ratio": round(self.ratio, 3),
                "compress_seconds": round(self.seconds, 3)}


def is_compressed(path: str | os.PathLike) -> bool:
    return str(path).endswith(COMPRESSED_SUFFIX)


def compressed_path(path: str | os.PathLike) -> Path:
    """``x.fits`` -> ``x.fits.fz`` (fpack's naming)."""
    return Path(f"{path}{COMPRESSED_SUFFIX}")


def plain_path(path: str | os.PathLike) -> Path:
    """``x.fits.fz`` -> ``x.fits``; a plain path is returned as it is."""
    text = str(path)
    return Path(text[:-len(COMPRESSED_SUFFIX)] if is_compressed(text) else text)


def _without_layout(header: fits.Header) -> fits.Header:
    header = header.copy()
    for key in _LAYOUT_KEYS:
        header.remove(key, ignore_missing=True, remove_all=True)
    return header


def _read_frame_strictly(path: Path) -> tuple[np.ndarray, fits.Header]:
    """The one image of a plain single-HDU frame, refusing anything that is not
    exactly that: astropy only warns about a truncated file (and may pad it),
    which must never be compressed as if it were the frame."""
    if not path.exists():
        raise CompressionError(f"{path}: file not found; nothing compressed")
    if not path.is_file():
        raise CompressionError(f"{path}: not a regular file; nothing compressed")
    failure = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(path, memmap=False) as hdul:
                if len(hdul) != 1 or hdul[0].data is None:
                    raise CompressionError(f"{path}: not a single-image frame ({len(hdul)} HDU(s)); "
                                           "left uncompressed")
                data = np.array(hdul[0].data)          # a copy that outlives the file
                header = hdul[0].header.copy()
        except CompressionError:
            raise
        except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
            failure = exc
    damage = [str(w.message).splitlines()[0] for w in caught
              if "truncat" in str(w.message).lower() or "corrupt" in str(w.message).lower()]
    if damage:
        raise CompressionError(f"{path}: truncated or damaged FITS file ({damage[0]}); left uncompressed")
    if failure is not None:
        raise CompressionError(f"{path}: not a readable FITS file ({type(failure).__name__}: {failure}); "
                               "left uncompressed") from failure
    if data.ndim != 2:
        raise CompressionError(f"{path}: expected a 2-D image, got shape {data.shape}; left uncompressed")
    return data, header


def _compression_hdus(data: np.ndarray, header: fits.Header) -> tuple[fits.HDUList, str]:
    """fpack's layout: an empty primary HDU, the image tile-compressed (one
    tile per row) as a binary table in extension 1. RICE_1 is lossless for
    integer pixels; floating-point pixels, which RICE_1 would quantise (lossy),
    and 64-bit integers, which it cannot take, get GZIP_2 without quantisation."""
    if data.dtype.kind in "ui" and data.dtype.itemsize <= 4:
        algorithm, options = "RICE_1", {}
    else:
        algorithm, options = "GZIP_2", {"quantize_level": 0}
    hdu = fits.CompImageHDU(data=data, header=_without_layout(header), compression_type=algorithm, **options)
    return fits.HDUList([fits.PrimaryHDU(), hdu]), algorithm


def _header_cards(header: fits.Header) -> list[tuple[str, object]]:
    return [(card.keyword, card.value) for card in header.cards if card.keyword not in _LAYOUT_KEYS]


def _same_pixels(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit (NaN payloads included), whatever the byte order."""
    if a.shape != b.shape or a.dtype.kind != b.dtype.kind or a.dtype.itemsize != b.dtype.itemsize:
        return False
    native = a.dtype.newbyteorder("=")
    return np.array_equal(np.ascontiguousarray(a, dtype=native).view(np.uint8),
                          np.ascontiguousarray(b, dtype=native).view(np.uint8))


def _verify_compressed(written: Path, data: np.ndarray, header: fits.Header, algorithm: str, label: str) -> None:
    """Read a freshly written .fits.fz back: fpack's layout, the same pixels bit
    for bit, the same header cards. Raises CompressionError naming ``label``."""
    def refuse(why: str) -> CompressionError:
        return CompressionError(f"{label}: the compressed copy did not verify ({why}); the original is kept")

    try:
        with fits.open(written, memmap=False, disable_image_compression=True) as raw:
            if len(raw) != 2 or raw[0].header.get("NAXIS") != 0 or not isinstance(raw[1], fits.BinTableHDU) \
                    or raw[1].header.get("ZIMAGE") is not True or raw[1].header.get("ZCMPTYPE") != algorithm:
                raise refuse("not an empty primary HDU and a compressed image table")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(written, memmap=False) as hdul:
                back, back_header = hdul[1].data, hdul[1].header
                if back is None or not _same_pixels(data, back):
                    raise refuse(f"pixels differ: {data.dtype}{data.shape} written, "
                                 f"{None if back is None else f'{back.dtype}{back.shape}'} read back")
                if _header_cards(back_header) != _header_cards(header):
                    lost = {k for k, _ in _header_cards(header)} ^ {k for k, _ in _header_cards(back_header)}
                    raise refuse(f"header differs{f' (keywords {sorted(lost)[:5]})' if lost else ''}")
        if caught:
            raise refuse(f"astropy warned: {str(caught[0].message).splitlines()[0]}")
    except CompressionError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise refuse(f"{type(exc).__name__}: {exc}") from exc


def _write_compressed(target: Path, data: np.ndarray, header: fits.Header, label: str) -> str:
    """Write ``target`` (a .fits.fz) atomically; it replaces an older one only
    once the new one has been read back and verified. Returns the algorithm."""
    hdus, algorithm = _compression_hdus(data, header)
    try:
        _write_atomic(target, hdus, verify=lambda tmp: _verify_compressed(tmp, data, header, algorithm, label))
    except CompressionError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise CompressionError(f"{label}: cannot write {target.name} ({type(exc).__name__}: {exc}); "
                               "the original is kept") from exc
    return algorithm


def compress_frame(path: str | os.PathLike, method: str = "rice") -> CompressedFrame:
    """Rewrite the plain frame ``path`` (``x.fits``) as ``x.fits.fz`` in fpack's
    format, lossless, and verify it.

    The compressed file is written under a temporary name beside the frame,
    fsynced, read back and compared with the frame (pixels bit for bit, every
    header card), and only then renamed into place (then the directory is
    fsynced). The frame itself is NOT removed: the caller removes it with
    ``remove_plain`` once the exposure's record names the new file, so that
    the record and the files agree at every moment a crash could come.
    An existing ``x.fits.fz`` (from an attempt cut short) is replaced.

    Raises CompressionError naming the file when the frame is missing,
    unreadable, truncated, not a single 2-D image, or when the compressed
    copy does not verify; nothing is left behind and the frame is untouched.
    """
    if method not in COMPRESSION_CHOICES or method == "none":
        raise ValueError(f"compression method must be 'rice', got {method!r}")
    t0 = time.perf_counter()
    path = Path(path)
    if is_compressed(path):
        raise CompressionError(f"{path}: already compressed")
    data, header = _read_frame_strictly(path)
    source_bytes = path.stat().st_size
    target = compressed_path(path)
    algorithm = _write_compressed(target, data, header, label=str(path))
    return CompressedFrame(source=path, path=target, algorithm=algorithm, source_bytes=source_bytes,
                           compressed_bytes=target.stat().st_size, seconds=time.perf_counter() - t0)


def remove_file(path: str | os.PathLike) -> bool:
    """Unlink ``path`` durably (the directory is fsynced); False if it was already gone."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    _fsync_directory(path.parent)
    return True


def remove_plain(plain: str | os.PathLike, compressed: str | os.PathLike | None = None) -> bool:
    """Remove a plain frame whose compressed twin is now the recorded one.
    Refuses (CompressionError, nothing removed) when the twin is missing: a
    frame is never removed without its compressed copy. False if the plain
    frame was already gone."""
    compressed = Path(compressed) if compressed is not None else compressed_path(plain)
    if not compressed.is_file():
        raise CompressionError(f"{plain}: its compressed copy {compressed} is missing; the frame is kept")
    return remove_file(plain)


def find_twins(images_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(plain, compressed) pairs under ``images_dir`` where both ``x.fits`` and
    ``x.fits.fz`` exist: compressions cut short before the plain frame was
    removed. Hidden files (temporaries) are ignored."""
    out = []
    for root, dirs, files in os.walk(images_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = set(files)
        for name in sorted(files):
            if name.startswith(".") or not is_compressed(name):
                continue
            plain = name[:-len(COMPRESSED_SUFFIX)]
            if plain in names:
                out.append((Path(root) / plain, Path(root) / name))
    return out


# ---------------------------------------------------------------------------
# Measuring


@dataclass(frozen=True)
class FrameMetrics:
    """Quick-look numbers of one frame (pixel units, ADU for levels).

    ``sources`` holds (x, y, flux) of up to 200 brightest clean sources, with
    0-based pixel coordinates (x along columns, y along rows), for drift
    measurement.
    """

    background: float
    background_rms: float
    n_stars: int
    fwhm_px: float
    ellipticity: float
    sources: tuple[tuple[float, float, float], ...] = ()

    def to_dict(self, include_sources: bool = False) -> dict:
        """JSON-friendly dict; NaN becomes None, sources become lists."""
        def clean(v: float) -> float | None:
            return None if not math.isfinite(v) else float(v)

        out = {
            "background": clean(self.background),
            "background_rms": clean(self.background_rms),
            "n_stars": int(self.n_stars),
            "fwhm_px": clean(self.fwhm_px),
            "ellipticity": clean(self.ellipticity),
        }
        if include_sources:
            out["sources"] = [[float(x), float(y), float(f)] for x, y, f in self.sources]
        return out


def _as_float_image(path_or_array) -> tuple[np.ndarray, float | None, str]:
    """Native-endian float32 copy (sep needs both), saturation level, label."""
    if isinstance(path_or_array, np.ndarray):
        label, data, saturation = "<array>", path_or_array, None
        if data.ndim != 2:
            raise ImageError(f"{label}: expected a 2-D image, got shape {data.shape}")
    else:
        label = str(path_or_array)
        data, header = read_image(path_or_array)
        saturation = header.get("SATURATE")
        saturation = float(saturation) if isinstance(saturation, (int, float)) else None
    if min(data.shape) < 16:
        raise ImageError(f"{label}: image too small to measure ({data.shape})")
    if not (np.issubdtype(data.dtype, np.number) and not np.iscomplexobj(data)):
        raise ImageError(f"{label}: image data is not real numbers ({data.dtype})")
    image = np.ascontiguousarray(data, dtype=np.float32)  # copies: sep subtracts in place
    return image, saturation, label


def _saturation_guess(image: np.ndarray) -> float:
    """Without a SATURATE keyword: clipped stars leave plateaus at the maximum."""
    peak = float(image.max())
    if np.count_nonzero(image >= peak) >= 3:
        return peak
    return math.inf


def _extract(image: np.ndarray, threshold_sigma: float, back_rms: float):
    """sep.extract with a pixel stack sized to the frame: sep allocates the whole
    stack on every call, so a stack sized for the largest frame makes small
    frames ten times slower. Grown and retried if a crowded frame fills it."""
    pixstack = int(min(max(image.size // 8, 300_000), _PIXSTACK))
    while True:
        sep.set_extract_pixstack(pixstack)
        try:
            return sep.extract(image, threshold_sigma, err=back_rms)
        except Exception as exc:  # noqa: BLE001 - sep raises bare Exception
            if "pixel buffer full" not in str(exc) or pixstack >= 8 * _PIXSTACK:
                raise
            pixstack *= 2


def measure_frame(path_or_array, threshold_sigma: float = 5.0,
                  saturation: float | None = None) -> FrameMetrics:
    """Background, star count, FWHM and ellipticity of one frame.

    Detection: sep background (64-px mesh) is subtracted, then sources are
    extracted at ``threshold_sigma`` times the global background RMS.

    Which sources count: sources touching the frame edge (sep's truncation
    flag or centroid within 8 px of the edge) and sources narrower than 1 px
    FWHM (hot pixels, cosmic rays) are dropped; the rest is ``n_stars``.

    FWHM: 2 x sep's half-flux radius (``flux_radius`` at 0.5, aperture 6 a),
    which is exact for a Gaussian and, unlike the isophotal second moments
    (2 sqrt(ln2 (a^2 + b^2))), is not biased low for faint stars whose wings
    sink below the threshold; the pixel width that flux_radius's subpixel
    sampling adds is removed in quadrature. Median over the brighter half of the
    unsaturated, unblended stars. Ellipticity: median of 1 - b/a over the
    same stars, from Gaussian-weighted moments corrected for the weight
    (sep's isophotal a, b understate elongation). Saturated stars (peak within
    2% of ``saturation``, from the argument, else the SATURATE keyword, else
    the plateau at the data maximum) are counted and kept as sources but not
    used for shape.
    """
    image, header_saturation, label = _as_float_image(path_or_array)
    if saturation is None:
        saturation = header_saturation if header_saturation is not None else _saturation_guess(image)
    height, width = image.shape

    try:
        mesh = 128 if min(height, width) >= _BIG_FRAME_PX else 64
        background = sep.Background(image, bw=mesh, bh=mesh)
        back_level, back_rms = float(background.globalback), float(background.globalrms)
        background.subfrom(image)
        objects = _extract(image, threshold_sigma, back_rms)
    except Exception as exc:  # sep raises bare Exception on internal overflows
        raise ImageError(f"{label}: source extraction failed ({exc})") from exc

    if len(objects) == 0 or back_rms <= 0:
        return FrameMetrics(back_level, back_rms, 0, math.nan, math.nan, ())

    x, y = objects["x"], objects["y"]
    inside = ((objects["flag"] & sep.OBJ_TRUNC) == 0) \
        & (x >= _EDGE_MARGIN_PX) & (x <= width - 1 - _EDGE_MARGIN_PX) \
        & (y >= _EDGE_MARGIN_PX) & (y <= height - 1 - _EDGE_MARGIN_PX) \
        & (objects["a"] > 0) & (objects["flux"] > 0)
    objects = objects[inside]
    if len(objects) == 0:
        return FrameMetrics(back_level, back_rms, 0, math.nan, math.nan, ())

    rmax = np.maximum(6.0 * objects["a"], 3.0)
    half_light, _ = sep.flux_radius(image, objects["x"], objects["y"], rmax, 0.5, subpix=5)
    # flux_radius spreads each pixel's value uniformly over the pixel, which
    # widens the profile by the pixel once more (variance 1/12 px^2 a side);
    # removing it gives the FWHM of the star as recorded in the pixels.
    fwhm = np.sqrt(np.maximum((2.0 * half_light) ** 2 - _PIXEL_FWHM2_PX2, 0.0))
    is_star = np.isfinite(fwhm) & (fwhm >= _MIN_STAR_FWHM_PX)
    objects, fwhm = objects[is_star], fwhm[is_star]
    n_stars = len(objects)
    if n_stars == 0:
        return FrameMetrics(back_level, back_rms, 0, math.nan, math.nan, ())

    # 'peak' is background-subtracted; compare the raw level with saturation.
    saturated = objects["peak"] + back_level >= 0.98 * saturation
    for_shape = ~saturated & ((objects["flag"] & sep.OBJ_MERGED) == 0)
    fwhm_px = ellipticity = math.nan
    if np.any(for_shape):
        shape_flux = objects["flux"][for_shape]
        brighter_half = shape_flux >= np.median(shape_flux)
        fwhm_px = float(np.median(fwhm[for_shape][brighter_half]))
        shape_stars = objects[for_shape][brighter_half]
        ellipticities = _weighted_ellipticity(image, shape_stars["x"], shape_stars["y"],
                                              sigma_w=max(fwhm_px, _MIN_STAR_FWHM_PX) / _FWHM_PER_SIGMA)
        ellipticities = ellipticities[np.isfinite(ellipticities)]
        if len(ellipticities):
            ellipticity = float(np.median(ellipticities))

    order = np.argsort(objects["flux"])[::-1][:_MAX_SOURCES_KEPT]
    sources = tuple((float(objects["x"][i]), float(objects["y"][i]), float(objects["flux"][i]))
                    for i in order)
    return FrameMetrics(back_level, back_rms, n_stars, fwhm_px, ellipticity, sources)


def _weighted_ellipticity(image: np.ndarray, x: np.ndarray, y: np.ndarray,
                          sigma_w: float) -> np.ndarray:
    """1 - b/a of each star from Gaussian-weighted second moments.

    sep's a and b come from the pixels above the detection isophote, found on
    the filtered (rounder) image: they underestimate elongation by a fifth or
    more. Moments under a circular Gaussian weight of width sigma_w are
    instead exact for a Gaussian star once the weight is divided out:
    C = (M^-1 - I / sigma_w^2)^-1. NaN where noise makes that undefined.
    """
    height, width = image.shape
    r = int(math.ceil(3.0 * sigma_w))
    xc, yc = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    whole = (xc - r >= 0) & (xc + r < width) & (yc - r >= 0) & (yc + r < height)
    result = np.full(len(x), np.nan)
    if not np.any(whole):
        return result
    offsets = np.arange(-r, r + 1)
    rows = (yc[whole][:, None] + offsets)[:, :, None]
    cols = (xc[whole][:, None] + offsets)[:, None, :]
    stamps = image[rows, cols].astype(np.float64)
    dx = cols - x[whole][:, None, None]
    dy = rows - y[whole][:, None, None]
    weighted = stamps * np.exp(-(dx * dx + dy * dy) / (2.0 * sigma_w ** 2))
    total = weighted.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = (weighted * dx).sum(axis=(1, 2)) / total
        my = (weighted * dy).sum(axis=(1, 2)) / total
        dx, dy = dx - mx[:, None, None], dy - my[:, None, None]
        mxx = (weighted * dx * dx).sum(axis=(1, 2)) / total
        myy = (weighted * dy * dy).sum(axis=(1, 2)) / total
        mxy = (weighted * dx * dy).sum(axis=(1, 2)) / total
        # Inverse of the measured moments, minus the weight's inverse.
        det = mxx * myy - mxy * mxy
        ixx, iyy, ixy = myy / det - 1.0 / sigma_w ** 2, mxx / det - 1.0 / sigma_w ** 2, -mxy / det
        # The eigenvalues of the inverse are 1/a^2 and 1/b^2.
        half_trace, half_diff = (ixx + iyy) / 2.0, np.hypot((ixx - iyy) / 2.0, ixy)
        inv_a2, inv_b2 = half_trace - half_diff, half_trace + half_diff
        e = 1.0 - np.sqrt(inv_a2 / inv_b2)
    valid = (total > 0) & (det > 0) & (inv_a2 > 0)
    result[np.flatnonzero(whole)[valid]] = e[valid]
    return result


# ---------------------------------------------------------------------------
# Drift


def _brightest_xy(sources: Iterable[Sequence[float]], n: int) -> np.ndarray:
    arr = np.asarray([tuple(s)[:3] for s in sources], dtype=float).reshape(-1, 3)
    arr = arr[np.all(np.isfinite(arr), axis=1)]
    return arr[np.argsort(arr[:, 2])[::-1][:n], :2]


def _match(ref: np.ndarray, cur: np.ndarray, shift: np.ndarray, radius: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one nearest neighbours of ref+shift in cur within ``radius``."""
    d = np.linalg.norm(ref[:, None, :] + shift - cur[None, :, :], axis=2)
    nearest_cur = np.argmin(d, axis=1)
    nearest_ref = np.argmin(d, axis=0)
    ref_idx = np.arange(len(ref))
    mutual = (nearest_ref[nearest_cur] == ref_idx) & (d[ref_idx, nearest_cur] <= radius)
    return ref_idx[mutual], nearest_cur[mutual]


def measure_drift(ref_sources: Iterable[Sequence[float]], sources: Iterable[Sequence[float]],
                  max_shift_px: float = 50.0, min_matches: int = 5,
                  n_brightest: int = 150, match_radius_px: float = 2.0
                  ) -> tuple[float, float, int] | None:
    """Pixel offset of a frame relative to a reference frame, from their stars.

    ``ref_sources`` and ``sources`` are (x, y, flux) sequences such as
    ``FrameMetrics.sources``. Returns ``(dx, dy, n_matched)`` where a star at
    (x, y) in the reference lies at (x + dx, y + dy) in the current frame, or
    None when fewer than ``min_matches`` stars agree on a shift within
    ``max_shift_px``.

    Method: every pair (reference star, current star) among the brightest
    ``n_brightest`` of each votes for its offset in a 2-D histogram of
    ``match_radius_px`` bins; unrelated pairs spread thinly over the
    histogram while true pairs pile up in one bin. The winning offset seeds a
    mutual nearest-neighbour match, refined twice with the median offset of
    the matched pairs (robust to a few wrong matches). Pure translation:
    enough for tracking drift between frames of one field, not for rotation.
    """
    ref = _brightest_xy(ref_sources, n_brightest)
    cur = _brightest_xy(sources, n_brightest)
    if len(ref) < min_matches or len(cur) < min_matches:
        return None

    offsets = (cur[None, :, :] - ref[:, None, :]).reshape(-1, 2)
    offsets = offsets[np.all(np.abs(offsets) <= max_shift_px, axis=1)]
    if len(offsets) < min_matches:
        return None
    bin_px = match_radius_px
    n_bins = max(1, int(math.ceil(2 * max_shift_px / bin_px)))
    edges = np.linspace(-max_shift_px, max_shift_px, n_bins + 1)
    votes, _, _ = np.histogram2d(offsets[:, 0], offsets[:, 1], bins=(edges, edges))
    # A true offset near a bin corner splits its votes: score 2x2 neighbourhoods.
    padded = np.pad(votes, 1)
    score = padded[:-1, :-1] + padded[1:, :-1] + padded[:-1, 1:] + padded[1:, 1:]
    # score[i, j] covers the bins around the histogram corner (edges[i], edges[j]).
    ix, iy = np.unravel_index(np.argmax(score), score.shape)
    near = np.all(np.abs(offsets - (edges[ix], edges[iy])) <= bin_px, axis=1)
    if np.count_nonzero(near) < min_matches:
        return None
    shift = np.median(offsets[near], axis=0)

    radius = 2.0 * match_radius_px
    for _ in range(3):
        ri, ci = _match(ref, cur, shift, radius)
        if len(ri) < min_matches:
            return None
        shift = np.median(cur[ci] - ref[ri], axis=0)
        radius = match_radius_px
    if np.any(np.abs(shift) > max_shift_px):
        return None
    return float(shift[0]), float(shift[1]), int(len(ri))

"""Real stars, offline: a catalogue read from astrometry.net's Tycho-2 index files.

Debian's ``astrometry-data-tycho2-10-19`` package installs
``/usr/share/astrometry/index-tycho2-1[0-9].littleendian.fits``: the index
files that ``solve-field`` uses for fields of about 1 to 33 degrees. Each
file is a FITS file of binary tables; the ones that matter here are

- ``kdtree_data_stars``: the star kd-tree's points, unit vectors (x, y, z)
  on the celestial sphere (x towards RA 0 Dec 0, z towards the north pole),
  stored as scaled unsigned integers (usually 3 x u32 per star, in the
  file's byte order, given by the primary header's ``ENDIAN`` card);
- ``kdtree_range_stars``: 7 doubles, the lower bounds (3), the upper
  bounds (3) and the scale (tree units per data unit) that turn those
  integers back into coordinates: ``xyz = low + code / scale``;
- a tag-along table (``AN_FILE = 'TAGALONG'``) with one row per star, here
  holding ``MAG_VT`` (Tycho VT magnitude), in the same order as the tree;
- ``sweep``: the uniformization pass in which each star was picked.

The index files are *uniformized*: ``build-astrometry-index`` keeps, in
each healpix cell (nside 55, about 1.1 square degrees, for index 10), the
brightest star of each of 10 sweeps, so index 10 holds the ~10 brightest
Tycho-2 stars per cell: 362,950 stars, about 9 per square degree, complete
to roughly VT 9-10 (brighter in the Milky Way, fainter towards the galactic
poles; the faintest reach VT 13). The coarser indexes 11-19 are subsets made
the same way on larger cells; their union with index 10 adds about 1,100
stars. This catalogue takes the union of every installed
``index-tycho2-*.fits`` file, duplicates removed, so a denser set (e.g.
Debian's ``astrometry-data-tycho2-07``/``-08``/``-09`` packages) is used
when installed.

Things to know:

- Positions are those of the index files, i.e. Tycho-2's observed epoch
  (about J1991.25) in ICRS, without proper motion: stars such as Arcturus
  are off by their motion since then (20 arcsec for Arcturus, a few arcsec
  for most bright stars, far under a pixel of a 10"/px DSLR frame).
- Tycho-2 itself lacks a handful of the brightest stars (they are in its
  supplement, which the index does not include): Sirius, Vega and Polaris,
  for example, are absent.
- If an index file has no magnitude column, the star's sweep number stands
  in for a magnitude (sweep 0 holds the brightest star of each cell), mapped
  onto the range of the files that do have magnitudes; see ``_pseudo_mag``.

The merged catalogue (ra, dec, mag, sorted by dec) is cached as one small
``.npy`` file (about 7 MB) keyed by the index files' names, sizes and
modification times, so a later load takes milliseconds instead of a decode
of every index file.
"""
from __future__ import annotations

import hashlib
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["CatalogError", "Tycho2Catalog", "default_index_dirs", "default_cache_dir",
           "shared_tycho2"]

DEBIAN_PACKAGE = "astrometry-data-tycho2-10-19"
INDEX_GLOB = "index-tycho2-*.fits"
_CACHE_VERSION = 1
_CACHE_DTYPE = np.dtype([("ra", "<f8"), ("dec", "<f8"), ("mag", "<f4")])
# Two copies of a star in different index files decode to the same integer
# codes; rounding the unit vector to 1e-9 (0.2 mas) merges them safely.
_DEDUP_UNIT = 1e-9


class CatalogError(RuntimeError):
    """The star catalogue cannot be loaded; the message says what is missing."""


def default_index_dirs() -> list[Path]:
    """Where the index files are looked for, in order.

    ``$ASTROMETRY_INDEX_DIR`` first if set, then Debian's and a source
    install's usual places.
    """
    dirs = []
    env = os.environ.get("ASTROMETRY_INDEX_DIR")
    if env:
        dirs.append(Path(env))
    dirs += [Path("/usr/share/astrometry"), Path("/usr/local/share/astrometry"),
             Path("/usr/local/astrometry/data")]
    return dirs


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/observatory`` (``~/.cache/observatory`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "observatory"


class Tycho2Catalog:
    """Real stars from the astrometry.net Tycho-2 index files.

    Same interface as ``simulators.camera.SkyCatalog``: ``stars_near(ra, dec,
    radius)`` returns (ra, dec, mag) arrays in degrees and magnitudes.

    Arguments (all optional):

    - ``index_dir``: a directory holding ``index-tycho2-*.fits``, or a list
      of index files; default: the first of ``default_index_dirs()`` that
      holds any.
    - ``cache_dir``: where the merged ``.npy`` cache goes (default
      ``default_cache_dir()``); ``cache=False`` never reads or writes one.
      An unwritable cache directory only costs the speed-up.
    - ``limit_mag``: drop stars fainter than this.

    Nothing is read until the first query (or ``load()``); loading is
    thread-safe, and the arrays are shared read-only afterwards.
    """

    def __init__(self, index_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                 cache_dir: str | os.PathLike | None = None, cache: bool = True,
                 limit_mag: float | None = None):
        self._index_arg = index_dir
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache = bool(cache)
        self.limit_mag = None if limit_mag is None else float(limit_mag)
        self._lock = threading.Lock()
        self._ra: np.ndarray | None = None
        self._dec: np.ndarray | None = None
        self._mag: np.ndarray | None = None
        self.files: list[Path] = []
        self.cache_path: Path | None = None
        self.loaded_from: str | None = None   # "cache" or "index" once loaded

    # -- loading ------------------------------------------------------------

    def index_files(self) -> list[Path]:
        """The index files this catalogue reads; CatalogError if there are none."""
        arg = self._index_arg
        if arg is not None and not isinstance(arg, (str, os.PathLike)):
            files = [Path(p) for p in arg]
            missing = [str(p) for p in files if not p.is_file()]
            if missing or not files:
                raise CatalogError(f"Tycho-2 index file(s) not found: {missing or '(none given)'}; "
                                   f"install the Debian package {DEBIAN_PACKAGE} "
                                   f"(apt install {DEBIAN_PACKAGE})")
            return files
        dirs = [Path(arg)] if arg is not None else default_index_dirs()
        for d in dirs:
            files = sorted(d.glob(INDEX_GLOB)) if d.is_dir() else []
            if files:
                return files
        raise CatalogError(
            f"no Tycho-2 index files ({INDEX_GLOB}, e.g. index-tycho2-10.littleendian.fits) in "
            f"{', '.join(str(d) for d in dirs)}; install the Debian package {DEBIAN_PACKAGE} "
            f"(apt install {DEBIAN_PACKAGE}) or set ASTROMETRY_INDEX_DIR")

    def load(self) -> "Tycho2Catalog":
        """Load now (from the cache if it is valid, else from the index files)."""
        with self._lock:
            if self._ra is not None:
                return self
            files = self.index_files()
            self.files = files
            table = None
            if self.cache:
                self.cache_path = self.cache_dir / f"tycho2-{_files_key(files)}.npy"
                table = _read_cache(self.cache_path)
            if table is not None:
                self.loaded_from = "cache"
            else:
                table = _merge(files)
                self.loaded_from = "index"
                if self.cache and self.cache_path is not None:
                    _write_cache(self.cache_path, table)
            if self.limit_mag is not None:
                table = table[table["mag"] <= self.limit_mag]
            self._ra = np.ascontiguousarray(table["ra"], dtype=np.float64)
            self._dec = np.ascontiguousarray(table["dec"], dtype=np.float64)
            self._mag = np.ascontiguousarray(table["mag"], dtype=np.float64)
            for arr in (self._ra, self._dec, self._mag):
                arr.setflags(write=False)
        return self

    def __len__(self) -> int:
        self.load()
        return len(self._ra)

    # -- queries ------------------------------------------------------------

    def stars_near(self, ra_deg: float, dec_deg: float, radius_deg: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ra, dec, mag) arrays of every star within ``radius_deg`` of (ra, dec)."""
        self.load()
        radius_deg = float(radius_deg)
        if not (math.isfinite(ra_deg) and math.isfinite(dec_deg) and math.isfinite(radius_deg)):
            raise ValueError(f"bad query ra={ra_deg} dec={dec_deg} radius={radius_deg}")
        lo = np.searchsorted(self._dec, dec_deg - radius_deg, side="left")
        hi = np.searchsorted(self._dec, dec_deg + radius_deg, side="right")
        ra, dec, mag = self._ra[lo:hi], self._dec[lo:hi], self._mag[lo:hi]
        if radius_deg < 180.0:
            # Haversine: accurate for small separations too.
            d0, r0 = math.radians(dec_deg), math.radians(ra_deg)
            dec_r = np.radians(dec)
            h = np.sin((dec_r - d0) / 2.0) ** 2 + \
                math.cos(d0) * np.cos(dec_r) * np.sin((np.radians(ra) - r0) / 2.0) ** 2
            inside = h <= math.sin(math.radians(radius_deg) / 2.0) ** 2
            ra, dec, mag = ra[inside], dec[inside], mag[inside]
        return ra.copy(), dec.copy(), mag.copy()

    def brightest_near(self, ra_deg: float, dec_deg: float, radius_deg: float, n: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``n`` brightest stars within ``radius_deg``, brightest first."""
        ra, dec, mag = self.stars_near(ra_deg, dec_deg, radius_deg)
        order = np.argsort(mag, kind="stable")[:max(0, int(n))]
        return ra[order], dec[order], mag[order]


_shared: dict[tuple, Tycho2Catalog] = {}
_shared_lock = threading.Lock()


def shared_tycho2(limit_mag: float | None = None) -> Tycho2Catalog:
    """One process-wide default catalogue per magnitude limit (loaded lazily)."""
    key = (limit_mag,)
    with _shared_lock:
        catalog = _shared.get(key)
        if catalog is None:
            catalog = _shared[key] = Tycho2Catalog(limit_mag=limit_mag)
        return catalog


# ---------------------------------------------------------------------------
# Index files


def _files_key(files: Iterable[Path]) -> str:
    h = hashlib.sha1(f"v{_CACHE_VERSION}".encode())
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _read_cache(path: Path) -> np.ndarray | None:
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if table.dtype != _CACHE_DTYPE or table.ndim != 1:
        return None
    return table


def _write_cache(path: Path, table: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, table, allow_pickle=False)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with _suppress_os_error():
                os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only or full cache directory only costs speed


class _suppress_os_error:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, OSError)


def _merge(files: Sequence[Path]) -> np.ndarray:
    """Union of the stars of every index file, duplicates removed, sorted by dec."""
    xyz_parts, mag_parts, has_mag = [], [], []
    for f in files:
        xyz, mag, sweep = read_index_stars(f)
        xyz_parts.append(xyz)
        if mag is None:
            mag_parts.append(sweep)
            has_mag.append(False)
        else:
            mag_parts.append(mag)
            has_mag.append(True)
    # Files without magnitudes get a pseudo-magnitude from their sweep,
    # scaled onto the range of the real ones.
    real = [m for m, ok in zip(mag_parts, has_mag) if ok and len(m)]
    lo, hi = (float(min(np.min(m) for m in real)), float(max(np.max(m) for m in real))) \
        if real else (0.0, 12.0)
    mag_parts = [m.astype(np.float64) if ok else _pseudo_mag(m, lo, hi)
                 for m, ok in zip(mag_parts, has_mag)]
    xyz = np.concatenate(xyz_parts)
    mag = np.concatenate(mag_parts)
    real_mag = np.concatenate([np.full(len(m), ok) for m, ok in zip(mag_parts, has_mag)])
    if len(xyz) == 0:
        raise CatalogError(f"no stars in {', '.join(map(str, files))}")
    # Deduplicate, keeping a real magnitude over a pseudo one.
    keys = np.round(xyz / _DEDUP_UNIT).astype(np.int64)
    order = np.lexsort((~real_mag, keys[:, 2], keys[:, 1], keys[:, 0]))
    k = keys[order]
    first = np.ones(len(k), dtype=bool)
    first[1:] = np.any(k[1:] != k[:-1], axis=1)
    keep = order[first]
    xyz, mag = xyz[keep], mag[keep]
    ra = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(xyz[:, 2], -1.0, 1.0)))
    table = np.empty(len(ra), dtype=_CACHE_DTYPE)
    table["ra"], table["dec"], table["mag"] = ra, dec, mag
    return table[np.argsort(dec, kind="stable")]


def _pseudo_mag(sweep: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A stand-in magnitude from the sweep number: lower sweeps hold brighter stars."""
    s = sweep.astype(np.float64)
    top = max(float(s.max()) if len(s) else 1.0, 1.0)
    return lo + (hi - lo) * s / top


def read_index_stars(path: str | os.PathLike
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Unit vectors (n, 3), magnitudes (or None) and sweep numbers of one index file.

    Raises CatalogError naming the file when it is not a readable
    astrometry.net index.
    """
    from astropy.io import fits  # imported here: module import stays cheap

    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            endian = str(hdul[0].header.get("ENDIAN", "04:03:02:01")).strip()
            order = ">" if endian == "01:02:03:04" else "<"
            tables = {}
            for hdu in hdul[1:]:
                name = str(hdu.header.get("TTYPE1", "")).strip()
                if name:
                    tables[name] = hdu
            if "kdtree_data_stars" not in tables or "kdtree_range_stars" not in tables:
                raise CatalogError(f"{path}: not an astrometry.net index file "
                                   "(no kdtree_data_stars / kdtree_range_stars tables)")
            data_hdu = tables["kdtree_data_stars"]
            row_bytes = int(data_hdu.header["NAXIS1"])
            n = int(data_hdu.header["NAXIS2"])
            raw = _raw_bytes(data_hdu)
            rng = np.frombuffer(_raw_bytes(tables["kdtree_range_stars"]), dtype=f"{order}f8")
            if row_bytes == 24:
                xyz = np.frombuffer(raw, dtype=f"{order}f8").reshape(n, 3).astype(np.float64)
            elif row_bytes in (12, 6):
                code = "u4" if row_bytes == 12 else "u2"
                codes = np.frombuffer(raw, dtype=f"{order}{code}").reshape(n, 3)
                if len(rng) < 7 or not rng[6] > 0:
                    raise CatalogError(f"{path}: bad kdtree_range_stars table")
                xyz = rng[:3] + codes.astype(np.float64) / rng[6]
            else:
                raise CatalogError(f"{path}: unsupported star kd-tree row size {row_bytes} bytes")
            mag = None
            for name, hdu in tables.items():
                if str(hdu.header.get("AN_FILE", "")).strip() == "TAGALONG" or "MAG" in name.upper():
                    columns = [c for c in hdu.columns.names if "MAG" in c.upper()]
                    if columns and hdu.data is not None and len(hdu.data) == n:
                        mag = np.asarray(hdu.data[columns[0]], dtype=np.float64)
                        break
            if "sweep" in tables and tables["sweep"].data is not None and len(tables["sweep"].data) == n:
                sweep = np.asarray(tables["sweep"].data["sweep"], dtype=np.int64)
            else:
                sweep = np.zeros(n, dtype=np.int64)
    except CatalogError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CatalogError(f"{path}: cannot read the index file ({exc})") from exc
    norm = np.linalg.norm(xyz, axis=1)
    good = np.isfinite(norm) & (np.abs(norm - 1.0) < 1e-3)
    if mag is not None:
        good &= np.isfinite(mag)
        mag = mag[good]
    return xyz[good] / norm[good, None], mag, sweep[good]


def _raw_bytes(hdu) -> bytes:
    """A one-column, fixed-width byte table's payload as it is in the file."""
    data = hdu.data
    if data is None or len(data) == 0:
        return b""
    # The tables hold one 'nA' (character) column of packed binary values:
    # take the record bytes directly, not the decoded strings (which would
    # drop trailing NUL bytes).
    return np.asarray(data).tobytes()

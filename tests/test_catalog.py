"""The Tycho-2 catalogue read from astrometry.net's index files.

Tests that need the Debian index files skip when they are missing, except
under CI=true, where a missing package is a failure.
"""
import math
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from observatory import catalog as catalog_module
from observatory.catalog import CatalogError, Tycho2Catalog, read_index_stars, shared_tycho2


def _installed() -> bool:
    try:
        Tycho2Catalog().index_files()
        return True
    except CatalogError:
        return False


needs_index = pytest.mark.skipif(
    not _installed() and os.environ.get("CI") != "true",
    reason="astrometry.net Tycho-2 index files not installed (Debian astrometry-data-tycho2-10-19)")


def separation_arcsec(ra1, dec1, ra2, dec2):
    r = np.radians
    h = np.sin(r(dec2 - dec1) / 2) ** 2 + np.cos(r(dec1)) * np.cos(r(dec2)) * np.sin(r(ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(h))) * 3600


@pytest.fixture(scope="module")
def tycho2():
    return shared_tycho2().load()


# Bright stars (J2000, Hipparcos); the index holds Tycho-2's epoch-1991.25
# positions, so only stars of small proper motion are compared tightly.
BRIGHT = [
    ("Betelgeuse", 88.79294, 7.40706, 0.5),
    ("Rigel", 78.63447, -8.20164, 0.2),
    ("Deneb", 310.35798, 45.28034, 1.3),
    ("Capella", 79.17233, 45.99799, 0.2),   # 0.43"/yr: ~4" since 1991
]


@needs_index
@pytest.mark.parametrize("name, ra, dec, v", BRIGHT)
def test_bright_stars_are_where_they_should_be(tycho2, name, ra, dec, v):
    ras, decs, mags = tycho2.stars_near(ra, dec, 0.05)
    sep = separation_arcsec(ras, decs, ra, dec)
    i = int(np.argmin(sep))
    assert sep[i] < 6.0, f"{name}: nearest catalogue star {sep[i]:.1f} arcsec away"
    assert mags[i] == pytest.approx(v, abs=0.6)     # Tycho VT, not Johnson V
    assert mags[i] == mags.min()


@needs_index
def test_density_and_depth_are_sensible(tycho2):
    assert len(tycho2) > 300_000
    for ra, dec in [(88.0, 10.0), (200.0, 45.0), (300.0, -30.0), (10.0, -85.0)]:
        ras, decs, mags = tycho2.stars_near(ra, dec, 3.0)
        area = 2 * math.pi * (1 - math.cos(math.radians(3.0))) * (180 / math.pi) ** 2
        per_sq_deg = len(ras) / area
        assert 5 < per_sq_deg < 20, (ra, dec, per_sq_deg)
        assert 8.0 < np.median(mags) < 11.0
        assert np.all(separation_arcsec(ras, decs, ra, dec) <= 3.0 * 3600 + 1e-6)


@needs_index
def test_queries_are_exact_across_ra_zero_and_the_poles(tycho2):
    ra_all, dec_all, _ = tycho2.stars_near(0.0, 0.0, 180.0)
    for ra, dec, radius in [(0.2, 1.0, 2.0), (359.9, -1.0, 2.0), (123.0, 89.5, 3.0), (10.0, -89.9, 1.5)]:
        ras, decs, _ = tycho2.stars_near(ra, dec, radius)
        expected = separation_arcsec(ra_all, dec_all, ra, dec) <= radius * 3600
        assert len(ras) == int(expected.sum()) > 10
        # Stars on both sides of RA 0 / all around the pole.
        xi = np.cos(np.radians(decs)) * np.sin(np.radians(ras - ra))
        assert (xi < 0).any() and (xi > 0).any()


@needs_index
def test_cache_makes_the_second_load_fast(tmp_path):
    first = Tycho2Catalog(cache_dir=tmp_path).load()
    assert first.loaded_from == "index"
    assert first.cache_path is not None and first.cache_path.exists()
    assert first.cache_path.stat().st_size < 10_000_000
    second = Tycho2Catalog(cache_dir=tmp_path).load()
    assert second.loaded_from == "cache"
    a = first.stars_near(88.8, 7.4, 2.0)
    b = second.stars_near(88.8, 7.4, 2.0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    limited = Tycho2Catalog(cache_dir=tmp_path, limit_mag=8.0)
    assert limited.stars_near(88.8, 7.4, 5.0)[2].max() <= 8.0


def test_missing_index_files_name_the_debian_package(tmp_path, monkeypatch):
    with pytest.raises(CatalogError) as err:
        Tycho2Catalog(index_dir=tmp_path).stars_near(0, 0, 1)
    assert str(tmp_path) in str(err.value) and "astrometry-data-tycho2-10-19" in str(err.value)
    with pytest.raises(CatalogError) as err:
        Tycho2Catalog(index_dir=[tmp_path / "index-tycho2-10.littleendian.fits"]).load()
    assert "index-tycho2-10.littleendian.fits" in str(err.value)
    assert "apt install astrometry-data-tycho2-10-19" in str(err.value)
    # The simulated camera refuses the tycho2 sky without the files.
    from simulators.camera import CameraError, SimulatedCamera
    monkeypatch.setattr(catalog_module, "default_index_dirs", lambda: [tmp_path])
    with pytest.raises(CameraError, match="astrometry-data-tycho2-10-19"):
        SimulatedCamera("cam", {"catalog": "tycho2", "width": 100, "height": 100})


def test_not_an_index_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "index-tycho2-10.littleendian.fits"
    bad.write_bytes(b"SIMPLE  =  this is not FITS" * 200)
    with pytest.raises(CatalogError, match="cannot read the index file|not an astrometry.net index"):
        Tycho2Catalog(index_dir=tmp_path, cache=False).load()
    fits.PrimaryHDU(np.zeros((4, 4))).writeto(bad, overwrite=True)
    with pytest.raises(CatalogError, match="not an astrometry.net index"):
        read_index_stars(bad)


# -- synthetic index files: the decoding itself, independent of the package


def write_index(path: Path, ra, dec, mag=None, sweep=None, big_endian=False):
    """A minimal astrometry.net-style index: star kd-tree data as scaled u32
    unit vectors, its range table, a sweep table and a MAG_VT tag-along."""
    ra, dec = np.radians(ra), np.radians(dec)
    xyz = np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    low, high = np.full(3, -1.0), np.full(3, 1.0)
    scale = (2 ** 32 - 1) / 2.0
    codes = np.round((xyz - low) * scale).astype(np.uint64).astype(np.uint32)
    order = ">" if big_endian else "<"
    primary = fits.PrimaryHDU()
    primary.header["ENDIAN"] = "01:02:03:04" if big_endian else "04:03:02:01"

    def table(name, raw, width, extra=None):
        hdu = fits.BinTableHDU(np.rec.fromarrays([np.frombuffer(raw, dtype=f"S{width}")], names=[name]))
        for k, v in (extra or {}).items():
            hdu.header[k] = v
        return hdu

    hdus = [primary,
            table("kdtree_data_stars", codes.astype(f"{order}u4").tobytes(), 12),
            table("kdtree_range_stars", np.concatenate([low, high, [scale]]).astype(f"{order}f8").tobytes(), 8)]
    if sweep is not None:
        hdus.append(fits.BinTableHDU(np.rec.fromarrays([np.asarray(sweep, dtype=np.uint8)], names=["sweep"])))
    if mag is not None:
        tag = fits.BinTableHDU(np.rec.fromarrays([np.asarray(mag, dtype=np.float32)], names=["MAG_VT"]))
        tag.header["AN_FILE"] = "TAGALONG"
        hdus.append(tag)
    fits.HDUList(hdus).writeto(path, overwrite=True)


@pytest.mark.parametrize("big_endian", [False, True])
def test_decodes_synthetic_index(tmp_path, big_endian):
    ra = np.array([0.0, 10.0, 359.5, 180.0, 45.0])
    dec = np.array([0.0, 20.0, -30.0, 89.0, -89.5])
    mag = np.array([5.0, 6.5, 7.25, 9.0, 11.0])
    path = tmp_path / "index-tycho2-10.fits"
    write_index(path, ra, dec, mag, sweep=[0, 1, 2, 3, 4], big_endian=big_endian)
    xyz, mags, sweep = read_index_stars(path)
    np.testing.assert_allclose(mags, mag)
    np.testing.assert_array_equal(sweep, [0, 1, 2, 3, 4])
    cat = Tycho2Catalog(index_dir=tmp_path, cache_dir=tmp_path / "cache")
    ras, decs, ms = cat.stars_near(0.0, 0.0, 180.0)
    assert len(ras) == 5
    order = np.argsort(ms)
    assert separation_arcsec(ras[order], decs[order], ra, dec).max() < 0.01


def test_merges_indexes_and_stands_in_sweep_for_missing_magnitudes(tmp_path):
    # index 10 with magnitudes; index 11 repeats one star and adds one, without magnitudes.
    write_index(tmp_path / "index-tycho2-10.fits", [10.0, 20.0], [5.0, 6.0], [4.0, 9.0], sweep=[0, 1])
    write_index(tmp_path / "index-tycho2-11.fits", [10.0, 30.0], [5.0, 7.0], None, sweep=[9, 0])
    cat = Tycho2Catalog(index_dir=tmp_path, cache=False)
    ras, decs, mags = cat.stars_near(20.0, 6.0, 20.0)
    assert len(ras) == 3                                   # the repeated star once
    by_ra = dict(zip(np.round(ras, 6), mags))
    assert by_ra[10.0] == pytest.approx(4.0)               # real magnitude kept over a stand-in
    assert by_ra[30.0] == pytest.approx(4.0)               # first sweep: brightest of the real range

import json
import math
import os

import numpy as np
import pytest
from astropy.io import fits

from observatory import imaging
from observatory.imaging import (FrameMetrics, ImageError, measure_drift, measure_frame,
                                 write_fits_atomic)

_erf = np.vectorize(math.erf)


def pixel_gaussian(offsets, sigma):
    """Fraction of a 1-D Gaussian in unit pixels centred at offsets (exact)."""
    s = sigma * math.sqrt(2.0)
    return 0.5 * (_erf((offsets + 0.5) / s) - _erf((offsets - 0.5) / s))


def plant_star(image, x, y, flux, sigma_x, sigma_y=None, half=8):
    sigma_y = sigma_x if sigma_y is None else sigma_y
    xc, yc = int(round(x)), int(round(y))
    cols, rows = np.arange(xc - half, xc + half + 1), np.arange(yc - half, yc + half + 1)
    stamp = flux * np.outer(pixel_gaussian(rows - y, sigma_y), pixel_gaussian(cols - x, sigma_x))
    image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] += stamp


def star_grid(shape=(400, 500), sigma_x=1.3, sigma_y=None, flux=20000.0, spacing=40, seed=1):
    rng = np.random.default_rng(seed)
    image = np.full(shape, 1000.0) + rng.normal(0.0, 10.0, shape)
    positions = []
    for y in range(30, shape[0] - 30, spacing):
        for x in range(30, shape[1] - 30, spacing):
            px, py = x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5)
            plant_star(image, px, py, flux * rng.uniform(0.5, 2.0), sigma_x, sigma_y)
            positions.append((px, py))
    return image, positions


def fwhm_of_pixelated_gaussian(sigma):
    return math.sqrt((2.3548 * sigma) ** 2 + 8 * math.log(2) / 12)


# -- write_fits_atomic ------------------------------------------------------

def test_write_fits_atomic_roundtrip_leaves_no_temp_file(tmp_path):
    target = tmp_path / "a" / "b" / "frame.fits"
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)
    header = {"OBJECT": "M42", "EXPTIME": (120.0, "[s] exposure"), "AIRMASS": float("nan"),
              "LONGKEYWORD": 5}
    assert write_fits_atomic(target, data, header) == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["frame.fits"]
    with fits.open(target) as hdul:
        assert np.array_equal(hdul[0].data, data)
        assert hdul[0].data.dtype == np.uint16
        assert hdul[0].header["OBJECT"] == "M42"
        assert hdul[0].header["EXPTIME"] == 120.0
        assert hdul[0].header.comments["EXPTIME"] == "[s] exposure"
        assert hdul[0].header["LONGKEYWORD"] == 5
        # NaN cannot be stored; the keyword stays, with an undefined value.
        assert "AIRMASS" in hdul[0].header
    assert oct(os.stat(target).st_mode & 0o777) == "0o644"


def test_write_fits_atomic_accepts_header_object_and_replaces(tmp_path):
    target = tmp_path / "frame.fits"
    write_fits_atomic(target, np.zeros((2, 2), np.int16), {"N": 1})
    header = fits.Header()
    header["N"] = 2
    write_fits_atomic(target, np.ones((2, 2), np.int16), header)
    assert fits.getheader(target)["N"] == 2
    assert fits.getdata(target).sum() == 4
    assert [p.name for p in tmp_path.iterdir()] == ["frame.fits"]


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "frame.fits"
    write_fits_atomic(target, np.zeros((2, 2), np.int16), {"N": 1})

    def broken_fsync(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(imaging.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        write_fits_atomic(target, np.ones((2, 2), np.int16), {"N": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["frame.fits"]
    assert fits.getheader(target)["N"] == 1


# -- measure_frame ----------------------------------------------------------

def test_measure_frame_counts_stars_and_measures_fwhm():
    sigma = 1.3
    image, positions = star_grid(sigma_x=sigma)
    m = measure_frame(image)
    assert m.n_stars == len(positions)
    assert m.background == pytest.approx(1000.0, abs=2.0)
    assert m.background_rms == pytest.approx(10.0, rel=0.1)
    assert m.fwhm_px == pytest.approx(fwhm_of_pixelated_gaussian(sigma), rel=0.05)
    assert m.ellipticity < 0.05
    # Every source is a planted star, to well under a pixel.
    planted = np.array(positions)
    for x, y, flux in m.sources:
        assert np.min(np.hypot(planted[:, 0] - x, planted[:, 1] - y)) < 0.1
        assert flux > 0
    fluxes = [s[2] for s in m.sources]
    assert fluxes == sorted(fluxes, reverse=True)


def test_measure_frame_ellipticity_of_elongated_stars():
    image, _ = star_grid(sigma_x=1.8, sigma_y=1.1)
    m = measure_frame(image)
    expected = 1 - math.sqrt(1.1 ** 2 + 1 / 12) / math.sqrt(1.8 ** 2 + 1 / 12)
    assert m.ellipticity == pytest.approx(expected, abs=0.02)


def test_hot_pixels_edges_and_saturation_are_handled():
    sigma = 1.3
    image, positions = star_grid(sigma_x=sigma, spacing=60)
    # Hot pixels: bright single pixels, not stars.
    for x, y in [(55, 100), (250, 77), (420, 333)]:
        image[y, x] += 5000.0
    # A star cut by the frame edge is not counted either.
    plant_star(image, 2.0, 200.0, 50000.0, sigma, half=2)
    # Saturated (clipped) stars are stars, but must not widen the FWHM.
    saturated = [(170.0, 135.0), (350.0, 255.0)]
    for x, y in saturated:
        plant_star(image, x, y, 3e6, sigma)
    np.clip(image, None, 15000.0, out=image)
    m = measure_frame(image)
    assert m.n_stars == len(positions) + len(saturated)
    assert m.fwhm_px == pytest.approx(fwhm_of_pixelated_gaussian(sigma), rel=0.05)

    m_with_level = measure_frame(image, saturation=15000.0)
    assert m_with_level.fwhm_px == pytest.approx(m.fwhm_px, rel=1e-6)


def test_empty_frame_and_json_friendly_dict():
    image = np.random.default_rng(3).normal(500.0, 5.0, (300, 300)).astype(np.float32)
    m = measure_frame(image)
    assert m.n_stars == 0
    assert math.isnan(m.fwhm_px)
    d = m.to_dict()
    assert d["fwhm_px"] is None and d["n_stars"] == 0 and "sources" not in d
    json.dumps(d, allow_nan=False)

    image, _ = star_grid()
    d = measure_frame(image).to_dict(include_sources=True)
    json.dumps(d, allow_nan=False)
    assert len(d["sources"]) == d["n_stars"] and len(d["sources"][0]) == 3


def test_sources_capped_at_200_brightest():
    image, positions = star_grid(shape=(700, 700), spacing=30, flux=5000.0)
    assert len(positions) > 200
    m = measure_frame(image)
    assert m.n_stars == len(positions)
    assert len(m.sources) == 200


def test_measure_frame_reads_fits_and_big_endian(tmp_path):
    image, positions = star_grid()
    path = write_fits_atomic(tmp_path / "f.fits", image.astype(">f4"), {})
    m = measure_frame(path)
    assert m.n_stars == len(positions)
    assert isinstance(m, FrameMetrics)
    assert measure_frame(str(path)).n_stars == len(positions)


def test_bad_inputs_raise_image_error_naming_the_file(tmp_path):
    missing = tmp_path / "nothing-here.fits"
    with pytest.raises(ImageError, match="nothing-here.fits.*not found"):
        measure_frame(missing)

    text = tmp_path / "notes.txt"
    text.write_text("this is not a FITS file\n" * 50)
    with pytest.raises(ImageError, match="notes.txt.*not a readable FITS"):
        measure_frame(text)

    empty = tmp_path / "empty.fits"
    fits.PrimaryHDU().writeto(empty)
    with pytest.raises(ImageError, match="empty.fits.*no image data"):
        measure_frame(empty)

    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((3, 40, 40), np.float32)).writeto(cube)
    with pytest.raises(ImageError, match=r"cube.fits.*2-D.*\(3, 40, 40\)"):
        measure_frame(cube)

    with pytest.raises(ImageError, match="is a directory|not a regular file"):
        measure_frame(tmp_path)
    with pytest.raises(ImageError, match="2-D"):
        measure_frame(np.zeros(100))
    assert issubclass(ImageError, ValueError)


# -- measure_drift ----------------------------------------------------------

def random_sources(n, seed, shape=(3000, 4000)):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(0, shape[1], n), rng.uniform(0, shape[0], n),
                            rng.lognormal(8, 1, n)])


@pytest.mark.parametrize("shift", [(12.3, -7.8), (-0.4, 0.3), (-44.0, 31.5)])
def test_measure_drift_recovers_shift_despite_missing_and_extra_stars(shift):
    rng = np.random.default_rng(7)
    ref = random_sources(200, seed=5)
    cur = ref.copy()
    cur[:, :2] += shift + rng.normal(0, 0.05, (200, 2))
    cur = cur[30:]                                   # stars lost off one side
    cur = np.vstack([cur, random_sources(30, seed=9)])  # stars come in
    dx, dy, n = measure_drift([tuple(s) for s in ref], [tuple(s) for s in cur])
    assert dx == pytest.approx(shift[0], abs=0.05)
    assert dy == pytest.approx(shift[1], abs=0.05)
    assert n >= 100


def test_measure_drift_gives_none_when_it_cannot_tell():
    ref = random_sources(100, seed=1)
    assert measure_drift(ref, random_sources(100, seed=2)) is None  # unrelated fields
    assert measure_drift(ref[:3], ref[:3]) is None                 # too few stars
    assert measure_drift([], ref) is None
    shifted = ref.copy()
    shifted[:, :2] += (80.0, 0.0)
    assert measure_drift(ref, shifted, max_shift_px=50.0) is None
    dx, dy, _ = measure_drift(ref, shifted, max_shift_px=100.0)
    assert (dx, dy) == pytest.approx((80.0, 0.0), abs=1e-6)

"""Plate solving: solve-field as a real subprocess, the fast solver, and the
simulated camera's real sky and pointing error they are tested on.

Frames are "medium": the PANOPTES field (15 x 10 degrees) on a quarter of
the pixels (2604 x 1738 px of 8.6 um, 20.9"/px), rendered from the Tycho-2
catalogue in a few tenths of a second. Tests needing solve-field or the
index files skip when they are missing, except under CI=true.
"""
import math
import os
import sys
import time

import numpy as np
import pytest
from astropy.io import fits

from observatory.catalog import CatalogError, Tycho2Catalog, shared_tycho2
from observatory.clock import SimClock
from observatory.solver import (SolveError, _run_group, extract_sources, fast_solve,
                                offset_arcsec, offset_components_arcsec, solve, solve_field,
                                solve_field_available, tan_deproject, tan_project)
from simulators.camera import CameraError, SimulatedCamera, SkyCatalog, tan_offset

MEDIUM = {"width": 2604, "height": 1738, "pixel_size_um": 8.6}
CI = os.environ.get("CI") == "true"


def _have_index() -> bool:
    try:
        Tycho2Catalog().index_files()
        return True
    except CatalogError:
        return False


needs_index = pytest.mark.skipif(
    not _have_index() and not CI,
    reason="astrometry.net Tycho-2 index files not installed (Debian astrometry-data-tycho2-10-19)")
needs_solve_field = pytest.mark.skipif(
    (solve_field_available() is None or not _have_index()) and not CI,
    reason="solve-field or its index files not installed (Debian astrometry.net, astrometry-data-tycho2-10-19)")


def expose(tmp_path, name="frame", ra=88.0, dec=10.0, exptime=120.0, **settings):
    """A pointing frame through the camera's exposure API; returns (path, header)."""
    camera = SimulatedCamera("cam", {**MEDIUM, **settings}, SimClock.starting_now(speed=10_000.0))
    camera.connect()
    path = tmp_path / f"{name}.fits"
    try:
        camera.start_exposure(exptime, str(path), {"RA-MNT": ra, "DEC-MNT": dec}, ra, dec, "pointing")
        deadline = time.monotonic() + 30
        while (result := camera.collect()) is None:
            assert time.monotonic() < deadline, "camera did not deliver"
            time.sleep(0.005)
        assert "path" in result, result
    finally:
        camera.close()
    return path, fits.getheader(path)


# -- the camera's real sky and pointing error ------------------------------


def test_pointing_error_moves_the_frame_and_the_header_tells_the_truth(tmp_path):
    path, header = expose(tmp_path, ra=120.0, dec=30.0, catalog="random",
                          pointing_error_arcsec=7200.0, pointing_error_pa_deg=90.0)
    # 2 degrees due east of the commanded pointing.
    assert offset_arcsec_pts(120.0, 30.0, header["SIM-RA"], header["SIM-DEC"]) == pytest.approx(7200.0, abs=0.01)
    xi, eta, _ = tan_project(np.array([header["SIM-RA"]]), np.array([header["SIM-DEC"]]), 120.0, 30.0)
    assert xi[0] > 2.0 and abs(eta[0]) < 1e-6
    assert (header["SIM-CRA"], header["SIM-CDEC"], header["SIM-PERR"]) == (120.0, 30.0, 7200.0)
    # Without a direction the seed picks one, the same for every camera of that seed.
    a = SimulatedCamera("a", {**MEDIUM, "pointing_error_arcsec": 3600.0, "seed": 4})
    b = SimulatedCamera("b", {**MEDIUM, "pointing_error_arcsec": 3600.0, "seed": 4})
    c = SimulatedCamera("c", {**MEDIUM, "pointing_error_arcsec": 3600.0, "seed": 5})
    assert a.true_pointing(10.0, 20.0) == b.true_pointing(10.0, 20.0) != c.true_pointing(10.0, 20.0)
    assert SimulatedCamera("d", MEDIUM).true_pointing(10.0, 20.0) == (10.0, 20.0)


@pytest.mark.parametrize("bad", [{"catalog": "gsc"}, {"pointing_error_arcsec": -1.0},
                                 {"pointing_error_arcsec": "1 deg"}, {"rotation_deg": math.nan},
                                 {"pointing_error_pa_deg": True}])
def test_camera_refuses_bad_sky_settings(bad):
    with pytest.raises(CameraError):
        SimulatedCamera("cam", {**MEDIUM, **bad})


def test_tan_offset_and_projections_invert_each_other():
    for ra0, dec0 in [(0.0, 0.0), (359.0, 60.0), (200.0, -89.0)]:
        for east, north in [(1.0, 0.0), (-2.0, 3.0), (0.5, -4.0)]:
            ra, dec = tan_offset(ra0, dec0, east, north)
            ra2, dec2 = tan_deproject(east, north, ra0, dec0)
            assert (ra, dec) == pytest.approx((float(ra2), float(dec2)), abs=1e-9)
            xi, eta, front = tan_project(np.array([ra]), np.array([dec]), ra0, dec0)
            assert front[0] and (xi[0], eta[0]) == pytest.approx((east, north), abs=1e-9)


# -- the fast solver --------------------------------------------------------


@needs_index
@pytest.mark.parametrize("ra, dec, error_deg, pa, rotation", [
    (88.0, 10.0, 1.0, 30.0, 0.0),
    (210.0, 42.0, 2.0, 200.0, 3.0),
    (300.0, 70.0, 3.0, 120.0, -2.0),
])
def test_fast_solve_recovers_a_pointing_error(tmp_path, ra, dec, error_deg, pa, rotation):
    path, header = expose(tmp_path, ra=ra, dec=dec, catalog="tycho2", rotation_deg=rotation,
                          pointing_error_arcsec=error_deg * 3600.0, pointing_error_pa_deg=pa)
    true_ra, true_dec = header["SIM-RA"], header["SIM-DEC"]
    assert offset_arcsec_pts(ra, dec, true_ra, true_dec) == pytest.approx(error_deg * 3600, rel=1e-6)

    sources, shape = extract_sources(path)
    assert shape == (1738, 2604) and len(sources) >= 100
    solution = fast_solve(sources, shape, ra, dec, header["PIXSCALE"], shared_tycho2(), rotation_hint=0.0)
    assert solution is not None
    assert solution.method == "fast"
    assert offset_arcsec(solution, true_ra, true_dec) < 30.0
    # The error found is the error made: (east, north) of the true centre.
    east, north = offset_components_arcsec(solution, ra, dec)
    plane = math.degrees(math.tan(math.radians(error_deg))) * 3600   # standard coordinates
    expected = plane * np.array([math.sin(math.radians(pa)), math.cos(math.radians(pa))])
    assert np.hypot(east - expected[0], north - expected[1]) < 30.0
    assert solution.rotation == pytest.approx(rotation, abs=0.05)
    assert solution.pixel_scale == pytest.approx(header["PIXSCALE"], rel=0.002)
    assert solution.n_matched >= 100 and solution.rms_arcsec < 0.3 * header["PIXSCALE"] * 3
    assert solution.seconds < 2.0

    # The WCS maps the centre pixel to the centre and a catalogue star to its pixel.
    wcs = solution.wcs()
    ra_c, dec_c = wcs.all_pix2world([[(2604 - 1) / 2, (1738 - 1) / 2]], 0)[0]
    assert offset_arcsec(solution, ra_c, dec_c) < 0.01
    sky = SimulatedCamera("truth", {**MEDIUM, "catalog": "tycho2", "rotation_deg": rotation})
    star_ra, star_dec, _ = sky.catalog.brightest_near(true_ra, true_dec, 3.0, 1)
    x, y = wcs.all_world2pix(star_ra, star_dec, 0)
    near = np.hypot(sources[:, 0] - x[0], sources[:, 1] - y[0])
    assert near.min() < 1.0


@needs_index
def test_solve_reads_hints_from_the_header_and_goes_fast_first(tmp_path):
    path, header = expose(tmp_path, ra=300.0, dec=-25.0, catalog="tycho2",
                          pointing_error_arcsec=1.5 * 3600, pointing_error_pa_deg=300.0)
    solution = solve(path, use_solve_field=False)   # hints: RA-MNT/DEC-MNT, PIXSCALE
    assert solution is not None and solution.method == "fast"
    assert offset_arcsec(solution, header["SIM-RA"], header["SIM-DEC"]) < 30.0
    assert solution.to_dict()["wcs_header"]["CTYPE1"] == "RA---TAN"


def test_fast_solve_works_on_the_random_sky_too(tmp_path):
    path, header = expose(tmp_path, ra=10.0, dec=-40.0, catalog="random",
                          pointing_error_arcsec=2 * 3600, pointing_error_pa_deg=45.0)
    sky = SkyCatalog(seed=0, limit_mag=13.0)
    solution = solve(path, catalog=sky, use_solve_field=False)
    assert solution is not None
    assert offset_arcsec(solution, header["SIM-RA"], header["SIM-DEC"]) < 30.0


@needs_index
def test_fast_solve_returns_none_without_a_convincing_match(tmp_path):
    catalog = shared_tycho2()
    shape = (1738, 2604)
    scale = 206.265 * 8.6 / 85.0
    rng = np.random.default_rng(3)
    # Random "sources".
    noise = np.column_stack([rng.uniform(0, 2604, 300), rng.uniform(0, 1738, 300), rng.uniform(1, 1e4, 300)])
    assert fast_solve(noise, shape, 88.0, 10.0, scale, catalog) is None
    # Too few sources, or none.
    assert fast_solve(noise[:5], shape, 88.0, 10.0, scale, catalog) is None
    assert fast_solve(np.empty((0, 3)), shape, 88.0, 10.0, scale, catalog) is None
    # A frame of pure noise, and a blank one.
    frame = rng.normal(2000.0, 30.0, shape).astype(np.uint16)
    assert solve(frame, 88.0, 10.0, scale, catalog=catalog, use_solve_field=False) is None
    blank = np.full(shape, 2000, dtype=np.uint16)
    assert solve(blank, 88.0, 10.0, scale, catalog=catalog, use_solve_field=False) is None
    # Real stars, but the hint 20 degrees off (beyond max_offset_deg): no false match.
    path, header = expose(tmp_path, ra=150.0, dec=-20.0, catalog="tycho2")
    sources, _ = extract_sources(path)
    ra_far, dec_far = tan_offset(150.0, -20.0, 12.0, 16.0)
    assert fast_solve(sources, shape, ra_far, dec_far, scale, catalog) is None
    # A random sky is not the real one.
    path, _ = expose(tmp_path, name="random", ra=150.0, dec=-20.0, catalog="random")
    sources, _ = extract_sources(path)
    assert fast_solve(sources, shape, 150.0, -20.0, scale, catalog) is None


# -- solve-field ----------------------------------------------------------


@needs_solve_field
def test_solve_field_solves_a_rendered_frame_and_agrees_with_fast(tmp_path):
    ra, dec = 210.0, 42.0
    path, header = expose(tmp_path, ra=ra, dec=dec, catalog="tycho2",
                          pointing_error_arcsec=3600.0, pointing_error_pa_deg=250.0)
    scale = header["PIXSCALE"]
    work = tmp_path / "work"
    t0 = time.monotonic()
    solution = solve_field(path, ra, dec, 15.0, scale * 0.95, scale * 1.05, downsample=2,
                           timeout_s=60.0, workdir=work)
    assert time.monotonic() - t0 < 30.0
    assert solution is not None, "solve-field did not solve a clean frame with hints"
    assert solution.method == "solve-field"
    assert offset_arcsec(solution, header["SIM-RA"], header["SIM-DEC"]) < 30.0
    assert solution.pixel_scale == pytest.approx(scale, rel=0.01)
    assert abs(solution.rotation) < 0.5 and solution.parity == 1
    assert solution.wcs_header["CTYPE1"].startswith("RA---TAN")
    assert solution.n_matched > 0 and solution.rms_arcsec < 2 * scale
    assert (work / "field.wcs").exists()      # a given workdir is kept
    fast = solve(path, use_solve_field=False)
    assert offset_arcsec(fast, solution.ra_deg, solution.dec_deg) < 30.0

    # From our own source list: no extraction by solve-field.
    sources, shape = extract_sources(path)
    from_xy = solve_field(path, ra, dec, 15.0, scale * 0.95, scale * 1.05, timeout_s=60.0,
                          sources=sources, shape=shape)
    assert from_xy is not None
    assert offset_arcsec(from_xy, header["SIM-RA"], header["SIM-DEC"]) < 30.0


@needs_solve_field
def test_solve_falls_back_to_solve_field(tmp_path):
    path, header = expose(tmp_path, ra=88.0, dec=10.0, catalog="tycho2",
                          pointing_error_arcsec=2 * 3600, pointing_error_pa_deg=10.0)
    # A rotation far outside the fast solver's tolerance: solve-field finds it.
    sources, shape = extract_sources(path)
    assert fast_solve(sources, shape, 88.0, 10.0, header["PIXSCALE"], rotation_hint=90.0) is None
    solution = solve(path, rotation_hint=90.0, timeout_s=60.0, workdir=tmp_path / "w")
    assert solution is not None and solution.method == "solve-field"
    assert offset_arcsec(solution, header["SIM-RA"], header["SIM-DEC"]) < 30.0


def test_corrupt_or_missing_images_are_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(os.urandom(5000))
    truncated = tmp_path / "truncated.fits"
    hdu = fits.PrimaryHDU(np.zeros((400, 600), dtype=np.uint16))
    hdu.writeto(truncated)
    truncated.write_bytes(truncated.read_bytes()[:20_000])
    empty = tmp_path / "empty.fits"
    fits.PrimaryHDU().writeto(empty)
    for path in (garbage, truncated, empty, tmp_path / "missing.fits"):
        with pytest.raises(SolveError) as err:
            solve(path, 10.0, 10.0, 10.0, catalog=SkyCatalog())
        assert str(path) in str(err.value)
        if solve_field_available():
            with pytest.raises(SolveError) as err:
                solve_field(path, 10.0, 10.0, 5.0, 9.0, 11.0, timeout_s=10.0)
            assert str(path) in str(err.value)
    with pytest.raises(SolveError, match="2-D"):
        solve(np.zeros((3, 40, 40)), 10.0, 10.0, 10.0, catalog=SkyCatalog())


def test_missing_solve_field_names_the_packages(monkeypatch, tmp_path):
    import observatory.solver as solver_module
    monkeypatch.setattr(solver_module, "solve_field_available", lambda: None)
    with pytest.raises(SolveError, match="astrometry.net"):
        solve_field(tmp_path / "x.fits")


def test_a_timed_out_solver_is_killed_with_its_children(tmp_path):
    """The process group goes, including a child that ignores SIGTERM."""
    marker = str(tmp_path)
    child = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")
    parent = ("import subprocess, sys, time; "
              f"subprocess.Popen([sys.executable, '-c', {child!r}, sys.argv[1]]); time.sleep(60)")
    t0 = time.monotonic()
    code, _ = _run_group([sys.executable, "-c", parent, marker], timeout_s=1.0, cwd=tmp_path)
    assert code is None
    assert time.monotonic() - t0 < 10.0
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and _processes_with(marker):
        time.sleep(0.05)
    assert not _processes_with(marker)


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    with open(f"/proc/{entry}/stat") as s:
                        if s.read().rsplit(")", 1)[1].split()[0] != "Z":
                            found.append(int(entry))
        except OSError:
            continue
    return found


def offset_arcsec_pts(ra1, dec1, ra2, dec2):
    r = math.radians
    h = math.sin(r(dec2 - dec1) / 2) ** 2 + math.cos(r(dec1)) * math.cos(r(dec2)) * math.sin(r(ra2 - ra1) / 2) ** 2
    return math.degrees(2 * math.asin(math.sqrt(h))) * 3600

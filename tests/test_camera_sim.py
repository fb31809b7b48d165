import math
import threading
import time

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from observatory.clock import SimClock, iso
from observatory.imaging import measure_drift, measure_frame
from simulators.camera import CameraError, SimulatedCamera, SkyCatalog, tan_project

SMALL = {"width": 800, "height": 600}
SPEED = 1000.0


def wait_for(predicate, timeout=5.0, interval=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def wait_collect(camera, timeout=5.0):
    return wait_for(camera.collect, timeout)


@pytest.fixture
def make_camera():
    cameras = []

    def make(name="cam0", speed=SPEED, **settings):
        camera = SimulatedCamera(name, {**SMALL, **settings}, SimClock.starting_now(speed=speed))
        camera.connect()
        cameras.append(camera)
        return camera

    yield make
    for camera in cameras:
        camera.close()


def test_connect_describes_the_camera(make_camera):
    info = make_camera().connect()
    assert info["model"] == "simulated DSLR"
    assert (info["width"], info["height"]) == (800, 600)
    assert info["pixel_scale_arcsec"] == pytest.approx(206.265 * 4.3 / 85.0)
    full = SimulatedCamera("full", {}, SimClock.starting_now())
    fov = full.connect()["field_deg"]
    assert fov[0] == pytest.approx(15.1, abs=0.1) and fov[1] == pytest.approx(10.1, abs=0.1)


def test_exposure_goes_exposing_reading_complete_and_writes_fits(make_camera, tmp_path):
    camera = make_camera(readout_time=200.0)
    path = tmp_path / "night" / "frame.fits"
    before = camera.clock.now()
    t0 = time.monotonic()
    camera.start_exposure(120.0, str(path), {"OBJECT": ("Field 1", "target"), "RA": 150.0},
                          ra_deg=150.0, dec_deg=20.0)
    assert time.monotonic() - t0 < 0.05, "start_exposure must not block"
    after = camera.clock.now()

    states = []
    while True:
        st = camera.status()
        if not states or states[-1] != st["state"]:
            states.append(st["state"])
        assert 0.0 <= st["progress"] <= 1.0
        if st["state"] == "complete":
            completed_at = camera.clock.now()
            break
        assert time.monotonic() - t0 < 5.0, states
        time.sleep(0.002)
    assert states == ["exposing", "reading", "complete"]

    start = st["start_unix"]
    assert before <= start <= after
    # Nothing is written before the simulated exposure and readout are over.
    assert completed_at >= start + 120.0 + 200.0

    result = camera.collect()
    assert result == {"path": str(path), "start_unix": start, "end_unix": start + 120.0,
                      "exptime": 120.0, "image_type": "science"}
    assert camera.status()["state"] == "idle"
    assert camera.collect() is None

    with fits.open(path) as hdul:
        header, data = hdul[0].header, hdul[0].data
    assert header["DATE-OBS"] == iso(start)
    for key in ("EXPTIME", "IMAGETYP", "INSTRUME", "CAMERA", "XPIXSZ", "YPIXSZ", "FOCALLEN",
                "GAIN", "SATURATE", "BITPIX", "SIM-RA", "SIM-DEC", "MJD-OBS"):
        assert key in header, key
    assert header["EXPTIME"] == 120.0
    assert header["IMAGETYP"] == "science"
    assert header["CAMERA"] == "cam0"
    assert header["OBJECT"] == "Field 1" and header["RA"] == 150.0
    assert (header["SIM-RA"], header["SIM-DEC"]) == (150.0, 20.0)
    assert "CTYPE1" not in header and "CRVAL1" not in header, "no solved WCS from the camera"
    assert data.dtype == np.uint16 and data.shape == (600, 800)
    assert header["BITPIX"] == 16
    assert [p.name for p in path.parent.iterdir()] == ["frame.fits"]


def test_progress_rises_during_the_exposure(make_camera, tmp_path):
    camera = make_camera(speed=100.0)
    camera.start_exposure(60.0, str(tmp_path / "p.fits"), {}, 10.0, 10.0)
    time.sleep(0.3)  # 30 of 60 simulated seconds
    st = camera.status()
    assert st["state"] == "exposing"
    assert 0.2 < st["progress"] < 0.95
    assert st["exptime"] == 60.0 and st["path"] == str(tmp_path / "p.fits")
    assert camera.abort()


def test_start_while_busy_raises(make_camera, tmp_path):
    camera = make_camera()
    camera.start_exposure(600.0, str(tmp_path / "a.fits"), {}, 10.0, 10.0)
    with pytest.raises(CameraError, match="busy"):
        camera.start_exposure(1.0, str(tmp_path / "b.fits"), {}, 10.0, 10.0)
    assert camera.status()["path"] == str(tmp_path / "a.fits")
    assert camera.abort()


def test_abort_leaves_no_file_and_camera_reusable(make_camera, tmp_path):
    camera = make_camera()
    path = tmp_path / "aborted.fits"
    camera.start_exposure(300.0, str(path), {}, 10.0, 10.0)  # 0.3 s wall
    time.sleep(0.05)
    would_end = camera.status()["start_unix"] + 300.0 + camera.settings["readout_time"]
    assert camera.abort() is True
    assert camera.status()["state"] == "aborted"
    assert camera.abort() is False
    assert camera.collect() == {"aborted": True}
    assert camera.status()["state"] == "idle"
    camera.clock.sleep_until(would_end + 50.0)
    assert list(tmp_path.iterdir()) == []

    camera.start_exposure(1.0, str(tmp_path / "next.fits"), {}, 10.0, 10.0)
    assert "path" in wait_collect(camera)
    assert [p.name for p in tmp_path.iterdir()] == ["next.fits"]


def test_abort_during_readout_leaves_no_file(make_camera, tmp_path):
    camera = make_camera(readout_time=300.0)
    path = tmp_path / "r.fits"
    camera.start_exposure(1.0, str(path), {}, 10.0, 10.0)
    wait_for(lambda: camera.status()["state"] == "reading")
    would_end = camera.status()["start_unix"] + 1.0 + 300.0
    assert camera.abort()
    assert camera.collect() == {"aborted": True}
    camera.clock.sleep_until(would_end + 50.0)
    assert list(tmp_path.iterdir()) == []


def test_refuses_bad_commands(make_camera, tmp_path):
    camera = SimulatedCamera("c", SMALL, SimClock.starting_now(speed=SPEED))
    with pytest.raises(CameraError, match="not connected"):
        camera.start_exposure(1.0, str(tmp_path / "x.fits"), {}, 10.0, 10.0)
    camera.connect()
    for exptime, image_type, dec in [(-1.0, "science", 0.0), (math.nan, "science", 0.0),
                                     (1.0, "selfie", 0.0), (1.0, "science", 91.0)]:
        with pytest.raises(CameraError):
            camera.start_exposure(exptime, str(tmp_path / "x.fits"), {}, 10.0, dec, image_type)
    with pytest.raises(CameraError, match="header"):
        camera.start_exposure(1.0, str(tmp_path / "x.fits"), {"BAD": {"a": 1}}, 10.0, 10.0)
    assert camera.status()["state"] == "idle"
    camera.close()
    with pytest.raises(CameraError, match="closed"):
        camera.start_exposure(1.0, str(tmp_path / "x.fits"), {}, 10.0, 10.0)
    with pytest.raises(CameraError, match="unknown camera setting"):
        SimulatedCamera("c", {"widht": 10}, SimClock.starting_now())
    with pytest.raises(CameraError, match="gain_e_per_adu"):
        SimulatedCamera("c", {"gain_e_per_adu": 0}, SimClock.starting_now())


def test_close_stops_the_exposure_thread(make_camera, tmp_path):
    camera = make_camera()
    camera.start_exposure(3600.0, str(tmp_path / "long.fits"), {}, 10.0, 10.0)
    before = {t.name for t in threading.enumerate()}
    assert any(name.startswith("cam0-exposure") for name in before)
    t0 = time.monotonic()
    camera.close()
    assert time.monotonic() - t0 < 1.0
    assert not any(t.name.startswith("cam0-exposure") for t in threading.enumerate())
    assert list(tmp_path.iterdir()) == []


def test_injected_faults(make_camera, tmp_path):
    camera = make_camera()
    camera.inject_fault("error")
    camera.start_exposure(1.0, str(tmp_path / "e.fits"), {}, 10.0, 10.0)
    result = wait_collect(camera)
    assert "simulated readout failure" in result["error"]
    assert not (tmp_path / "e.fits").exists()

    camera.inject_fault("hang")
    camera.start_exposure(1.0, str(tmp_path / "h.fits"), {}, 10.0, 10.0)
    wait_for(lambda: camera.status()["state"] == "reading")
    time.sleep(0.1)  # 100 simulated seconds past the readout: still stuck
    assert camera.status()["state"] == "reading"
    assert camera.abort()
    assert camera.collect() == {"aborted": True}
    assert not (tmp_path / "h.fits").exists()


def test_calibration_frames(make_camera, tmp_path):
    camera = make_camera()
    levels = {}
    for image_type, exptime in [("bias", 0.0), ("dark", 120.0), ("flat", 1.0)]:
        path = tmp_path / f"{image_type}.fits"
        camera.start_exposure(exptime, str(path), {}, 10.0, 10.0, image_type=image_type)
        assert wait_collect(camera)["image_type"] == image_type
        data = fits.getdata(path)
        assert fits.getheader(path)["IMAGETYP"] == image_type
        levels[image_type] = (float(np.median(data)), float(np.std(data)))
    assert levels["bias"][0] == pytest.approx(2048, abs=1)
    assert levels["bias"][1] == pytest.approx(10.0 / 1.5, rel=0.1)  # read noise in ADU
    assert levels["dark"][0] == pytest.approx(2048 + 0.02 * 120 / 1.5, abs=1)
    assert levels["flat"][0] == pytest.approx(2048 + 10000 / 1.5, rel=0.01)


def test_frame_is_measurable(make_camera, tmp_path):
    camera = make_camera(speed=5000.0)
    path = tmp_path / "light.fits"
    camera.start_exposure(120.0, str(path), {}, ra_deg=83.8, dec_deg=-5.4)
    wait_collect(camera)
    m = measure_frame(path)
    assert m.n_stars > 25
    assert m.fwhm_px == pytest.approx(2.2, rel=0.2)
    assert m.ellipticity < 0.1
    assert m.background == pytest.approx(2048 + 20.0 * 120 / 1.5, rel=0.01)
    assert m.background_rms == pytest.approx(math.sqrt(20.0 * 120 + 100) / 1.5, rel=0.1)

    # Flux scales with exposure time, the star count with the sky's density.
    shorter = camera.render(30.0, 83.8, -5.4)
    assert measure_frame(shorter).n_stars < m.n_stars
    denser = make_camera("dense", star_density=3.0).render(120.0, 83.8, -5.4)
    assert measure_frame(denser).n_stars > 2 * m.n_stars


def truth_wcs(header, width, height, scale_arcsec):
    """Independent TAN WCS of the true pointing (north up, east left)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [header["SIM-RA"], header["SIM-DEC"]]
    wcs.wcs.crpix = [(width + 1) / 2, (height + 1) / 2]
    wcs.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    return wcs


@pytest.mark.parametrize("ra0, dec0", [(150.0, 20.0), (359.99, -45.0)])
def test_measure_drift_recovers_pointing_offset(make_camera, tmp_path, ra0, dec0):
    camera = make_camera(speed=5000.0, star_density=2.0)
    scale = camera.pixel_scale_arcsec / 3600
    pointings = [(ra0, dec0), ((ra0 + 3.4 * scale / math.cos(math.radians(dec0))) % 360, dec0 - 2.6 * scale)]
    metrics, headers = [], []
    for i, (ra, dec) in enumerate(pointings):
        path = tmp_path / f"f{i}.fits"
        camera.start_exposure(120.0, str(path), {}, ra, dec)
        wait_collect(camera)
        metrics.append(measure_frame(path))
        headers.append(fits.getheader(path))

    w0, w1 = (truth_wcs(h, 800, 600, camera.pixel_scale_arcsec) for h in headers)
    centre = (399.5, 299.5)
    x1, y1 = w1.world_to_pixel_values(*w0.pixel_to_world_values(*centre))
    expected = (x1 - centre[0], y1 - centre[1])
    assert abs(expected[0]) > 3 and abs(expected[1]) > 2  # sky moves opposite to the mount

    dx, dy, n = measure_drift(metrics[0].sources, metrics[1].sources)
    assert dx == pytest.approx(expected[0], abs=0.5)
    assert dy == pytest.approx(expected[1], abs=0.5)
    assert n >= 0.8 * min(len(m.sources) for m in metrics)


def test_sky_is_a_function_of_position_not_of_the_query():
    catalog = SkyCatalog(seed=3)
    a = catalog.stars_near(10.0, 30.0, 2.0)
    b = SkyCatalog(seed=3).stars_near(11.0, 30.5, 3.0)
    near = lambda s: (np.abs(s[0] - 10.0) < 1) & (np.abs(s[1] - 30.0) < 1)
    sa = sorted(zip(*(c[near(a)] for c in a)))
    sb = sorted(zip(*(c[near(b)] for c in b)))
    assert len(sa) > 50 and sa == sb
    other = SkyCatalog(seed=4).stars_near(10.0, 30.0, 2.0)
    assert not np.array_equal(np.sort(other[0]), np.sort(a[0]))
    # Across RA 0/360 and over the pole there are stars all around.
    for ra, dec in [(0.1, 0.0), (45.0, 89.9), (200.0, -89.9)]:
        ras, decs, _ = catalog.stars_near(ra, dec, 1.0)
        xi, eta, front = tan_project(ras, decs, ra, dec)
        inside = front & (np.hypot(xi, eta) < 1.0)
        assert inside.sum() > 100
        assert (xi[inside] < -0.5).any() and (xi[inside] > 0.5).any()
        assert (eta[inside] < -0.5).any() and (eta[inside] > 0.5).any()

"""Lossless fpack-style compression of frames (images.compress: rice):
observatory/imaging.py compress_frame and friends, the archive moving the
record, retention leaving a frame being compressed alone, the configuration
key, interoperability with CFITSIO's funpack/fpack, and the analysis actor's
write .fz -> record moves -> remove .fits sequence (and its settling of
frames left with both forms)."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS

from actors.analysis import AnalysisActor
from messages import AnalyzeFrame, FrameAnalyzed, Initialized, RecordExposure
from observatory import imaging, retention
from observatory.archive import Archive
from observatory.clock import SimClock
from observatory.config import ConfigError, load_config
from observatory.imaging import (CompressionError, compress_frame, compressed_path, find_twins,
                                 measure_frame, read_header, read_image, remove_plain, write_fits_atomic,
                                 write_wcs)
from simulators.camera import SimulatedCamera
from tests.test_actors import NIGHT, ask, asys, make_init, start_actor, warm_astropy  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class FakeSolution:
    """What write_wcs needs of observatory.solver.Solution."""
    wcs_header: dict
    method: str = "fast"
    n_matched: int = 87
    rms_arcsec: float = 4.321


SOLUTION = FakeSolution({
    "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
    "CRVAL1": 300.182129871234567, "CRVAL2": 22.710838120987654, "CRPIX1": 200.5, "CRPIX2": 150.5,
    "CD1_1": -0.0038612345678901, "CD1_2": 1.2345678e-06, "CD2_1": -1.1234567e-06, "CD2_2": 0.0038598765432109,
})


def frame(path: Path, width: int = 400, height: int = 300, seed: int = 1) -> Path:
    """A simulated uint16 frame with the kinds of header card a unit writes."""
    cam = SimulatedCamera("cam00", {"width": width, "height": height, "seed": seed}, SimClock.starting_now(NIGHT))
    data = cam.render(120.0, 300.18, 22.71)
    assert data.dtype == np.uint16
    header = {"OBJECT": ("HD 189733", "field"), "EXPTIME": (120.0, "[s]"), "RA-MNT": (300.18, "[deg]"),
              "DEC-MNT": (22.71, "[deg]"), "PIXSCALE": (13.9, "[arcsec/px]"), "SATURATE": (15000, "[ADU]"),
              "SAFE": (True, ""), "MOONSEP": (float("nan"), "undefined"), "IMAGEID": ("cam00_20261124T063000", ""),
              "SWVERSION": ("1.2.3", "a HIERARCH card"), "NOTES": ("x" * 150, "a long string: CONTINUE cards")}
    path = write_fits_atomic(path, data, header)
    with fits.open(path, mode="update") as hdul:
        hdul[0].header.add_history("made by test_compress")
        hdul[0].header.add_comment("a comment card")
    return path


def cards(header: fits.Header) -> list[tuple[str, object]]:
    layout = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "PCOUNT", "GCOUNT",
              "BZERO", "BSCALE"}
    return [(c.keyword, c.value) for c in header.cards if c.keyword not in layout]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------
# compress_frame
# --------------------------------------------------------------------------

def test_round_trip_is_bit_exact_and_keeps_header_and_wcs(tmp_path):
    path = frame(tmp_path / "img.fits")
    write_wcs(path, SOLUTION)
    with fits.open(path) as hdul:
        original, original_header = hdul[0].data.copy(), hdul[0].header.copy()
    original_bytes = path.read_bytes()

    done = compress_frame(path)

    assert done.path == tmp_path / "img.fits.fz" and done.source == path
    assert done.algorithm == "RICE_1"
    assert done.source_bytes == len(original_bytes) and done.compressed_bytes == done.path.stat().st_size
    assert done.ratio > 1.3 and done.seconds > 0
    assert path.read_bytes() == original_bytes, "the plain frame is untouched (removed later, by the caller)"
    assert leftovers(tmp_path) == []
    with fits.open(done.path) as hdul:
        back, back_header = hdul[1].data, hdul[1].header
        assert back.dtype == np.uint16 and back.shape == original.shape
        assert np.array_equal(back, original)
        assert back.tobytes() == original.astype(np.uint16).tobytes()
        assert cards(back_header) == cards(original_header)       # every card, in order, values equal
        assert back_header["NOTES"] == "x" * 150 and back_header["SWVERSION"] == "1.2.3"
        assert back_header["SOLVED"] is True and back_header["SOLVNMAT"] == 87
        pixels = np.array([[0.0, 0.0], [199.5, 149.5], [399.0, 299.0]])
        assert np.array_equal(WCS(back_header).all_pix2world(pixels, 0), WCS(original_header).all_pix2world(pixels, 0))
    # The readers take either form and see the same frame.
    data, header = read_image(done.path)
    assert np.array_equal(data, original) and header["OBJECT"] == "HD 189733"
    assert read_header(done.path)["CRVAL1"] == original_header["CRVAL1"]
    assert read_header(done.path)["NAXIS1"] == 400
    assert measure_frame(done.path) == measure_frame(path)


def test_the_file_has_fpacks_layout(tmp_path):
    """What fpack writes: an empty primary HDU, the image in extension 1 as a
    tile-compressed binary table."""
    done = compress_frame(frame(tmp_path / "img.fits"))
    with fits.open(done.path, disable_image_compression=True) as raw:
        assert len(raw) == 2
        primary, table = raw
        assert isinstance(primary, fits.PrimaryHDU) and primary.header["NAXIS"] == 0 and primary.data is None
        assert isinstance(table, fits.BinTableHDU)
        h = table.header
        assert h["ZIMAGE"] is True and h["ZCMPTYPE"] == "RICE_1" and h["ZBITPIX"] == 16
        assert (h["ZNAXIS"], h["ZNAXIS1"], h["ZNAXIS2"]) == (2, 400, 300)
        assert h["ZTILE1"] == 400 and h["ZTILE2"] == 1                   # one tile per row, fpack's default
        assert h["TTYPE1"] == "COMPRESSED_DATA"


@pytest.mark.parametrize("dtype, algorithm", [(np.int16, "RICE_1"), (np.int32, "RICE_1"), (np.uint8, "RICE_1"),
                                              (np.float32, "GZIP_2"), (np.float64, "GZIP_2")])
def test_other_pixel_types_are_lossless_too(tmp_path, dtype, algorithm):
    rng = np.random.default_rng(7)
    data = rng.normal(100.0, 30.0, (64, 96))
    data = data.astype(dtype) if np.dtype(dtype).kind == "f" else np.clip(data, 0, 255).astype(dtype)
    if data.dtype.kind == "f":
        data[3, 4] = np.nan                                   # RICE would quantise floats; NaN must survive
    path = write_fits_atomic(tmp_path / "x.fits", data, {"IMAGETYP": "science"})
    done = compress_frame(path)
    assert done.algorithm == algorithm
    back, _ = read_image(done.path)
    assert back.dtype.kind == data.dtype.kind and back.dtype.itemsize == data.dtype.itemsize
    assert back.astype(data.dtype).tobytes() == data.tobytes()


def test_a_truncated_frame_raises_naming_the_file_and_is_kept(tmp_path):
    path = frame(tmp_path / "cut.fits")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    half = path.read_bytes()
    with pytest.raises(CompressionError, match=f"{path}: truncated or damaged FITS file.*left uncompressed"):
        compress_frame(path)
    assert path.read_bytes() == half
    assert not compressed_path(path).exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("content", [b"this is not a FITS file\n" * 200, b"SIMPLE  =                    T" + b" " * 50])
def test_a_corrupt_frame_raises_naming_the_file_and_is_kept(tmp_path, content):
    path = tmp_path / "junk.fits"
    path.write_bytes(content)
    with pytest.raises(CompressionError, match=str(path)):
        compress_frame(path)
    assert path.read_bytes() == content
    assert not compressed_path(path).exists() and leftovers(tmp_path) == []


def test_missing_and_multi_hdu_frames_are_refused(tmp_path):
    with pytest.raises(CompressionError, match=str(tmp_path / "gone.fits")):
        compress_frame(tmp_path / "gone.fits")
    two = tmp_path / "two.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((8, 8), np.uint16)), fits.ImageHDU(np.ones((8, 8), np.uint16))]
                 ).writeto(two)
    with pytest.raises(CompressionError, match=f"{two}.*single-image"):
        compress_frame(two)
    assert not compressed_path(two).exists()
    with pytest.raises(CompressionError, match="already compressed"):
        compress_frame(compress_frame(frame(tmp_path / "ok.fits")).path)
    with pytest.raises(ValueError):
        compress_frame(tmp_path / "ok.fits", "none")


def test_a_copy_that_does_not_verify_is_never_put_in_place(tmp_path, monkeypatch):
    """The read-back comparison fails: no .fz (and an older .fz from an attempt
    cut short stays as it was), no temporary, the frame untouched."""
    path = frame(tmp_path / "img.fits")
    before = path.read_bytes()
    older = compressed_path(path)
    older.write_bytes(b"an older attempt")
    monkeypatch.setattr(imaging, "_same_pixels", lambda a, b: False)
    with pytest.raises(CompressionError, match=f"{path}: the compressed copy did not verify.*pixels differ"):
        compress_frame(path)
    assert path.read_bytes() == before
    assert older.read_bytes() == b"an older attempt"
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    done = compress_frame(path)                  # replaces the older attempt
    assert np.array_equal(read_image(done.path)[0], read_image(path)[0])


def test_write_wcs_keeps_a_compressed_frame_compressed(tmp_path):
    done = compress_frame(frame(tmp_path / "img.fits"))
    write_wcs(done.path, SOLUTION)
    with fits.open(done.path, disable_image_compression=True) as raw:
        assert raw[1].header["ZCMPTYPE"] == "RICE_1"
    header = read_header(done.path)
    assert header["SOLVED"] is True and header["CTYPE1"] == "RA---TAN" and "XTENSION" in header
    assert np.array_equal(read_image(done.path)[0], read_image(done.source)[0])


def test_remove_plain_only_with_its_twin_and_find_twins(tmp_path):
    sub = tmp_path / "images" / "f" / "cam00" / "seq"
    a = frame(sub / "a.fits")
    b = frame(sub / "b.fits")
    compress_frame(a)
    (sub / ".c.fits.fz.x1.part").write_bytes(b"a temporary")
    assert find_twins(tmp_path / "images") == [(a, compressed_path(a))]
    with pytest.raises(CompressionError, match=f"{b}.*missing"):
        remove_plain(b)
    assert b.exists()
    assert remove_plain(a) is True and not a.exists() and compressed_path(a).exists()
    assert remove_plain(a) is False
    assert find_twins(tmp_path / "images") == []


@pytest.mark.skipif(shutil.which("funpack") is None and os.environ.get("CI") != "true",
                    reason="CFITSIO's funpack/fpack are not installed (Debian package libcfitsio-bin)")
def test_funpack_and_fpack_agree_with_us(tmp_path):
    assert shutil.which("funpack") and shutil.which("fpack"), \
        "CI needs funpack and fpack (Debian package libcfitsio-bin)"
    path = frame(tmp_path / "img.fits")
    write_wcs(path, SOLUTION)
    done = compress_frame(path)
    original, header = read_image(path)
    # funpack reads ours: the same pixels and cards.
    out = tmp_path / "unpacked.fits"
    subprocess.run(["funpack", "-O", str(out), str(done.path)], check=True, capture_output=True, timeout=60)
    with fits.open(out) as hdul:
        image = next(h for h in hdul if h.data is not None)
        assert image.data.dtype == np.uint16 and np.array_equal(image.data, original)
        assert image.header["CRVAL1"] == header["CRVAL1"] and image.header["OBJECT"] == "HD 189733"
    # We read fpack's: the same pixels.
    theirs = tmp_path / "theirs.fits.fz"
    with open(theirs, "wb") as f:
        subprocess.run(["fpack", "-S", str(path)], check=True, stdout=f, timeout=60)
    data, their_header = read_image(theirs)
    assert np.array_equal(data, original) and their_header["CRVAL1"] == header["CRVAL1"]


def test_the_dashboard_thumbnail_reads_a_compressed_frame(tmp_path):
    from gateway.thumbnail import thumbnail_png
    done = compress_frame(frame(tmp_path / "img.fits"))
    assert thumbnail_png(str(done.path)) == thumbnail_png(str(done.source))


# --------------------------------------------------------------------------
# The archive moves the record; retention leaves a frame being compressed alone
# --------------------------------------------------------------------------

def record(archive: Archive, eid: str, path: Path, start: float = 1000.0) -> None:
    archive.record_exposure(RecordExposure(
        exposure_id=eid, observation_id=None, camera="cam00", image_type="science", path=str(path),
        start_unix=start, end_unix=start + 120.0, exptime=120.0, ra_deg=1.0, dec_deg=2.0, set_index=0,
        frame_index=0))


def recorded(archive: Archive, eid: str) -> str:
    return archive.db.execute("SELECT path FROM exposures WHERE id=?", (eid,)).fetchone()[0]


def test_the_archive_moves_the_record_only_from_the_plain_frame_to_an_existing_file(tmp_path):
    archive = Archive(tmp_path / "db" / "unit.sqlite")
    plain = frame(tmp_path / "images" / "a.fits")
    fz = compressed_path(plain)
    figures = {"n_stars": 12, "compressed_path": str(fz), "compressed_from": str(plain)}
    record(archive, "e1", plain)
    archive.record_metrics("e1", figures, None)
    assert recorded(archive, "e1") == str(plain), "no .fits.fz on disk: the record stays"
    compress_frame(plain)
    archive.record_metrics("e1", figures, None)
    assert recorded(archive, "e1") == str(fz)
    assert archive.db.execute("SELECT n_stars FROM exposures WHERE id='e1'").fetchone()[0] == 12
    # Retention later moves it to its copy; the same figures sent again must not move it back.
    archive.relocate_exposure(str(fz), "/mnt/archive/a.fits.fz")
    archive.record_metrics("e1", figures, None)
    assert recorded(archive, "e1") == "/mnt/archive/a.fits.fz"
    # Figures that arrive before their exposure's row move it when the row comes.
    other = frame(tmp_path / "images" / "b.fits")
    compress_frame(other)
    archive.record_metrics("e2", {"compressed_path": f"{other}.fz", "compressed_from": str(other)}, None)
    record(archive, "e2", other)
    assert recorded(archive, "e2") == f"{other}.fz"
    archive.close()


def test_retention_leaves_a_frame_being_compressed_alone(tmp_path):
    pandir = tmp_path / "pandir"
    copies = tmp_path / "copies"
    copies.mkdir()
    seq = pandir / "images" / "f" / "cam00" / "seq"
    a, b = frame(seq / "a.fits", seed=1), frame(seq / "b.fits", seed=2)
    done = compress_frame(a)
    assert [f.path for f in retention.list_frames(pandir)] == [b]
    remove_plain(a)
    assert sorted(f.path.name for f in retention.list_frames(pandir)) == ["a.fits.fz", "b.fits"]
    # A frame planned for deletion whose compression began since the plan is kept.
    policy = retention.RetentionPolicy(archive_dir=copies, min_free_gb=0.0, max_age_days=1e-9)
    retention.copy_to_archive(pandir, policy)
    plan = retention.plan(pandir, policy, now=time.time() + 86400)
    assert sorted(d.path.name for d in plan) == ["a.fits.fz", "b.fits"]
    compress_frame(b)
    with pytest.raises(retention.RetentionError, match="being compressed") as err:
        retention.apply(plan)
    assert not done.path.exists() and b.exists() and compressed_path(b).exists()
    assert err.value.freed == (copies / "f" / "cam00" / "seq" / "a.fits.fz").stat().st_size


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------

def write_config(tmp_path: Path, images) -> Path:
    cfg = yaml.safe_load((ROOT / "conf" / "unit.yaml").read_text())
    cfg["states"] = str(ROOT / "conf" / "states.yaml")
    cfg["scheduler"]["fields_file"] = str(ROOT / "conf" / "fields.yaml")
    cfg["weather"]["timeline"] = str(ROOT / "conf" / "weather" / "clear.yaml")
    if images is not None:
        cfg["images"] = images
    path = tmp_path / "unit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_images_compress_is_validated_and_off_by_default(tmp_path):
    assert load_config(write_config(tmp_path, None))["images"] == {"compress": "none"}
    assert load_config(write_config(tmp_path, {"compress": "rice"}))["images"] == {"compress": "rice"}
    for bad in ({"compress": "gzip"}, {"compress": True}, {"compression": "rice"}):
        with pytest.raises(ConfigError, match=r"images\.compress|images\.compression") as err:
            load_config(write_config(tmp_path, bad))
        assert str(tmp_path / "unit.yaml") in str(err.value)


# --------------------------------------------------------------------------
# The analysis actor
# --------------------------------------------------------------------------

def wait_until(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_analysis_compresses_then_removes_the_plain_frame_once_the_record_moved(asys, tmp_path):
    seq = tmp_path / "images" / "HD_189733" / "cam00" / "seq"
    plain = frame(seq / "img.fits")
    pixels = read_image(plain)[0]
    archive = Archive(tmp_path / "db" / "unit.sqlite")
    record(archive, "e1", plain)
    addr, init = start_actor(asys, AnalysisActor, "analysis", "analysis", {"compress": "rice"}, tmp_path)
    assert init.info["compress"] == "rice"

    reply = ask(asys, addr, AnalyzeFrame(exposure_id="e1", camera="cam00", path=str(plain)), timeout=20.0)
    assert isinstance(reply, FrameAnalyzed) and "error" not in reply.metrics, reply
    m = reply.metrics
    assert reply.path == str(plain) and m["n_stars"] > 0
    assert m["compressed_path"] == f"{plain}.fz" and m["compressed_from"] == str(plain)
    assert m["compress_algorithm"] == "RICE_1" and m["compress_ratio"] > 1.3
    # The record still names the plain frame: both files stay.
    time.sleep(1.2)
    assert plain.exists() and compressed_path(plain).exists()
    # The archive records the figures (as the supervisor passes them on): the plain frame goes.
    archive.record_metrics("e1", m, None)
    wait_until(lambda: not plain.exists(), 5.0, "the plain frame removed")
    assert recorded(archive, "e1") == f"{plain}.fz"
    assert np.array_equal(read_image(compressed_path(plain))[0], pixels)
    assert leftovers(seq) == []
    archive.close()


def test_analysis_leaves_frames_alone_without_compress(asys, tmp_path):
    plain = frame(tmp_path / "images" / "img.fits")
    addr, init = start_actor(asys, AnalysisActor, "analysis", "analysis", {}, tmp_path)
    assert init.info["compress"] == "none"
    reply = ask(asys, addr, AnalyzeFrame(exposure_id="e1", camera="cam00", path=str(plain)), timeout=20.0)
    assert isinstance(reply, FrameAnalyzed) and "compressed_path" not in reply.metrics
    assert sorted(p.name for p in plain.parent.iterdir()) == ["img.fits"]


def test_analysis_reports_a_failed_compression_as_a_figure(asys, tmp_path):
    """A frame that measures but cannot be compressed (here a frame of
    several HDUs) stays as it is: compress_error, no analysis error."""
    path = tmp_path / "images" / "two.fits"
    path.parent.mkdir(parents=True)
    data = read_image(frame(tmp_path / "src.fits"))[0]
    fits.HDUList([fits.PrimaryHDU(data), fits.ImageHDU(np.zeros((4, 4), np.uint16))]).writeto(path)
    addr, _ = start_actor(asys, AnalysisActor, "analysis", "analysis", {"compress": "rice"}, tmp_path)
    reply = ask(asys, addr, AnalyzeFrame(exposure_id="e1", camera="cam00", path=str(path)), timeout=20.0)
    assert isinstance(reply, FrameAnalyzed) and "error" not in reply.metrics, reply
    assert str(path) in reply.metrics["compress_error"] and "compressed_path" not in reply.metrics
    assert sorted(p.name for p in path.parent.iterdir()) == ["two.fits"]


def test_a_frame_left_with_both_forms_keeps_the_one_its_record_names(asys, tmp_path):
    """Fresh start (epoch 1): each pair keeps the recorded file; a pair whose
    record still names the plain frame, or has no record, keeps the plain one."""
    seq = tmp_path / "images" / "f" / "cam00" / "seq"
    moved, not_moved, unrecorded = (frame(seq / f"{n}.fits", seed=i) for i, n in enumerate(("a", "b", "c")))
    for p in (moved, not_moved, unrecorded):
        compress_frame(p)
    archive = Archive(tmp_path / "db" / "unit.sqlite")
    record(archive, "ea", moved)
    record(archive, "eb", not_moved)
    archive.relocate_exposure(str(moved), f"{moved}.fz")
    archive.close()
    start_actor(asys, AnalysisActor, "analysis", "analysis", {"compress": "rice"}, tmp_path)
    wait_until(lambda: len(list(seq.iterdir())) == 3, 10.0, "the pairs settled")
    assert sorted(p.name for p in seq.iterdir()) == ["a.fits.fz", "b.fits", "c.fits"]


def test_after_a_restart_of_analysis_alone_a_pair_waits_for_its_record(asys, tmp_path):
    """Epoch 2: the record may still be on its way, so a pair whose record
    names the plain frame keeps both files until the record moves."""
    seq = tmp_path / "images" / "f" / "cam00" / "seq"
    plain = frame(seq / "a.fits")
    compress_frame(plain)
    archive = Archive(tmp_path / "db" / "unit.sqlite")
    record(archive, "ea", plain)
    addr = asys.createActor(AnalysisActor)
    init = dataclasses.replace(make_init("analysis", "analysis", {"compress": "rice"}, tmp_path), epoch=2)
    assert isinstance(ask(asys, addr, init, timeout=15.0), Initialized)
    time.sleep(1.5)
    assert plain.exists() and compressed_path(plain).exists()
    archive.relocate_exposure(str(plain), f"{plain}.fz")
    wait_until(lambda: not plain.exists(), 5.0, "the plain frame removed once the record moved")
    assert compressed_path(plain).exists()
    archive.close()


def test_a_request_sent_again_after_the_plain_frame_went_measures_the_compressed_one(asys, tmp_path):
    plain = frame(tmp_path / "images" / "img.fits")
    done = compress_frame(plain)
    plain.unlink()
    addr, _ = start_actor(asys, AnalysisActor, "analysis", "analysis", {"compress": "rice"}, tmp_path)
    reply = ask(asys, addr, AnalyzeFrame(exposure_id="e1", camera="cam00", path=str(plain)), timeout=20.0)
    assert isinstance(reply, FrameAnalyzed) and "error" not in reply.metrics, reply
    assert reply.metrics["n_stars"] > 0 and "compressed_path" not in reply.metrics
    assert sorted(p.name for p in plain.parent.iterdir()) == [done.path.name]

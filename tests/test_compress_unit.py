"""images.compress: rice in a running simulated unit: some twenty minutes of
simulated night at 120x, after which every frame that was analysed is a
.fits.fz, and the database's paths and the files agree one for one (each
record names a file that exists, each frame on disk has one record).

Frames still waiting for analysis when the unit stops stay .fits (recorded
so); bias and darks are not analysed, so not compressed (this run ends before
housekeeping anyway)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from actors.analysis import settle_twins
from observatory.imaging import read_header, read_image
from tests.unit_runner import RunningUnit

ROOT = Path(__file__).resolve().parent.parent
DARK_START = "2026-11-24T08:00:00"     # 22:00 at Mauna Loa: dark, fields up



def frames_on_disk(images: Path) -> set[str]:
    return {str(p) for pattern in ("*.fits", "*.fits.fz") for p in images.rglob(pattern)}


def agreement(unit: RunningUnit) -> tuple[list[str], set[str]]:
    rows = [p for (p,) in unit.query("SELECT path FROM exposures")]
    return rows, frames_on_disk(unit.pandir / "images")


def science_compressed(unit: RunningUnit) -> int:
    rows = unit.query("SELECT COUNT(*) FROM exposures WHERE image_type='science' AND path LIKE '%.fits.fz'")
    return rows[0][0] if rows else 0


def test_frames_end_compressed_and_records_match_files_one_for_one(tmp_path):
    unit = RunningUnit(tmp_path, start=DARK_START, speed=120, overrides={"images.compress": "rice"})
    try:
        unit.wait_for(lambda: science_compressed(unit) >= 4, 240, "four science frames recorded as .fits.fz")
        # A moment for the plain frames of the frames analysed by now to go.
        deadline = time.time() + 20
        while time.time() < deadline:
            rows, on_disk = agreement(unit)
            if set(rows) == on_disk:
                break
            time.sleep(0.25)
        assert unit.terminate() == 0, unit.output()[-3000:]
    finally:
        unit.kill()

    images = unit.pandir / "images"
    rows, on_disk = agreement(unit)
    assert len(rows) == len(set(rows)), "a frame recorded twice"
    # A stop, like a crash, may come between a .fits.fz written and its record
    # moved: then the record names the plain frame, and the next start removes
    # the .fits.fz (settle_twins, as the analysis actor does when it starts).
    for extra in on_disk - set(rows):
        assert extra.endswith(".fits.fz") and extra[:-3] in rows, f"a frame without a record: {extra}"
    assert settle_twins(unit.pandir, fresh_start=True) == []
    rows, on_disk = agreement(unit)
    assert set(rows) == on_disk, (f"only on disk: {sorted(on_disk - set(rows))[:5]}; "
                                  f"only in the database: {sorted(set(rows) - on_disk)[:5]}")
    assert not list(images.rglob(".*.part")), "a temporary file was left behind"
    twins = [p for p in images.rglob("*.fits") if Path(f"{p}.fz").exists()]
    assert not twins, f"both forms left: {twins[:3]}"

    analysed = unit.query("SELECT image_type, path, metrics FROM exposures WHERE metrics IS NOT NULL")
    assert analysed and {t for t, _, _ in analysed} >= {"science", "pointing"}, analysed[:3]
    for image_type, path, _ in analysed:
        assert path.endswith(".fits.fz"), f"an analysed {image_type} frame was not compressed: {path}"
    science = [p for t, p, _ in analysed if t == "science"]
    assert len(science) >= 4
    # A compressed frame is fpack's layout, keeps the unit's header and the WCS the analysis wrote.
    with fits.open(science[0], disable_image_compression=True) as raw:
        assert raw[0].header["NAXIS"] == 0 and raw[1].header["ZCMPTYPE"] == "RICE_1"
    header = read_header(science[0])
    for key in ("DATE-OBS", "EXPTIME", "RA-MNT", "DEC-MNT", "IMAGEID", "CFGHASH", "CAMERA"):
        assert key in header, key
    data, _ = read_image(science[0])
    assert data.dtype == np.uint16 and data.shape == (header["NAXIS2"], header["NAXIS1"])
    solved = [p for p in science if read_header(p).get("SOLVED")]
    assert solved, "no science frame kept its WCS"
    # Nothing the analysis figures say went wrong with compression.
    for _, path, metrics in analysed:
        figures = json.loads(metrics)
        assert "compress_error" not in figures, (path, figures["compress_error"])
        assert figures["compressed_path"] == path and figures["compress_ratio"] > 1.0

#!/usr/bin/env python3
"""Per-frame pipeline cost on FULL-SIZE frames, stage by stage.

    python bench/frame.py [--frames 5] [--dir DIR] [--exptime 120] [--no-baseline] [--keep]

Frame: the default simulated camera (``simulators.camera.DEFAULT_SETTINGS``:
5208 x 3476 px, uint16, random sky, 120 s science frame), at a different
sky position each frame. Stages, timed one after the other on each frame:

- render: ``SimulatedCamera.render`` (stars, sky, hot pixels, noise);
- write: ``observatory.imaging.write_fits_atomic`` (temporary file, fsync,
  rename, directory fsync) with a realistic header (observation, camera and
  focuser keywords);
- read: ``observatory.imaging.read_image`` of that file;
- measure: ``observatory.imaging.measure_frame`` on the array read, with the
  file's SATURATE (the analysis actor calls ``measure_frame(path)``, which is
  read + measure);
- db: ``observatory.archive.Archive`` (the archive actor's own writer, a
  real SQLite file in WAL mode): ``record_exposure`` then ``record_metrics``.

Baseline, on the same rendered frame (the order of the two pipelines
alternates from frame to frame): astropy's plain ``fits.writeto`` (no
temporary file, no fsync), ``fits.getdata``, sep with its defaults (64 px
background mesh, extraction at 5 sigma on the whole frame; the pixel stack
has to be raised to 2M or sep fails on a full frame) plus a median half-flux
diameter, and a plain sqlite3 INSERT committed per frame (rollback journal).

Compression (``images.compress: rice``), after the stages above and outside
their sums: ``observatory.imaging.compress_frame`` on the frame just written
(read it, RICE_1 tile compression, write the .fits.fz under a temporary name,
fsync, read it back and compare pixels and header, rename), then
``read_image`` of the .fits.fz (decompression). ``--no-compress`` skips it.

Prints a table (median and p90 per stage, milliseconds), then as the LAST
line one JSON object: {"frame_px", "frames", "render_ms", "write_ms",
"read_ms", "measure_ms", "db_ms", "total_ms", "pipeline_ms", "p90": {...},
"baseline_write_ms", "baseline_read_ms", "baseline_measure_ms",
"baseline_db_ms", "baseline_total_ms", "baseline_pipeline_ms", "n_stars",
"fwhm_px", "file_mb", "peak_rss_mb", "dir", "compress_ms",
"compress_p90_ms", "compress_read_ms", "compressed_file_mb",
"compress_ratio"}. Medians per stage; total_ms is the median of the
per-frame sums (render included), pipeline_ms the same without render (what
a real camera's frame costs the unit). compress_ratio is the median of
plain size / compressed size.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import sep  # noqa: E402
from astropy.io import fits  # noqa: E402

from messages import RecordExposure  # noqa: E402
from observatory import headers  # noqa: E402
from observatory.archive import Archive  # noqa: E402
from observatory.clock import SimClock  # noqa: E402
from observatory.imaging import compress_frame, measure_frame, read_image, write_fits_atomic  # noqa: E402
from simulators.camera import DEFAULT_SETTINGS, SimulatedCamera  # noqa: E402

STAGES = ("render", "write", "read", "measure", "db")
BASELINE_STAGES = ("write", "read", "measure", "db")
# Varied fields, none special.
POSITIONS = [(150.0, 20.0), (40.0, -10.0), (280.0, 45.0), (200.0, -60.0), (90.0, 5.0),
             (330.0, 30.0), (10.0, 70.0), (240.0, -25.0)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # kB on Linux


def frame_header(camera: SimulatedCamera, index: int, exptime: float, ra: float, dec: float,
                 start_unix: float) -> dict:
    """About the header a unit writes: observation, camera, focuser."""
    hdr = headers.observation_header(
        field=f"Field {index}", seq_id=f"bench_{index:04d}", image_id=f"cam0_{index:04d}",
        mount={"ra_deg": ra, "dec_deg": dec, "ha_deg": 10.0, "alt_deg": 60.0, "pier_side": "west"},
        site={"latitude": 19.536, "longitude": -155.576, "elevation": 3400.0},
        moon={"separation_deg": 80.0, "illumination": 0.3}, config_hash="0" * 12,
        decision_id="d0", safe=True, unit_name="bench")
    s = camera.settings
    hdr.update({
        "DATE-OBS": (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start_unix)), "UTC start"),
        "EXPTIME": (exptime, "[s]"), "IMAGETYP": ("science", ""), "INSTRUME": ("simulated DSLR", ""),
        "CAMERA": ("cam0", ""), "XPIXSZ": (s["pixel_size_um"], "[um]"), "FOCALLEN": (s["focal_length_mm"], "[mm]"),
        "PIXSCALE": (camera.pixel_scale_arcsec, "[arcsec/px]"), "GAIN": (s["gain_e_per_adu"], "[e-/ADU]"),
        "RDNOISE": (s["read_noise_e"], "[e-]"), "BIASLEV": (s["bias"], "[ADU]"),
        "SATURATE": (s["saturation_adu"], "[ADU]"), "FOCUSPOS": (5000, "[steps]"), "FILTER": ("L", ""),
    })
    return hdr


def ours(camera, data, header, index, start_unix, exptime, ra, dec, workdir: Path, archive: Archive) -> dict:
    times = {}
    path = workdir / f"ours_{index:04d}.fits"
    t = time.perf_counter()
    write_fits_atomic(path, data, header)
    times["write"] = time.perf_counter() - t

    t = time.perf_counter()
    image, hdr = read_image(path)
    times["read"] = time.perf_counter() - t

    t = time.perf_counter()
    metrics = measure_frame(image, saturation=float(hdr["SATURATE"]))
    times["measure"] = time.perf_counter() - t

    exposure_id = f"bench-{index:04d}-cam0"
    t = time.perf_counter()
    archive.record_exposure(RecordExposure(
        exposure_id=exposure_id, observation_id=None, camera="cam0", image_type="science", path=str(path),
        start_unix=start_unix, end_unix=start_unix + exptime, exptime=exptime, ra_deg=ra, dec_deg=dec,
        set_index=0, frame_index=index))
    archive.record_metrics(exposure_id, metrics.to_dict(), (0.1, -0.2))
    times["db"] = time.perf_counter() - t
    return {"times": times, "metrics": metrics, "path": path}


def compression(path: Path, original: np.ndarray) -> dict:
    """compress_frame (verified .fits.fz, the plain frame kept), then reading it back."""
    t = time.perf_counter()
    done = compress_frame(path)
    compress_s = time.perf_counter() - t
    t = time.perf_counter()
    back, _ = read_image(done.path)
    read_s = time.perf_counter() - t
    if not np.array_equal(back, original):
        raise SystemExit(f"{done.path}: the compressed frame does not read back as the original")
    return {"compress": compress_s, "read": read_s, "ratio": done.ratio, "mb": done.compressed_bytes / 1e6,
            "path": done.path}


def naive(data, header, index, start_unix, exptime, workdir: Path, db: sqlite3.Connection) -> dict:
    times = {}
    path = workdir / f"naive_{index:04d}.fits"
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        fits.writeto(path, data, fits.Header([(k, *v) if isinstance(v, tuple) else (k, v)
                                              for k, v in header.items()]), overwrite=True)
    times["write"] = time.perf_counter() - t

    t = time.perf_counter()
    image = fits.getdata(path)
    times["read"] = time.perf_counter() - t

    t = time.perf_counter()
    image = image.astype(np.float32)               # native order and float (sep needs both)
    bkg = sep.Background(image)
    sub = image - bkg
    sep.set_extract_pixstack(2_000_000)            # the default 300k fails on a full frame
    objects = sep.extract(sub, 5.0, err=bkg.globalrms)
    radius, _ = sep.flux_radius(sub, objects["x"], objects["y"], np.maximum(6.0 * objects["a"], 3.0), 0.5,
                                subpix=5)
    hfd = float(np.median(2.0 * radius)) if len(radius) else math.nan
    times["measure"] = time.perf_counter() - t

    t = time.perf_counter()
    db.execute("INSERT INTO frames(path, start_unix, exptime, background, n_stars, hfd) VALUES (?,?,?,?,?,?)",
               (str(path), start_unix, exptime, float(bkg.globalback), int(len(objects)), hfd))
    db.commit()
    times["db"] = time.perf_counter() - t
    return {"times": times, "n": len(objects), "hfd": hfd, "path": path}


def pct(values, q):
    values = sorted(values)
    if not values:
        return math.nan
    k = (len(values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--exptime", type=float, default=120.0)
    ap.add_argument("--dir", help="where to write frames and databases (default: a new temporary directory)")
    ap.add_argument("--no-baseline", action="store_true", help="only our pipeline")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--no-compress", action="store_true", help="skip the compression measurement")
    args = ap.parse_args(argv)
    if args.frames < 1:
        ap.error("--frames must be >= 1")

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_frame_"))
    workdir.mkdir(parents=True, exist_ok=True)
    camera = SimulatedCamera("cam0", dict(DEFAULT_SETTINGS), SimClock.starting_now())
    archive = Archive(workdir / "unit.sqlite")
    naive_db = sqlite3.connect(workdir / "naive.sqlite")
    naive_db.execute("CREATE TABLE IF NOT EXISTS frames(id INTEGER PRIMARY KEY, path TEXT, start_unix REAL,"
                     " exptime REAL, background REAL, n_stars INTEGER, hfd REAL)")
    naive_db.commit()

    rows, base_rows, stars, fwhms, file_mb, packed = [], [], [], [], [], []
    try:
        # Warm-up (imports, first-touch allocations, sep and astropy caches) on a small frame.
        warm = SimulatedCamera("warm", {"width": 256, "height": 256}, SimClock.starting_now())
        measure_frame(warm.render(10.0, 0.0, 0.0))
        print(f"{args.frames} full-size frames {camera.width} x {camera.height} in {workdir}", file=sys.stderr)
        for i in range(args.frames):
            ra, dec = POSITIONS[i % len(POSITIONS)]
            start_unix = camera.clock.now()
            t = time.perf_counter()
            data = camera.render(args.exptime, ra, dec, "science", noise_seed=i + 1)
            render_s = time.perf_counter() - t
            header = frame_header(camera, i, args.exptime, ra, dec, start_unix)
            order = ("ours", "naive") if i % 2 == 0 else ("naive", "ours")
            for which in order:
                if which == "ours":
                    r = ours(camera, data, header, i, start_unix, args.exptime, ra, dec, workdir, archive)
                    rows.append({"render": render_s, **r["times"]})
                    stars.append(r["metrics"].n_stars)
                    fwhms.append(r["metrics"].fwhm_px)
                    file_mb.append(r["path"].stat().st_size / 1e6)
                    if not args.no_compress:
                        packed.append(compression(r["path"], data))
                        if not args.keep:
                            packed[-1]["path"].unlink()
                    if not args.keep:
                        r["path"].unlink()
                elif not args.no_baseline:
                    b = naive(data, header, i, start_unix, args.exptime, workdir, naive_db)
                    base_rows.append({"render": render_s, **b["times"]})
                    if not args.keep:
                        b["path"].unlink()
            del data
            print(f"  frame {i + 1}: " + " ".join(f"{k} {1000 * v:.0f}" for k, v in rows[-1].items())
                  + f" ms; {stars[-1]} stars, FWHM {fwhms[-1]:.2f} px"
                  + (f"; compress {1000 * packed[-1]['compress']:.0f} ms, x{packed[-1]['ratio']:.2f}"
                     if packed else ""), file=sys.stderr)
    finally:
        archive.close()
        naive_db.close()
        if not args.keep and not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)

    def ms(values):
        return round(1000.0 * statistics.median(values), 1)

    def ms90(values):
        return round(1000.0 * pct(values, 0.9), 1)

    totals = [sum(r[s] for s in STAGES) for r in rows]
    pipeline = [sum(r[s] for s in STAGES if s != "render") for r in rows]
    print()
    baseline_head = "" if args.no_baseline else f"{'baseline median':>18}{'p90':>10}"
    print(f"{'stage':<10}{'median ms':>12}{'p90 ms':>10}" + baseline_head)
    for stage in (*STAGES, "total", "pipeline"):
        values = totals if stage == "total" else pipeline if stage == "pipeline" else [r[stage] for r in rows]
        line = f"{stage:<10}{ms(values):>12.1f}{ms90(values):>10.1f}"
        if base_rows:
            if stage == "total":
                b = [sum(r[s] for s in STAGES) for r in base_rows]
            elif stage == "pipeline":
                b = [sum(r[s] for s in BASELINE_STAGES) for r in base_rows]
            else:
                b = [r[stage] for r in base_rows]
            line += f"{ms(b):>18.1f}{ms90(b):>10.1f}"
        print(line)
    if packed:
        print(f"{'compress':<10}{ms([p['compress'] for p in packed]):>12.1f}"
              f"{ms90([p['compress'] for p in packed]):>10.1f}   (read .fits.fz "
              f"{ms([p['read'] for p in packed]):.1f} ms; {statistics.median(p['mb'] for p in packed):.1f} MB, "
              f"ratio {statistics.median(p['ratio'] for p in packed):.2f})")
    print(f"peak RSS {peak_rss_mb():.0f} MB; {statistics.median(stars):.0f} stars a frame; "
          f"file {statistics.median(file_mb):.1f} MB")

    summary = {"frame_px": [camera.width, camera.height], "frames": args.frames}
    for stage in STAGES:
        summary[f"{stage}_ms"] = ms([r[stage] for r in rows])
    summary["total_ms"] = ms(totals)
    summary["pipeline_ms"] = ms(pipeline)
    summary["p90"] = {**{f"{s}_ms": ms90([r[s] for r in rows]) for s in STAGES}, "total_ms": ms90(totals)}
    if base_rows:
        for stage in BASELINE_STAGES:
            summary[f"baseline_{stage}_ms"] = ms([r[stage] for r in base_rows])
        summary["baseline_total_ms"] = ms([sum(r[s] for s in STAGES) for r in base_rows])
        summary["baseline_pipeline_ms"] = ms([sum(r[s] for s in BASELINE_STAGES) for r in base_rows])
    summary["n_stars"] = int(statistics.median(stars))
    summary["fwhm_px"] = round(float(np.nanmedian(fwhms)), 3)
    summary["file_mb"] = round(statistics.median(file_mb), 1)
    summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
    summary["dir"] = str(workdir)
    if packed:
        summary["compress_ms"] = ms([p["compress"] for p in packed])
        summary["compress_p90_ms"] = ms90([p["compress"] for p in packed])
        summary["compress_read_ms"] = ms([p["read"] for p in packed])
        summary["compressed_file_mb"] = round(statistics.median(p["mb"] for p in packed), 1)
        summary["compress_ratio"] = round(statistics.median(p["ratio"] for p in packed), 3)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

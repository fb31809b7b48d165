#!/usr/bin/env python3
"""Plate solving timed: astrometry.net's solve-field against our fast solver, same frames.

    python bench/solve.py [--frames 3] [--downsample 2] [--error-deg 1.0] [--xy] [--keep DIR]

Frames: FULL-SIZE pointing frames (the default simulated camera: 5208 x 3476
px of 4.3 um behind 85 mm, 10.4"/px, a 15 x 10 degree field; 120 s) of the
real sky (``catalog: tycho2``), taken through the camera's own exposure API
at varied sky positions, with a systematic pointing error of ``--error-deg``
in a different direction for each frame. The FITS header carries the
commanded pointing (RA-MNT/DEC-MNT, the hint both solvers get) and the true
centre (SIM-RA/SIM-DEC, the truth).

Solvers, one after the other on each frame (their order alternates):

- solve-field: ``observatory.solver.solve_field`` on the FITS file, with the
  commanded position (radius 15 deg), the scale within +-6% and
  ``--downsample``; its time is the subprocess's wall time (astrometry.net
  reads the image and extracts its own sources).
- fast: ``observatory.solver.solve(path, use_solve_field=False)``: reads the
  file, extracts sources with sep, matches against the Tycho-2 catalogue
  (loaded once beforehand, as in a running unit) and fits a TAN WCS; its time
  is all of that.
- ``--xy``: also solve-field given our sep source list (no extraction of its own).

Checks: each solver's centre within 30 arcsec of the truth and of the other's.
Human table first, then as the LAST line one JSON object: {"frames",
"solve_field_s_median", "fast_s_median", "ratio", "max_disagreement_arcsec",
"max_error_arcsec", "target_ratio", "ok", ...}; ``ok`` needs every check and
``ratio`` (fast / solve-field medians) below ``target_ratio``.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from astropy.io import fits  # noqa: E402

from observatory.catalog import shared_tycho2  # noqa: E402
from observatory.clock import SimClock  # noqa: E402
from observatory.solver import (extract_sources, offset_arcsec, solve, solve_field,  # noqa: E402
                                solve_field_available)
from simulators.camera import DEFAULT_SETTINGS, SimulatedCamera  # noqa: E402

TARGET_RATIO = 0.2
MAX_DISAGREEMENT_ARCSEC = 30.0
# Varied fields: low and high Dec, both hemispheres, Milky Way and not.
POSITIONS = [(88.0, 10.0), (210.0, 42.0), (300.0, -25.0), (20.0, 62.0), (160.0, -55.0),
             (266.4, -29.0), (120.0, 25.0), (330.0, 5.0)]


def take_frame(i: int, ra: float, dec: float, error_deg: float, directory: Path) -> Path:
    """One full-size pointing frame through the camera's exposure API."""
    settings = {**DEFAULT_SETTINGS, "catalog": "tycho2", "pointing_error_arcsec": error_deg * 3600.0,
                "pointing_error_pa_deg": (37.0 + 137.5 * i) % 360.0}
    camera = SimulatedCamera(f"bench{i}", settings, SimClock.starting_now(speed=10_000.0))
    camera.connect()
    path = directory / f"frame{i}.fits"
    try:
        camera.start_exposure(120.0, str(path), {"RA-MNT": ra, "DEC-MNT": dec}, ra, dec, "pointing")
        deadline = time.monotonic() + 120.0
        while True:
            result = camera.collect()
            if result is not None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("camera did not deliver the frame")
            time.sleep(0.01)
        if "path" not in result:
            raise RuntimeError(f"exposure failed: {result}")
    finally:
        camera.close()
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--downsample", type=int, default=2, help="solve-field --downsample")
    parser.add_argument("--error-deg", type=float, default=1.0, help="pointing error of each frame")
    parser.add_argument("--timeout", type=float, default=120.0, help="solve-field time limit [s]")
    parser.add_argument("--xy", action="store_true", help="also time solve-field on our source list")
    parser.add_argument("--keep", type=Path, help="keep the frames in this directory")
    args = parser.parse_args(argv)
    if solve_field_available() is None:
        print("solve-field is not installed (Debian packages astrometry.net, "
              "astrometry-data-tycho2-10-19)", file=sys.stderr)
        return 2

    catalog = shared_tycho2(limit_mag=float(DEFAULT_SETTINGS["limit_mag"]))
    t = time.perf_counter()
    catalog.load()
    print(f"Tycho-2 catalogue: {len(catalog)} stars, loaded from {catalog.loaded_from} "
          f"in {time.perf_counter() - t:.2f} s")
    directory = args.keep or Path(tempfile.mkdtemp(prefix="bench-solve-"))
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for i in range(args.frames):
            ra, dec = POSITIONS[i % len(POSITIONS)]
            t = time.perf_counter()
            path = take_frame(i, ra, dec, args.error_deg, directory)
            render_s = time.perf_counter() - t
            header = fits.getheader(path)
            true_ra, true_dec = header["SIM-RA"], header["SIM-DEC"]
            scale = float(header["PIXSCALE"])

            def run_fast():
                return solve(path, catalog=catalog, use_solve_field=False)

            def run_sf():
                return solve_field(path, ra, dec, 15.0, scale * 0.94, scale * 1.06,
                                   args.downsample, args.timeout)

            results = {}
            order = [("fast", run_fast), ("solve-field", run_sf)]
            if i % 2:
                order.reverse()
            for name, fn in order:
                t = time.perf_counter()
                sol = fn()
                results[name] = (sol, time.perf_counter() - t)
            if args.xy:
                t = time.perf_counter()
                sources, shape = extract_sources(path)
                sol = solve_field(path, ra, dec, 15.0, scale * 0.94, scale * 1.06, None, args.timeout,
                                  sources=sources, shape=shape)
                results["solve-field-xy"] = (sol, time.perf_counter() - t)
            row = {"frame": i, "commanded": [ra, dec], "true": [round(true_ra, 5), round(true_dec, 5)],
                   "pointing_error_arcsec": round(offset_arcsec_pts(ra, dec, true_ra, true_dec), 1),
                   "render_s": round(render_s, 2)}
            for name, (sol, seconds) in results.items():
                row[name] = {
                    "s": round(seconds, 3),
                    "solved": sol is not None,
                    "error_arcsec": None if sol is None else round(offset_arcsec(sol, true_ra, true_dec), 2),
                    "n_matched": None if sol is None else sol.n_matched,
                    "rms_arcsec": None if sol is None else round(sol.rms_arcsec, 2),
                }
            fast, sf = results["fast"][0], results["solve-field"][0]
            row["disagreement_arcsec"] = (None if fast is None or sf is None
                                          else round(offset_arcsec(fast, sf.ra_deg, sf.dec_deg), 2))
            rows.append(row)
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)

    names = ["solve-field", "fast"] + (["solve-field-xy"] if args.xy else [])
    err_label, dis_label = 'err"', 'fast-sf"'
    print(f"\n{'frame':>5} {'commanded RA,Dec':>17} {'error':>7}  "
          + "  ".join(f"{n + ' s':>15} {err_label:>6} {'n':>4}" for n in names) + f"  {dis_label:>8}")
    for row in rows:
        cells = []
        for n in names:
            r = row[n]
            err = "-" if r["error_arcsec"] is None else f"{r['error_arcsec']:.1f}"
            cells.append(f"{r['s']:>15.3f} {err:>6} {r['n_matched'] or 0:>4}")
        dis = "-" if row["disagreement_arcsec"] is None else f"{row['disagreement_arcsec']:.1f}"
        print(f"{row['frame']:>5} {row['commanded'][0]:>8.2f},{row['commanded'][1]:>+8.2f} "
              f"{row['pointing_error_arcsec'] / 3600:>6.2f}d  " + "  ".join(cells) + f"  {dis:>8}")

    sf_median = statistics.median(r["solve-field"]["s"] for r in rows)
    fast_median = statistics.median(r["fast"]["s"] for r in rows)
    ratio = fast_median / sf_median if sf_median > 0 else math.inf
    errors = [r[n]["error_arcsec"] for r in rows for n in ("fast", "solve-field")]
    disagreements = [r["disagreement_arcsec"] for r in rows]
    all_solved = all(e is not None for e in errors) and all(d is not None for d in disagreements)
    max_err = max((e for e in errors if e is not None), default=None)
    max_dis = max((d for d in disagreements if d is not None), default=None)
    ok = (all_solved and max_err <= MAX_DISAGREEMENT_ARCSEC and max_dis <= MAX_DISAGREEMENT_ARCSEC
          and ratio < TARGET_RATIO)
    summary = {
        "frames": len(rows),
        "frame_px": [int(DEFAULT_SETTINGS["width"]), int(DEFAULT_SETTINGS["height"])],
        "pointing_error_deg": args.error_deg,
        "solve_field_downsample": args.downsample,
        "solve_field_s_median": round(sf_median, 3),
        "fast_s_median": round(fast_median, 3),
        "ratio": round(ratio, 3),
        "max_disagreement_arcsec": max_dis,
        "max_error_arcsec": max_err,
        "all_solved": all_solved,
        "target_ratio": TARGET_RATIO,
        "ok": bool(ok),
    }
    if args.xy:
        summary["solve_field_xy_s_median"] = round(statistics.median(r["solve-field-xy"]["s"] for r in rows), 3)
    print(f"\nsolve-field median {sf_median:.2f} s, fast median {fast_median:.3f} s "
          f"(ratio {ratio:.3f}, target < {TARGET_RATIO}); max error {max_err}\", "
          f"max disagreement {max_dis}\"")
    print(json.dumps(summary))
    return 0 if ok else 1


def offset_arcsec_pts(ra1, dec1, ra2, dec2) -> float:
    r = math.radians
    h = math.sin(r(dec2 - dec1) / 2) ** 2 + math.cos(r(dec1)) * math.cos(r(dec2)) * math.sin(r(ra2 - ra1) / 2) ** 2
    return math.degrees(2 * math.asin(math.sqrt(min(1.0, h)))) * 3600.0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""One simulated night, timed: the README's main job as a benchmark.

    python bench/night.py [--speed 600] [--start 2026-11-24T03:00:00] [--config conf/unit.yaml]

Runs run_unit.py --nights 1 in a temporary $PANDIR on a free admin port and
prints, as one JSON object on its last line: wall seconds, the open-shutter
fraction of dark safe time (science exposure seconds of the busiest camera over
the seconds that were dark and safe), and the ideal fraction for the same
exposures (exptime / (exptime + readout)), which no scheduler can beat. There
is no baseline to run beside it here: POCS cannot run on this machine.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame_gaps(db_path: Path) -> float | None:
    import sqlite3
    import statistics
    con = sqlite3.connect(db_path)
    rows = con.execute("SELECT observation_id, camera, start_unix, exptime FROM exposures"
                       " WHERE image_type='science' ORDER BY camera, start_unix").fetchall()
    con.close()
    gaps = [b[2] - (a[2] + a[3]) for a, b in zip(rows, rows[1:]) if a[0] == b[0] and a[1] == b[1]]
    return statistics.median(gaps) if gaps else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--speed", type=float, default=600.0)
    p.add_argument("--start", default="2026-11-24T03:00:00")
    p.add_argument("--config", default=str(ROOT / "conf" / "unit.yaml"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-night-") as tmp:
        tmp = Path(tmp)
        config_path = Path(args.config).resolve()
        cfg = yaml.safe_load(config_path.read_text())
        cfg.setdefault("actor_system", {})["admin_port"] = free_port()
        for keys in (("states",), ("scheduler", "fields_file"), ("weather", "timeline")):
            node = cfg
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            default = {"states": "states.yaml", "fields_file": "fields.yaml",
                       "timeline": "weather/default.yaml"}[keys[-1]]
            node[keys[-1]] = str((config_path.parent / node.get(keys[-1], default)).resolve())
        (tmp / "unit.yaml").write_text(yaml.safe_dump(cfg))

        started = time.time()
        run = subprocess.run([sys.executable, str(ROOT / "run_unit.py"), "--config", str(tmp / "unit.yaml"),
                              "--start", args.start, "--speed", str(args.speed), "--nights", "1",
                              "--pandir", str(tmp / "pandir"), "--quiet"],
                             capture_output=True, text=True, timeout=3600)
        wall = time.time() - started
        summaries = list((tmp / "pandir" / "reports").glob("*/summary.json"))
        if run.returncode != 0 or not summaries:
            print(run.stdout[-2000:], run.stderr[-2000:], file=sys.stderr)
            print(json.dumps({"ok": False, "exit_status": run.returncode, "wall_seconds": round(wall, 1)}))
            return 1
        summary = json.loads(summaries[0].read_text())
        gaps = frame_gaps(tmp / "pandir" / "db" / "unit.sqlite")

    cams = cfg.get("cameras") or [{}]
    readout = max(float(c.get("settings", {}).get("readout_time", 5.0)) for c in cams)
    science = {cam: v.get("science", 0) for cam, v in summary["exposures_per_camera"].items()}
    fields = yaml.safe_load(Path(cfg["scheduler"]["fields_file"]).read_text())
    exptime = float((fields[0].get("observation") or {}).get("exptime", 120.0))
    result = {
        "ok": True,
        "speed": args.speed,
        "wall_seconds": round(wall, 1),
        "target_wall_seconds": 120,
        "open_shutter_fraction": summary["open_shutter_fraction"],
        "ideal_fraction": round(exptime / (exptime + readout), 4),
        "open_shutter_seconds": summary["open_shutter_seconds"],
        "dark_safe_seconds": summary["safe_seconds"],
        "dark_seconds": summary["dark_seconds"],
        "science_frames_per_camera": science,
        "targets": len(summary["targets"]),
        # Dead time between consecutive frames of one observation: readout plus
        # our overhead. At high speed the overhead is wall time (messages,
        # rendering, analysis on 2 cores) stretched by the speed factor.
        "median_gap_between_frames_s": round(gaps, 2) if gaps is not None else None,
        "median_overhead_wall_ms": round((gaps - readout) / args.speed * 1000, 1) if gaps is not None else None,
        "restarts": summary["restarts"],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

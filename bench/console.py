#!/usr/bin/env python3
"""How fast the operator's console answers.

    python bench/console.py [--runs 20] [--round-trips 200] [--speed 60]

Starts a simulated unit (run_unit.py, the default simulators, a temporary
$PANDIR, a free admin port), waits until it observes, then measures:

- cold: ``python -m console --pandir P status --json`` in a new process each
  time (interpreter start, imports, connect, the supervisor's answer, JSON
  out), N runs: median and p90 in ms. The target is 500 ms.
- round trip: one open connection to run/control.sock, in this process:
  ``status`` (through run_unit.py's main loop to the supervisor and back) and
  ``config-get`` (answered by the control thread, no actor), median and p90.
- the CPU time run_unit.py's main process used for 5 s without control
  requests while the unit observes (its loop wakes every 50 ms to pass
  control requests on), and, for scale, a bare ``python -c pass``.

Prints a table, then ONE JSON object as the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from observatory import control  # noqa: E402
from tests.unit_runner import RunningUnit  # noqa: E402

TARGET_COLD_MS = 500


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="cold console runs")
    p.add_argument("--round-trips", type=int, default=200, help="in-process requests of each kind")
    p.add_argument("--speed", type=float, default=60.0)
    p.add_argument("--start", default="2026-11-24T08:00:00")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        unit = RunningUnit(Path(tmp), start=args.start, speed=args.speed)
        try:
            unit.wait_for(lambda: unit.status().get("state") in ("observing", "analyzing", "tracking"), 120,
                          "observing")
            cold = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-m", "console", "--pandir", str(unit.pandir), "status",
                                    "--json"], capture_output=True, text=True, cwd=ROOT, timeout=30)
                cold.append((time.perf_counter() - t0) * 1000)
                if r.returncode != 0 or "state" not in json.loads(r.stdout):
                    raise SystemExit(f"console failed: {r.stderr}")
            trips = {"status": [], "config-get": []}
            with control.Connection(control.socket_path(unit.pandir)) as conn:
                for command, cargs in (("status", {}), ("config-get", {"key": "safety.max_wind"})):
                    for _ in range(args.round_trips):
                        t0 = time.perf_counter()
                        reply = conn.request(command, cargs)
                        trips[command].append((time.perf_counter() - t0) * 1000)
                        if not reply["ok"]:
                            raise SystemExit(f"{command} failed: {reply['error']}")
            bare = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-c", "pass"], check=True)
                bare.append((time.perf_counter() - t0) * 1000)
            time.sleep(2.5)          # past run_unit.py's short-listen burst after a control request
            pid = unit.proc.pid
            c0, w0 = cpu_seconds(pid), time.time()
            time.sleep(5)
            idle_cpu = (cpu_seconds(pid) - c0) / (time.time() - w0) * 100
            state = unit.status().get("state")
        finally:
            unit.kill()

    rows = [("bare `python -c pass`", bare), ("cold `console status --json`", cold), ("round trip: status (supervisor)", trips["status"]),
            ("round trip: config-get (no actor)", trips["config-get"])]
    print(f"{'measure':<36} {'n':>5} {'median ms':>10} {'p90 ms':>9} {'max ms':>9}")
    for name, values in rows:
        print(f"{name:<36} {len(values):>5} {statistics.median(values):>10.1f} {pct(values, 0.9):>9.1f} "
              f"{max(values):>9.1f}")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("note: PYTHONDONTWRITEBYTECODE is set, so every cold run compiles the console's modules "
              "(an installed unit caches them)")
    print(f"run_unit.py main process, CPU over 5 s without control requests: {idle_cpu:.1f} % of one core "
          f"(the unit {state})")
    result = {
        "cold_status_ms_median": round(statistics.median(cold), 1),
        "cold_status_ms_p90": round(pct(cold, 0.9), 1),
        "python_startup_ms_median": round(statistics.median(bare), 1),
        "round_trip_ms_median": round(statistics.median(trips["status"]), 2),
        "round_trip_ms_p90": round(pct(trips["status"], 0.9), 2),
        "local_round_trip_ms_median": round(statistics.median(trips["config-get"]), 3),
        "run_unit_cpu_percent": round(idle_cpu, 1),
        "runs": args.runs,
        "round_trips": args.round_trips,
        "bytecode_cached": not os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "target_cold_ms": TARGET_COLD_MS,
        "ok": statistics.median(cold) < TARGET_COLD_MS,
    }
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

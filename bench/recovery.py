#!/usr/bin/env python3
"""Recovery times: how long a running unit is out of service after a fault.

    python bench/recovery.py [--repeats 5] [--speed 60] [--start 2026-11-24T08:00:00]
                             [--hang-timeout 2.0] [--wire-hold 6.0] [--keep]

Starts run_unit.py (conf/unit.yaml: the iOptron and CloudWatcher wire
simulators and two simulated cameras) in a temporary $PANDIR on a free admin
port, waits until it observes, then injects each fault class ``--repeats``
times per target and measures WALL time (the unit's clocks and ours are the
same machine's ``time.time()``):

  sigkill   the bench SIGKILLs the actor's process itself (pid from
            run/status.json), cam01 and mount. Back in service: the restart
            event of the new incarnation (its ``wall_unix`` is taken when the
            supervisor receives the new process's ``Initialized``). Target 500 ms.
  exit      ``fault TARGET exit`` through the control socket (the actor
            answers, then calls os._exit 0.2 s later by design). Same end point.
  hang      ``fault TARGET hang``: found only by the heartbeats, so the figure
            is dominated by ``supervision.heartbeat_timeout``, which the bench
            sets LOW for this class only (``config set``, default 2.0 s with a
            0.25 s interval; the unit's default is 10 s) and restores after.
  unsafe    ``fault weather unsafe`` (injected rain) while observing: to the
            first ``-> parking`` state event (park commanded; target 1000 ms)
            and to ``-> parked``.
  wire      ``fault mount timeout|disconnect``, held ``--wire-hold`` wall s
            (longer than ``safety.device_timeout``, so the safety kernel marks
            the mount as not answering), then ``behave``: from the ``behave`` to
            the safety kernel's audit row clearing ``device:mount`` (the first
            status the mount answers again; the kernel asks about once a
            wall second).

Each sample is split with the events table and logs/unit.jsonl: the death
(``X actor died``: ChildActorExited received), the new process's start
(/proc/<pid>/stat, 10 ms resolution), its ``initialized`` log line (setup done)
and the restart event (Initialized received by the supervisor).

Bench-only settings (not the shipped defaults): clear weather timeline,
``supervision.max_restarts`` 1000 (so that repeated kills never spend the
restart budget), ``supervision.backoff_initial`` 0 (the shipped 0.5 s
back-off, doubling, applies from the second restart of an actor within
``restart_period``; the bench restarts the same actors every few seconds and
measures the restart path itself, i.e. what an isolated crash costs),
``safety.rain_clear_after`` 60 s (so the unit reopens quickly between unsafe
samples).

Prints a table, then ONE JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from observatory import control  # noqa: E402
from tests.unit_runner import RunningUnit, own_processes  # noqa: E402

WORKING = ("tracking", "observing", "analyzing")
TARGET_SIGKILL_MS = 500
TARGET_UNSAFE_MS = 1000
BENCH_OVERRIDES = {
    "supervision.max_restarts": 1000, "supervision.restart_period": 60.0, "supervision.backoff_initial": 0.0,
    "safety.rain_clear_after": 60.0, "safety.reopen_after": 0.0,
}


def iso_to_unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def proc_start_wall(pid: int) -> float | None:
    """Wall time a process started (10 ms resolution): its start in clock ticks
    since boot, against /proc/uptime read now (btime is whole seconds and drifts
    from the wall clock)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        now_wall = time.time()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return now_wall - (uptime - started)
    except (OSError, ValueError, IndexError):
        return None


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


class Bench:
    def __init__(self, unit: RunningUnit, verbose: bool):
        self.unit = unit
        self.verbose = verbose
        self.samples: list[dict] = []
        self.log_offset = 0
        self.log_lines: list[dict] = []

    def note(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)

    # -- reading -----------------------------------------------------------------
    def actor(self, name: str) -> dict:
        return next((a for a in self.unit.status().get("actors", []) if a["name"] == name), {})

    def event_after(self, wall: float, where: str, args=()) -> tuple | None:
        rows = self.unit.query(f"SELECT wall_unix, time_unix, kind, message, data FROM events "
                               f"WHERE wall_unix >= ? AND ({where}) ORDER BY id LIMIT 1", (wall, *args))
        return rows[0] if rows else None

    def wait_event(self, wall: float, where: str, args=(), timeout: float = 60.0, what: str = "") -> tuple:
        return self.unit.wait_for(lambda: self.event_after(wall, where, args), timeout, what or where,
                                  interval=0.02)

    def logs(self) -> list[dict]:
        """logs/unit.jsonl, read incrementally."""
        path = self.unit.pandir / "logs" / "unit.jsonl"
        try:
            with open(path, "rb") as f:
                f.seek(self.log_offset)
                data = f.read()
        except OSError:
            return self.log_lines
        end = data.rfind(b"\n") + 1
        self.log_offset += end
        for line in data[:end].splitlines():
            try:
                self.log_lines.append(json.loads(line))
            except ValueError:
                pass
        return self.log_lines

    def initialized_log(self, name: str, pid: int) -> float | None:
        for rec in reversed(self.logs()):
            if rec.get("actor") == name and rec.get("event") == "initialized" and rec.get("pid") == pid:
                return iso_to_unix(rec["timestamp"])
        return None

    def wait_working(self, timeout: float = 120.0) -> None:
        self.unit.wait_for(lambda: self.unit.status().get("state") in WORKING, timeout, "the unit observing")

    def wait_ready(self, name: str, timeout: float = 60.0) -> dict:
        return self.unit.wait_for(lambda: (a := self.actor(name)).get("ready") and a, timeout, f"{name} ready")

    def fault(self, target: str, kind: str, **params) -> float:
        wall = time.time()
        reply = control.request(self.unit.pandir, "fault", {"target": target, "kind": kind, "params": params})
        if not reply.get("ok"):
            raise RuntimeError(f"fault {target} {kind} refused: {reply}")
        return wall

    def config_set(self, key: str, value) -> None:
        reply = control.request(self.unit.pandir, "config-set", {"key": key, "value": value})
        if not reply.get("ok"):
            raise RuntimeError(f"config set {key} {value}: {reply}")

    # -- process faults ---------------------------------------------------------------
    def restart_sample(self, cls: str, target: str) -> dict:
        """Inject one process fault into ``target`` and time its way back."""
        old = self.wait_ready(target)
        old_pid = old["pid"]
        time.sleep(0.3)         # let the last restart's follow-up settle
        if cls == "sigkill":
            t0 = time.time()
            os.kill(old_pid, signal.SIGKILL)
        else:
            t0 = self.fault(target, cls)
        restart = self.wait_event(t0, "kind='restart' AND json_extract(data, '$.child') = ? AND "
                                      "message LIKE '% restarted (pid %'", (target,),
                                  timeout=60, what=f"{target} restarted")
        back = restart[0]
        new_pid = json.loads(restart[4]).get("pid")
        forked = proc_start_wall(new_pid) if new_pid else None
        seen = None
        deadline = time.time() + 10
        while time.time() < deadline:
            a = self.actor(target)
            if a.get("ready") and a.get("pid") == new_pid:
                seen = time.time()
                break
            time.sleep(0.01)
        died = self.event_after(t0, "kind='error' AND json_extract(data, '$.child') = ? AND "
                                    "(message LIKE '%actor died%' OR message LIKE '%hung (no heartbeat%')",
                                (target,))
        actually_died = None
        if cls == "hang":     # the hung process is killed by the supervisor: then ChildActorExited
            hung = died
            died = self.event_after(hung[0] if hung else t0, "kind='error' AND json_extract(data, '$.child') = ? "
                                    "AND message LIKE '%actor died%'", (target,))
            actually_died = hung[0] if hung else None
        injected = self.event_after(t0, "kind='fault' AND json_extract(data, '$.target') = ?", (target,))
        delayed = self.event_after(t0, "kind='restart' AND json_extract(data, '$.child') = ? AND "
                                       "message LIKE '%restarting in%'", (target,))
        time.sleep(0.05)
        init = self.initialized_log(target, new_pid) if new_pid else None
        sample = {"class": cls, "target": target, "old_pid": old_pid, "new_pid": new_pid,
                  "ms": ms(back - t0),
                  "fault_event_ms": ms(injected[0] - t0) if injected else None,
                  "hung_detected_ms": ms(actually_died - t0) if actually_died else None,
                  "died_ms": ms(died[0] - t0) if died else None,
                  "forked_ms": ms(forked - t0) if forked else None,
                  "initialized_ms": ms(init - t0) if init else None,
                  "restart_event_ms": ms(back - t0),
                  "backoff_s": json.loads(delayed[4]).get("delay_s") if delayed and delayed[0] <= back else None,
                  "status_ready_seen_ms": ms(seen - t0) if seen else None}
        self.samples.append(sample)
        self.note(f"  {cls:8} {target:6} {sample['ms']:8.1f} ms  (died {sample['died_ms']}, forked "
                  f"{sample['forked_ms']}, initialized {sample['initialized_ms']})")
        return sample

    # -- weather turning unsafe -----------------------------------------------------------
    def unsafe_sample(self, seconds: float) -> dict:
        self.wait_working()
        t0 = self.fault("weather", "unsafe", seconds=seconds)
        parked = self.wait_event(t0, "kind='state' AND message LIKE '% -> parked%'", timeout=60, what="parked")
        verdict = self.event_after(t0, "kind='safety' AND message LIKE 'UNSAFE%'")
        parking = self.event_after(t0, "kind='state' AND message LIKE '% -> parking%'")
        kernel = self.unit.query("SELECT MIN(wall_unix) FROM safety_audit WHERE kind='command' AND device='mount' "
                                 "AND wall_unix >= ?", (t0,))
        kernel_wall = kernel[0][0] if kernel and kernel[0][0] else None
        sample = {"class": "unsafe", "target": "weather",
                  "verdict_ms": ms(verdict[0] - t0) if verdict else None,
                  "park_commanded_ms": ms(parking[0] - t0) if parking else None,
                  "kernel_park_ms": ms(kernel_wall - t0) if kernel_wall else None,
                  "parked_ms": ms(parked[0] - t0),
                  "parking_note": parking[3] if parking else None}
        sample["ms"] = sample["park_commanded_ms"]
        self.samples.append(sample)
        self.note(f"  unsafe: verdict {sample['verdict_ms']} ms, parking {sample['park_commanded_ms']} ms, "
                  f"parked {sample['parked_ms']} ms")
        # Back to observing before the next sample (rain for ``seconds``, then the clear-after).
        self.wait_event(t0, "kind='state' AND message LIKE '% -> scheduling%'", timeout=180, what="reopening")
        return sample

    # -- the mount's wire --------------------------------------------------------------------
    def wire_sample(self, kind: str, hold: float) -> dict:
        self.wait_working()
        t0 = self.fault("mount", kind)
        time.sleep(hold)
        t1 = self.fault("mount", "behave")

        def cleared():
            rows = self.unit.query("SELECT wall_unix, changed FROM safety_audit WHERE kind='verdict' AND wall_unix >= ? "
                                   "ORDER BY id", (t0,))
            for wall, changed in rows:
                if "device:mount" in json.loads(changed or "{}").get("cleared", []):
                    return wall
            return None
        back = self.unit.wait_for(cleared, 60, "the mount answering again", interval=0.02)
        added = self.unit.query("SELECT wall_unix, changed FROM safety_audit WHERE kind='verdict' AND wall_unix >= ? "
                                "ORDER BY id", (t0,))
        added_wall = next((w for w, c in added if "device:mount" in json.loads(c or "{}").get("added", [])), None)
        killed = self.event_after(t0, "kind='error' AND json_extract(data, '$.child') = 'mount'")
        sample = {"class": f"wire_{kind}", "target": "mount", "hold_s": hold,
                  "ms": ms(back - t1), "detected_ms": ms(added_wall - t0) if added_wall else None,
                  "behave_after_ms": ms(t1 - t0),
                  "mount_actor_event": killed[3] if killed else None}
        self.samples.append(sample)
        self.note(f"  wire {kind}: detected after {sample['detected_ms']} ms, answering {sample['ms']} ms "
                  f"after behave{' (' + killed[3] + ')' if killed else ''}")
        self.wait_event(t1, "kind='state' AND message LIKE '% -> scheduling%'", timeout=180, what="reopening")
        return sample


def stats(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "median": None, "max": None, "min": None}
    return {"n": len(values), "median": round(statistics.median(values), 1), "max": round(max(values), 1),
            "min": round(min(values), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="samples per fault class and target (default 5)")
    p.add_argument("--speed", type=float, default=60.0)
    p.add_argument("--start", default="2026-11-24T08:00:00", help="simulated start (dark at Mauna Loa)")
    p.add_argument("--hang-timeout", type=float, default=2.0,
                   help="supervision.heartbeat_timeout during the hang samples (default 2.0 s)")
    p.add_argument("--hang-interval", type=float, default=0.25,
                   help="supervision.heartbeat_interval during the hang samples (default 0.25 s)")
    p.add_argument("--wire-hold", type=float, default=6.0,
                   help="wall seconds a wire fault lasts before 'behave' (default 6, > safety.device_timeout)")
    p.add_argument("--classes", default="sigkill,exit,hang,unsafe,wire",
                   help="comma-separated subset of sigkill,exit,hang,unsafe,wire")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (printed)")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per sample on stderr")
    args = p.parse_args()
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]

    tmp = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    unit = RunningUnit(tmp, start=args.start, speed=args.speed, overrides=dict(BENCH_OVERRIDES))
    bench = Bench(unit, args.verbose)
    exit_status, leaked, error = None, [], None
    started = time.time()
    try:
        unit.wait_for(lambda: unit.query("SELECT 1 FROM exposures WHERE image_type='science' LIMIT 1"), 240,
                      "the first science frame")
        for rep in range(args.repeats):
            for target in ("cam01", "mount"):
                if "sigkill" in classes:
                    bench.restart_sample("sigkill", target)
                if "exit" in classes:
                    bench.restart_sample("exit", target)
        if "hang" in classes:
            bench.config_set("supervision.heartbeat_interval", args.hang_interval)
            bench.config_set("supervision.heartbeat_timeout", args.hang_timeout)
            for rep in range(args.repeats):
                for target in ("cam01", "mount"):
                    bench.restart_sample("hang", target)
            bench.config_set("supervision.heartbeat_timeout", 10.0)
            bench.config_set("supervision.heartbeat_interval", 2.0)
        if "unsafe" in classes:
            for rep in range(args.repeats):
                bench.unsafe_sample(seconds=60.0)
        if "wire" in classes:
            for kind in ("timeout", "disconnect"):
                for rep in range(args.repeats):
                    bench.wire_sample(kind, args.wire_hold)
        exit_status = unit.terminate(timeout=120)
    except Exception as e:  # noqa: BLE001 - reported in the JSON line
        error = f"{type(e).__name__}: {e}"[:2000]
        print(error, file=sys.stderr)
    finally:
        unit.kill()
        time.sleep(1.0)
        leaked = own_processes(str(unit.pandir))
        for pid in leaked:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    wall = time.time() - started

    # -- the table --------------------------------------------------------------------------
    by = {}
    for s in bench.samples:
        by.setdefault((s["class"], s["target"]), []).append(s)
    cols = ("fault_event_ms", "hung_detected_ms", "died_ms", "forked_ms", "initialized_ms", "restart_event_ms",
            "status_ready_seen_ms")
    print(f"recovery bench: speed x{args.speed:g}, {args.repeats} repeat(s), pandir {unit.pandir}"
          + ("" if args.keep else " (removed)"))
    print("wall milliseconds from the injection (medians; 'ms' is the figure that counts)")
    print(f"{'class':14} {'target':7} {'n':>2} {'ms med':>8} {'ms max':>8}   breakdown (medians)")
    for (cls, target), rows in by.items():
        st = stats([r["ms"] for r in rows])
        if cls in ("sigkill", "exit", "hang"):
            parts = ", ".join(f"{c[:-3]} {stats([r[c] for r in rows])['median']}" for c in cols
                              if stats([r[c] for r in rows])["n"])
        elif cls == "unsafe":
            parts = ", ".join(f"{c[:-3]} {stats([r[c] for r in rows])['median']}"
                              for c in ("verdict_ms", "kernel_park_ms", "park_commanded_ms", "parked_ms"))
        else:
            parts = (f"detected {stats([r['detected_ms'] for r in rows])['median']} after injection; "
                     f"answering again measured from 'behave' (hold {args.wire_hold:g} s)")
        print(f"{cls:14} {target:7} {st['n']:>2} {st['median']!s:>8} {st['max']!s:>8}   {parts}")
    odd = [s for s in bench.samples if s.get("mount_actor_event")]
    for s in odd:
        print(f"note: during {s['class']} the mount actor had an error event: {s['mount_actor_event']}")

    def pick(cls, key="ms", target=None):
        return stats([s[key] for s in bench.samples if s["class"] == cls and (target is None or s["target"] == target)])

    sk, ex, hg, un = pick("sigkill"), pick("exit"), pick("hang"), pick("unsafe")
    parked = pick("unsafe", "parked_ms")
    wt, wd = pick("wire_timeout"), pick("wire_disconnect")
    result = {
        "speed": args.speed, "repeats": args.repeats, "wall_seconds": round(wall, 1),
        "sigkill_device_ms_median": sk["median"], "sigkill_device_ms_max": sk["max"],
        "sigkill_cam01_ms_median": pick("sigkill", target="cam01")["median"],
        "sigkill_mount_ms_median": pick("sigkill", target="mount")["median"],
        "sigkill_mount_ms_max": pick("sigkill", target="mount")["max"],
        "target_sigkill_ms": TARGET_SIGKILL_MS,
        "exit_ms_median": ex["median"], "exit_ms_max": ex["max"],
        "exit_from_death_ms_median": stats([s["ms"] - s["died_ms"] for s in bench.samples
                                            if s["class"] == "exit" and s["died_ms"] is not None])["median"],
        "hang_ms_median": hg["median"], "hang_ms_max": hg["max"],
        "hang_heartbeat_timeout_s": args.hang_timeout, "hang_heartbeat_interval_s": args.hang_interval,
        "unsafe_to_park_commanded_ms_median": un["median"], "unsafe_to_park_commanded_ms_max": un["max"],
        "unsafe_to_parked_ms_median": parked["median"], "unsafe_to_parked_ms_max": parked["max"],
        "target_unsafe_ms": TARGET_UNSAFE_MS,
        "wire_timeout_answer_ms_median": wt["median"], "wire_timeout_answer_ms_max": wt["max"],
        "wire_disconnect_answer_ms_median": wd["median"], "wire_disconnect_answer_ms_max": wd["max"],
        "wire_hold_s": args.wire_hold,
        "exit_status": exit_status, "leaked_processes": len(leaked),
    }
    # The targets are judged on the median (the typical recovery); the max is
    # reported beside it, with its own flag, since a shared machine adds outliers.
    result["sigkill_ok"] = sk["n"] > 0 and sk["median"] < TARGET_SIGKILL_MS
    result["sigkill_max_ok"] = sk["n"] > 0 and sk["max"] < TARGET_SIGKILL_MS
    result["unsafe_ok"] = un["n"] > 0 and un["median"] < TARGET_UNSAFE_MS
    result["unsafe_max_ok"] = un["n"] > 0 and un["max"] < TARGET_UNSAFE_MS
    result["ok"] = (error is None and exit_status == 0 and not leaked
                    and ("sigkill" not in classes or result["sigkill_ok"])
                    and ("unsafe" not in classes or result["unsafe_ok"]))
    if error:
        result["error"] = error
    if args.keep:
        (tmp / "samples.json").write_text(json.dumps(bench.samples, indent=1))
        result["kept"] = str(tmp)
    else:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

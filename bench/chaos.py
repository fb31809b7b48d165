#!/usr/bin/env python3
"""Chaos: several simulated nights in ONE run of run_unit.py under random faults.

    python bench/chaos.py [--nights 7] [--speed 600] [--seed 1] [--fault-every 15]
                          [--start 2026-11-24T03:00:00] [--keep] [-v]
    python bench/chaos.py --nights 2          # the quick mode

Runs ``run_unit.py --nights N`` (conf/unit.yaml: iOptron and CloudWatcher wire
simulators, two simulated cameras, the shipped supervision settings, the
default weather timeline with its cloudy and rainy spell) in a temporary
$PANDIR on a free admin port, and injects faults through the control socket at
random wall times (a gap uniform in [0.5, 1.5] x ``--fault-every`` seconds),
all drawn from one ``random.Random(--seed)``:

  40 %  a process fault in a random actor of the unit (status.json's actors):
        kill, exit, hang (found by the heartbeats, 10 s by default), raise,
        slow (0.2-1.0 s per message for 5-20 wall s; not for the mount and the
        weather station, whose 'slow' is a wire fault)
  15 %  a camera readout fault: error or hang_readout in cam00 or cam01
  20 %  a weather unsafe spell (injected rain, 300-3600 simulated s)
  25 %  a wire fault in the mount's or the weather station's simulator:
        timeout, garbage, half, slow or disconnect, ended by 'behave' after
        2-15 wall s (one at a time per device)

No new fault is injected in the last 10 wall seconds of the last night's dark
time (nor after it), and
every wire fault still active then is ended, so that the final park and stop
are not themselves under fault. After the run it measures:

unsafe and unparked (from the events table)
    The unit is *exposed* while the last safety verdict the supervisor
    recorded (events of kind 'safety') is UNSAFE and its state is not one in
    which the mount is parked: starting, sleeping, ready, parked,
    housekeeping. A spell of exposure normally runs from an UNSAFE verdict
    met while observing to the next '-> parked'. Each spell is allowed the
    park itself: the longest possible park of the mount (180 deg on an axis at
    ``mount.settings.slew_rate_deg_s`` plus 2 s settle: 62 simulated s by
    default) plus 1.5 WALL seconds times the speed (1 s to command the park,
    the recovery bench's target, and 0.5 s for the arrival to be noticed: the
    mount actor polls at least every half wall second). What a spell lasts
    beyond that is *excess*; the target is 0. Spells during which the mount
    itself was under a fault (a wire fault, or its actor killed, exiting or
    hung) cannot always park in time and are counted apart. Spells during a
    fault of the safety actor itself (its slowness, hang...) are marked and
    their excess shown apart too, but still counted. Entering any
    unparked state other than 'parking' while the verdict is UNSAFE is
    counted as a violation (target 0). The kernel's own detection delay (its
    check interval) is not included: the clock starts at the verdict.
frames lost or corrupt
    Every *.fits (and *.fits.fz) under images/ must open with astropy (header and data,
    data shape matching NAXISn, finite values) and have exactly one row in
    ``exposures``; every row's file must exist (and open); no ``.*.part``
    file may be left.
    Exposures lost with a killed camera actor (no file, no row, an
    'exposure' event) are by design and listed, not counted.
leaked processes
    Processes whose command line mentions the PANDIR, 2 s after run_unit.py
    has exited.
RSS growth
    VmRSS of every process whose command line mentions the PANDIR, sampled at
    the end of night 1 and at the end of night N (the first time status.json
    shows state 'housekeeping' for that night, or its nights_done counted),
    compared per process (actors by name; run_unit.py, the Thespian admin and
    logger, the wire simulators). Short-lived workers (the nightly report's
    process, solve-field) are not sampled. A process restarted in between
    (another pid: a new incarnation of the same actor) is judged too, and
    marked. RssAnon (private heap pages) is shown beside VmRSS. Target: VmRSS
    growth < 10 % per process.

    Both samples are taken at the same point of the night, before its
    housekeeping: night 1's before any nightly report was made, night N's
    after N-1 of them. Work done for the first time after night 1's sample
    (housekeeping, the report) therefore counts as growth: the archive actor
    makes the report in a process of its own so that matplotlib never enters
    it (it used to add 15 MB of libraries and 2.5 MB of heap, +13-17 %).
    A single sample also carries whatever garbage the process has not
    collected yet: astropy's first time conversions leave about 58 MB of
    reference cycles in the supervisor; each actor inherits them with the
    fork and frees them at its own full collections, at times that depend on
    its allocations, so its RSS drops by 25-30 MB once or twice at random
    moments, sometimes nights later. Night 1's sample is then too high (a
    growth hidden, a decrease shown: -18 to -35 % in the 7-night run), and a
    replacement actor forked from a supervisor holding such garbage can look
    larger. The archive collects at its start, so its figure is fair.

Prints a table, then ONE JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from observatory import control  # noqa: E402
from tests.unit_runner import RunningUnit, own_processes  # noqa: E402

SECURED = ("starting", "sleeping", "ready", "parked", "housekeeping")
WIRE_TARGETS = ("mount", "weather")
WIRE_KINDS = ("timeout", "garbage", "half", "slow", "disconnect")
CAMERAS = ("cam00", "cam01")
RSS_TARGET_PCT = 10.0
TRANSIENT = "transient:"     # label prefix of short-lived worker processes (not judged)
QUIET_WALL_S = 10.0          # no new fault this close (wall) to the end of the last night


def parse_iso(text: str) -> float:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


# ------------------------------------------------------------------ processes

def read_rss_kb(pid: int) -> tuple[int | None, int | None]:
    """(VmRSS, RssAnon) in kB: all resident pages (shared ones, e.g. inherited
    from the forking parent, included), and the private anonymous ones (heap)."""
    rss = anon = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("RssAnon:"):
                anon = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, anon


def ppid_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def label_processes(unit: RunningUnit) -> dict[int, str]:
    """pid -> a stable name for every process of the unit."""
    status = unit.status()
    names = {a["pid"]: a["name"] for a in status.get("actors", []) if a.get("pid")}
    sup = (status.get("supervisor") or {}).get("pid")
    if sup:
        names[sup] = "supervisor"
    actors = dict(names)          # a process started by one of these is a worker of that actor
    names[unit.proc.pid] = "run_unit.py"
    admin = ppid_of(sup) if sup else None
    if admin:
        names.setdefault(admin, "thespian-admin")
    labels = {}
    for pid in own_processes(str(unit.pandir)):
        if pid in names:
            labels[pid] = names[pid]
            continue
        cmd = cmdline(pid)
        parent = actors.get(ppid_of(pid))
        if "simulators." in cmd:
            labels[pid] = cmd.split("simulators.", 1)[1].split()[0] + "-simulator"
        elif "observatory.report" in cmd:
            labels[pid] = f"{TRANSIENT}nightly-report-{pid}"
        elif parent:
            labels[pid] = f"{TRANSIENT}{parent}-child-{pid}"      # e.g. solve-field under analysis
        elif admin and ppid_of(pid) == admin:
            labels[pid] = "thespian-logger" if "thespian-logger" not in labels.values() else f"admin-child-{pid}"
        else:
            labels[pid] = f"other-{pid} (ppid {ppid_of(pid)})"
    return labels


def sample_rss(unit: RunningUnit) -> dict[str, dict]:
    """VmRSS and RssAnon of every long-lived process of the unit. Short-lived
    workers (the nightly report's process, solve-field under the analysis
    actor) are left out: they come and go within seconds by design, and
    whether one is caught says nothing about growth."""
    out = {}
    for pid, name in label_processes(unit).items():
        if name.startswith(TRANSIENT):
            continue
        rss, anon = read_rss_kb(pid)
        if rss is not None:
            out[name] = {"pid": pid, "rss_kb": rss, "anon_kb": anon}
    return out


# ------------------------------------------------------------------ faults

class Chaos:
    def __init__(self, unit: RunningUnit, rng: random.Random, speed: float, verbose: bool):
        self.unit, self.rng, self.speed, self.verbose = unit, rng, speed, verbose
        self.injected: list[dict] = []       # every attempt: wall, target, kind, params, ok, error
        self.wire_active: dict[str, dict] = {}   # target -> the injection, with 'behave_at'

    def note(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)

    def _send(self, target: str, kind: str, params: dict) -> dict:
        rec = {"wall": time.time(), "target": target, "kind": kind, "params": params}
        try:
            reply = control.request(self.unit.pandir, "fault", {"target": target, "kind": kind, "params": params},
                                    timeout=15)
            rec["ok"], rec["error"] = bool(reply.get("ok")), reply.get("error", "")
        except OSError as e:
            rec["ok"], rec["error"] = False, f"{type(e).__name__}: {e}"
        self.injected.append(rec)
        self.note(f"{time.strftime('%H:%M:%S')} fault {target} {kind} {params or ''} -> "
                  f"{'ok' if rec['ok'] else 'REFUSED: ' + rec['error']}")
        return rec

    def choose(self, actors: list[str]) -> tuple[str, str, dict]:
        r = self.rng.random()
        if r < 0.40:
            target = self.rng.choice(actors)
            kinds = ["kill", "exit", "hang", "raise"] + ([] if target in WIRE_TARGETS else ["slow"])
            kind = self.rng.choice(kinds)
            params = {"seconds": round(self.rng.uniform(0.2, 1.0), 2),
                      "duration": round(self.rng.uniform(5, 20), 1)} if kind == "slow" else {}
            return target, kind, params
        if r < 0.55:
            return self.rng.choice(CAMERAS), self.rng.choice(("error", "hang_readout")), {}
        if r < 0.75:
            return "weather", "unsafe", {"seconds": round(self.rng.uniform(300, 3600))}
        target = self.rng.choice(WIRE_TARGETS)
        return target, self.rng.choice(WIRE_KINDS), {"hold_s": round(self.rng.uniform(2, 15), 1)}

    def inject_random(self, actors: list[str]) -> None:
        target, kind, params = self.choose(actors)
        if kind in WIRE_KINDS and target in WIRE_TARGETS:
            hold = params.pop("hold_s")
            if target in self.wire_active:
                return                           # one wire fault at a time per device (the draw is still used)
            rec = self._send(target, kind, params)
            if rec["ok"]:
                rec["hold_s"] = hold
                self.wire_active[target] = {**rec, "behave_at": rec["wall"] + hold}
            return
        self._send(target, kind, params)

    def behave_due(self, now: float, everything: bool = False) -> None:
        for target, rec in list(self.wire_active.items()):
            if everything or now >= rec["behave_at"]:
                sent = self._send(target, "behave", {})
                rec["ended"] = sent["wall"]
                for r in self.injected:
                    if r["wall"] == rec["wall"] and r["target"] == target:
                        r["ended"] = sent["wall"]
                if sent["ok"] or "not running" in sent.get("error", ""):
                    del self.wire_active[target]


# ------------------------------------------------------------------ analysis

def _spells(timeline: list[tuple], allowance_s: float, injected: list[dict]) -> dict:
    """``timeline``: (sim_time, wall_time, 'verdict'|'state', value, text), in order.
    Spells of 'the verdict is UNSAFE and the mount is not parked'."""
    safe, parked = None, True          # the unit starts with its mount parked (state 'starting')
    spells, violations, open_spell = [], [], None
    for t, w, kind, value, text in timeline:
        if kind == "verdict":
            safe = value
        else:
            if safe is False and value not in SECURED and value != "parking":
                violations.append({"time_unix": t, "wall_unix": w, "message": text})
            # 'parking' from a parked state (a stop, an operator park) moves nothing.
            parked = True if value in SECURED else parked if value == "parking" else False
        exposed = safe is False and not parked
        if exposed and open_spell is None:
            open_spell = {"start": t, "start_wall": w, "first": text}
        elif not exposed and open_spell is not None:
            open_spell.update(end=t, end_wall=w, last=text)
            spells.append(open_spell)
            open_spell = None
    if open_spell is not None:
        open_spell.update(end=None, end_wall=None, last="(still exposed when the run ended)")
        spells.append(open_spell)
    mount_faults = [r for r in injected if r.get("ok") and r["target"] == "mount" and r["kind"] != "behave"]
    safety_faults = [r for r in injected if r.get("ok") and r["target"] == "safety"]
    for sp in spells:
        end_wall = sp["end_wall"] if sp["end_wall"] is not None else time.time()
        end = sp["end"] if sp["end"] is not None else sp["start"] + (end_wall - sp["start_wall"])
        sp["duration_s"] = round(end - sp["start"], 1)
        sp["wall_s"] = round(end_wall - sp["start_wall"], 2)
        sp["excess_s"] = round(max(0.0, sp["duration_s"] - allowance_s), 1)
        # A mount fault active during the spell, or injected shortly before it (a
        # hang is found after the heartbeat timeout, 10 s, then restarted).
        sp["mount_fault"] = any(r["wall"] <= end_wall and r.get("ended", r["wall"] + 15) >= sp["start_wall"] - 1
                                for r in mount_faults)
        # Marked only (still counted as excess): the safety kernel itself under a
        # fault, from the injection until it is over (a 'slow' lasts its duration;
        # a hang is found after the heartbeat timeout, 10 s, then restarted).
        sp["safety_fault"] = any(r["wall"] <= end_wall and r["wall"] + _fault_span(r) >= sp["start_wall"] - 1
                                 for r in safety_faults)
    return {"spells": spells, "violations": violations, "allowance_s": round(allowance_s, 1),
            "exposed_s": round(sum(sp["duration_s"] for sp in spells), 1),
            "excess_s": round(sum(sp["excess_s"] for sp in spells if not sp["mount_fault"]), 1),
            "excess_mount_fault_s": round(sum(sp["excess_s"] for sp in spells if sp["mount_fault"]), 1),
            "excess_safety_fault_s": round(sum(sp["excess_s"] for sp in spells
                                               if sp["safety_fault"] and not sp["mount_fault"]), 1)}


def _fault_span(rec: dict) -> float:
    """Wall seconds an injected process fault keeps its actor from working normally."""
    if rec["kind"] == "slow":
        return float(rec["params"].get("duration", 20.0))
    return 15.0 if rec["kind"] == "hang" else 3.0


def _state_rows(unit: RunningUnit) -> list[tuple]:
    out = []
    for t, w, message, data in unit.query("SELECT time_unix, wall_unix, message, data FROM events "
                                          "WHERE kind='state' ORDER BY id"):
        new = json.loads(data or "{}").get("state") or message.split(" -> ", 1)[1].split(" ", 1)[0]
        out.append((t, w, "state", new, message))
    return out


def kernel_verdicts(unit: RunningUnit) -> list[tuple]:
    """(wall, safe, reasons) of every verdict change the safety kernel logged
    (logs/unit.jsonl, written by the kernel's own process as it decides)."""
    out = []
    try:
        with open(unit.pandir / "logs" / "unit.jsonl", "rb") as f:
            for line in f:
                if b'"safety_verdict"' not in line:
                    continue
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                if d.get("event") == "safety_verdict" and d.get("actor") == "safety":
                    out.append((parse_iso(d["timestamp"]), bool(d.get("safe")), d.get("reasons") or []))
    except OSError:
        pass
    return out


def unsafe_exposure(unit: RunningUnit, speed: float, park_motion_s: float, injected: list[dict]) -> dict:
    """Two views of 'UNSAFE and the mount not parked'.

    supervisor: the verdicts the supervisor recorded (events of kind 'safety')
    against its states, in simulated time.
    kernel: the verdicts the safety kernel decided (its safety_verdict log
    lines) against the supervisor's states, on the wall clock (x speed): this
    one also sees verdicts that were decided but not delivered in time.
    Plus the delivery delay of each verdict change, kernel -> supervisor."""
    allowance = park_motion_s + 1.5 * speed
    states = _state_rows(unit)
    sup_verdicts = [(t, w, "verdict", bool(json.loads(d or "{}").get("safe")), m)
                    for t, w, m, d in unit.query("SELECT time_unix, wall_unix, message, data FROM events "
                                                 "WHERE kind='safety' ORDER BY id")]
    supervisor = _spells(sorted(states + sup_verdicts, key=lambda r: (r[1], r[2] == "verdict")), allowance, injected)
    kv = kernel_verdicts(unit)
    origin = min([w for _, w, *_ in states] + [w for w, *_ in kv] or [0.0])
    k_timeline = [((w - origin) * speed, w, "verdict", safe, ("UNSAFE: " + ", ".join(r)) if not safe else "safe")
                  for w, safe, r in kv]
    k_timeline += [((w - origin) * speed, w, kind, v, text) for _, w, kind, v, text in states]
    kernel = _spells(sorted(k_timeline, key=lambda r: (r[1], r[2] == "verdict")), allowance, injected)
    # Delivery: each flip of the kernel's verdict, to the supervisor's event with that value.
    delays, prev = [], None
    for w, safe, reasons in kv:
        if safe == prev:
            continue
        prev = safe
        before = [v for v in sup_verdicts if v[1] <= w]
        if before and before[-1][3] == safe:
            continue                      # the supervisor already had that verdict
        got = next((v for v in sup_verdicts if v[1] >= w - 0.005 and v[3] == safe), None)
        delays.append({"kernel_wall": w, "safe": safe, "reasons": reasons,
                       "delay_ms": round((got[1] - w) * 1000, 1) if got else None})
    return {"supervisor": supervisor, "kernel": kernel, "delivery": delays,
            "delivery_ms_max": max((d["delay_ms"] for d in delays if d["delay_ms"] is not None), default=None),
            "undelivered": sum(1 for d in delays if d["delay_ms"] is None)}


def check_frames(unit: RunningUnit) -> dict:
    import numpy as np
    from astropy.io import fits
    images = unit.pandir / "images"
    on_disk = {str(p) for pattern in ("*.fits", "*.fits.fz") for p in images.rglob(pattern)} \
        if images.exists() else set()
    parts = [str(p) for p in images.rglob(".*.part")] if images.exists() else []
    rows = [p for (p,) in unit.query("SELECT path FROM exposures")]
    duplicates = len(rows) - len(set(rows))
    unreadable = []
    # A row may point outside images/ (retention moves frames to retention.archive_dir).
    for path in sorted(on_disk | {r for r in rows if os.path.exists(r)}):
        try:
            with fits.open(path, memmap=False) as h:
                h.verify("exception")
                image = h[1] if path.endswith(".fz") else h[0]     # fpack: the image is extension 1
                data = image.data
                hdr = image.header
                shape = tuple(hdr[f"NAXIS{i}"] for i in range(hdr["NAXIS"], 0, -1))
                if data is None or data.shape != shape or not np.isfinite(np.asarray(data, dtype=float)).all():
                    raise ValueError(f"data {None if data is None else data.shape} != header {shape}")
        except Exception as e:  # noqa: BLE001 - every failure counts
            unreadable.append(f"{path}: {type(e).__name__}: {e}"[:300])
    lost_by_design = unit.query("SELECT COUNT(*) FROM events WHERE kind IN ('exposure', 'resume') "
                                "AND message LIKE '%lost%'")
    return {"files": len(on_disk), "rows": len(rows), "duplicates": duplicates,
            "rows_without_file": sorted(r for r in set(rows) if r not in on_disk and not os.path.exists(r)),
            "files_without_row": sorted(on_disk - set(rows)),
            "unreadable": unreadable, "part_leftovers": parts,
            "exposures_lost_with_actor": lost_by_design[0][0] if lost_by_design else 0}


def rss_growth(first: dict, last: dict) -> list[dict]:
    out = []
    for name in sorted(set(first) | set(last)):
        a, b = first.get(name), last.get(name)
        row = {"process": name, "rss1_kb": a and a["rss_kb"], "rssN_kb": b and b["rss_kb"],
               "anon1_kb": a and a["anon_kb"], "anonN_kb": b and b["anon_kb"],
               "same_pid": bool(a and b and a["pid"] == b["pid"])}
        if a and b:
            row["growth_pct"] = round(100.0 * (b["rss_kb"] - a["rss_kb"]) / a["rss_kb"], 1)
            if a["anon_kb"] and b["anon_kb"]:
                row["anon_growth_pct"] = round(100.0 * (b["anon_kb"] - a["anon_kb"]) / a["anon_kb"], 1)
        out.append(row)
    return out


# ------------------------------------------------------------------ main

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nights", type=int, default=7, help="nights in the one run (default 7; 2 for a quick run)")
    p.add_argument("--speed", type=float, default=600.0, help="simulated s per wall s (default 600: ~2.5 wall "
                                                             "minutes per 24 h, a dark night in about one)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fault-every", type=float, default=15.0, help="mean wall seconds between faults (default 15)")
    p.add_argument("--start", default="2026-11-24T03:00:00", help="simulated start (late afternoon at Mauna Loa)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per fault and night on stderr")
    args = p.parse_args()
    if args.nights < 1 or args.speed <= 0 or args.fault_every <= 0:
        p.error("--nights >= 1, --speed > 0 and --fault-every > 0 please")

    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    overrides = {"weather.timeline": str(ROOT / "conf" / "weather" / "default.yaml")}
    unit = RunningUnit(tmp, start=args.start, speed=args.speed, nights=args.nights, overrides=overrides)
    import yaml
    cfg = yaml.safe_load(unit.config.read_text())
    mount_settings = (cfg.get("mount") or {}).get("settings") or {}
    park_motion_s = 180.0 / float(mount_settings.get("slew_rate_deg_s", 3.0)) + float(
        mount_settings.get("settle_time_s", 2.0))
    chaos = Chaos(unit, rng, args.speed, args.verbose)
    started = time.time()
    budget = args.nights * 86400.0 / args.speed * 1.6 + 300
    rss_by_night: dict[int, dict] = {}
    night_walls = []
    exit_status, error = None, None
    next_fault = started + rng.uniform(0.5, 1.5) * args.fault_every
    last_nights = 0
    try:
        while unit.proc.poll() is None:
            now = time.time()
            if now - started > budget:
                error = f"the run took longer than {budget:.0f} wall s: stopped"
                break
            st = unit.status()
            nights_done = (st.get("night") or {}).get("nights_done", 0) or 0
            state = st.get("state")
            if nights_done > last_nights:
                night_walls.append(round(now - started, 1))
                last_nights = nights_done
                chaos.note(f"{time.strftime('%H:%M:%S')} night {nights_done} done ({now - started:.0f} wall s)")
            # RSS at the end of every night (night 1 and night N are compared).
            ending = nights_done + 1 if state == "housekeeping" else nights_done
            if 1 <= ending <= args.nights and ending not in rss_by_night:
                rss_by_night[ending] = sample_rss(unit)
            # Quiet down before the last night ends.
            final_stretch = False
            if nights_done >= args.nights:
                final_stretch = True
            elif nights_done == args.nights - 1 and st.get("time") and (st.get("night") or {}).get("dark_end"):
                sim_now = parse_iso(st["time"]) + (now - parse_iso(st["wall_time"])) * args.speed \
                    if st.get("wall_time") else parse_iso(st["time"])
                final_stretch = sim_now >= parse_iso(st["night"]["dark_end"]) - QUIET_WALL_S * args.speed
            chaos.behave_due(now, everything=final_stretch)
            if now >= next_fault and state not in (None, "starting") and not final_stretch:
                actors = [a["name"] for a in st.get("actors", [])]
                if actors:
                    chaos.inject_random(actors)
                next_fault = now + rng.uniform(0.5, 1.5) * args.fault_every
            time.sleep(0.1)
        exit_status = unit.wait(timeout=300) if error is None else None
    except Exception as e:  # noqa: BLE001 - reported in the JSON line
        error = f"{type(e).__name__}: {e}"[:2000]
    finally:
        if error is not None:
            print(error, file=sys.stderr)
            unit.kill()
        if unit.proc.poll() is None:
            unit.kill()
    wall = time.time() - started
    time.sleep(2.0)
    leaked = [(pid, cmdline(pid)[:160]) for pid in own_processes(str(unit.pandir))]
    for pid, _ in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    rss_first, rss_last = rss_by_night.get(1), rss_by_night.get(args.nights) if args.nights > 1 else None

    exposure = unsafe_exposure(unit, args.speed, park_motion_s, chaos.injected)
    frames = check_frames(unit)
    growth = rss_growth(rss_first or {}, rss_last or {}) if rss_first and rss_last else []
    judged = [g for g in growth if "growth_pct" in g]
    worst = max(judged, key=lambda g: g["growth_pct"], default=None)
    restarts = unit.query("SELECT COUNT(*) FROM events WHERE kind='restart' AND message LIKE '% restarted (pid %'")
    failed = unit.query("SELECT message FROM events WHERE kind='error' AND message LIKE '%restart budget spent%'")
    output = unit.output()

    # -- the table --------------------------------------------------------------------------
    print(f"chaos bench: {args.nights} night(s) at x{args.speed:g}, seed {args.seed}, a fault every "
          f"~{args.fault_every:g} wall s; {wall:.0f} wall s; pandir {unit.pandir}"
          + ("" if args.keep else " (removed)"))
    kinds = {}
    for r in chaos.injected:
        key = f"{r['kind']}"
        kinds.setdefault(key, [0, 0])
        kinds[key][0 if r["ok"] else 1] += 1
    print("faults (accepted/refused): " + ", ".join(f"{k} {a}/{b}" for k, (a, b) in sorted(kinds.items())))
    print(f"nights done at wall s: {night_walls}; exit status {exit_status}; restarts {restarts[0][0] if restarts else 0}")
    for m in failed:
        print(f"  restart budget: {m[0]}")
    sup, ker = exposure["supervisor"], exposure["kernel"]
    print(f"unsafe and unparked: allowance per spell {sup['allowance_s']} simulated s (park {park_motion_s:g} s "
          f"+ 1.5 wall s x speed)")
    for view, ex, clock in (("supervisor's verdicts (events)", sup, "sim"), ("kernel's verdicts (log)", ker, "wall")):
        print(f"  {view}: {len(ex['spells'])} spell(s), {ex['exposed_s']} s in all, excess {ex['excess_s']} s "
              f"(+ {ex['excess_mount_fault_s']} s during mount faults; of the excess, {ex['excess_safety_fault_s']} s "
              f"during faults of the safety actor itself), violations {len(ex['violations'])}")
        for sp in ex["spells"]:
            if clock == "sim":
                when = datetime.fromtimestamp(sp["start"], timezone.utc).isoformat()[:19] + " sim"
            else:
                when = datetime.fromtimestamp(sp["start_wall"], timezone.utc).strftime("%H:%M:%S.%f")[:12] + " wall"
            print(f"    {when:24} {sp['first'][:60]:60} {sp['duration_s']:>7} s {sp['wall_s']:>6} wall s"
                  f"{'  EXCESS ' + str(sp['excess_s']) + ' s' if sp['excess_s'] else ''}"
                  f"{'  (mount fault)' if sp['mount_fault'] else ''}"
                  f"{'  (safety actor fault)' if sp['safety_fault'] else ''}")
        for v in ex["violations"][:5]:
            print(f"    VIOLATION: {v['message']!r} while UNSAFE")
        if len(ex["violations"]) > 5:
            print(f"    ... and {len(ex['violations']) - 5} more state changes while UNSAFE")
    late = [d for d in exposure["delivery"] if d["delay_ms"] is None or d["delay_ms"] > 1000]
    print(f"  verdict changes kernel -> supervisor: {len(exposure['delivery'])}, slowest "
          f"{exposure['delivery_ms_max']} ms, over 1 s or never: {len(late)}")
    for d in late:
        print(f"    {datetime.fromtimestamp(d['kernel_wall'], timezone.utc).strftime('%H:%M:%S.%f')[:12]} wall "
              f"{'safe' if d['safe'] else 'UNSAFE: ' + ', '.join(d['reasons'])[:70]}: "
              f"{'never recorded' if d['delay_ms'] is None else str(d['delay_ms']) + ' ms'}")
    print(f"frames: {frames['files']} files, {frames['rows']} rows; rows without file "
          f"{len(frames['rows_without_file'])}, files without row {len(frames['files_without_row'])}, "
          f"unreadable {len(frames['unreadable'])}, .part left {len(frames['part_leftovers'])}, duplicates "
          f"{frames['duplicates']}; exposures lost with a killed camera (by design) {frames['exposures_lost_with_actor']}")
    for item in (frames["rows_without_file"][:5] + frames["files_without_row"][:5] + frames["unreadable"][:5]
                 + frames["part_leftovers"][:5]):
        print(f"  {item}")
    print(f"leaked processes: {len(leaked)}" + "".join(f"\n  {pid} {cmd}" for pid, cmd in leaked))
    if growth:
        print(f"{'process':22} {'RSS night 1':>12} {'RSS night N':>12} {'growth':>8} {'RssAnon':>8}   "
              f"MB at the end of each night")
        for g in growth:
            pct = f"{g['growth_pct']:+.1f}%" if "growth_pct" in g else "-"
            anon = f"{g['anon_growth_pct']:+.1f}%" if "anon_growth_pct" in g else "-"
            trend = " ".join(f"{rss_by_night[k][g['process']]['rss_kb'] / 1024:.0f}" if g["process"] in rss_by_night[k]
                             else "-" for k in sorted(rss_by_night))
            print(f"{g['process'][:22]:22} {g['rss1_kb'] or '-':>10} kB {g['rssN_kb'] or '-':>9} kB {pct:>8} "
                  f"{anon:>8}   {trend}{'' if g['same_pid'] else '  (restarted in between)'}")
    else:
        print("RSS: not compared (needs 2 nights or more, and both samples)")

    lost_or_corrupt = (len(frames["rows_without_file"]) + len(frames["files_without_row"])
                       + len(frames["unreadable"]) + len(frames["part_leftovers"]) + frames["duplicates"])
    result = {
        "nights": args.nights, "nights_done": last_nights, "speed": args.speed, "seed": args.seed,
        "fault_every_s": args.fault_every, "wall_seconds": round(wall, 1), "night_end_wall_s": night_walls,
        "faults_injected": sum(1 for r in chaos.injected if r["ok"] and r["kind"] != "behave"),
        "faults_refused": sum(1 for r in chaos.injected if not r["ok"]),
        "restarts": restarts[0][0] if restarts else 0,
        "unsafe_unparked_s": sup["exposed_s"], "unsafe_spells": len(sup["spells"]),
        "park_allowance_s": sup["allowance_s"],
        "unsafe_unparked_excess_s": sup["excess_s"],
        "unsafe_unparked_excess_mount_fault_s": sup["excess_mount_fault_s"],
        "unsafe_entry_violations": len(sup["violations"]),
        "kernel_unsafe_unparked_s": ker["exposed_s"], "kernel_unsafe_unparked_excess_s": ker["excess_s"],
        "kernel_unsafe_unparked_excess_mount_fault_s": ker["excess_mount_fault_s"],
        "kernel_unsafe_unparked_excess_safety_fault_s": ker["excess_safety_fault_s"],
        "kernel_unsafe_state_changes": len(ker["violations"]),
        "verdict_delivery_ms_max": exposure["delivery_ms_max"],
        "verdict_changes_late_or_lost": len(late),
        "frames_on_disk": frames["files"], "frames_in_db": frames["rows"],
        "frames_lost_or_corrupt": lost_or_corrupt, "exposures_lost_with_actor": frames["exposures_lost_with_actor"],
        "leaked_processes": len(leaked),
        "rss_max_growth_pct": worst["growth_pct"] if worst else None,
        "rss_worst_process": worst["process"] if worst else None,
        "rss_processes_compared": len(judged),
        "rss_processes_same_pid": sum(1 for g in judged if g["same_pid"]),
        "rss_max_anon_growth_pct": max((g["anon_growth_pct"] for g in judged if "anon_growth_pct" in g), default=None),
        "exit_status": exit_status,
    }
    result["ok_unsafe"] = (sup["excess_s"] == 0 and ker["excess_s"] == 0 and not sup["violations"])
    result["ok_frames"] = lost_or_corrupt == 0
    result["ok_leaks"] = not leaked
    result["ok_rss"] = (worst is None and args.nights == 1) or (worst is not None and
                                                                 all(g["growth_pct"] < RSS_TARGET_PCT for g in judged))
    result["ok"] = (error is None and exit_status == 0 and last_nights >= args.nights and result["ok_unsafe"]
                    and result["ok_frames"] and result["ok_leaks"] and result["ok_rss"])
    if error:
        result["error"] = error
    if "unit failed" in output:
        result["unit_failed"] = next(line for line in output.splitlines() if "unit failed" in line)[:300]
    if args.keep:
        (tmp / "chaos.json").write_text(json.dumps({"injected": chaos.injected, "exposure": exposure,
                                                    "frames": frames, "rss": growth}, indent=1, default=str))
        result["kept"] = str(tmp)
    else:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

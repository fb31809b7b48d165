#!/usr/bin/env python3
"""One scheduler decision, timed against the POCS way and against vectorised astroplan.

    python bench/scheduler.py [--fields 10 100 1000 10000] [--repeat 50] [--reference-sample 1000]

Ours: ``Scheduler.decide`` for N random fields at Mauna Loa, as in a running
unit: the night's ephemeris is already cached and decisions are made at
successive times, with the default vetoes (sun, altitude now and at the end of
the set, moon, night end) and the default meridian penalty.

Reference, the POCS way: astroplan ``FixedTarget`` per field and one call per
field per constraint (AltitudeConstraint(min=30 deg), MoonSeparationConstraint
(min=15 deg), AtNightConstraint.twilight_astronomical(), over the set's start
and end), then a merit like ours (priority * sin(altitude)); the Observer and
constraints are built once. For N above ``--reference-sample`` the reference
is timed on that many fields and scaled linearly (it is a per-field loop).

Also shown: astroplan's fastest form (``is_always_observable`` with all fields
in one SkyCoord array), which POCS does not use.

Times are medians of individual calls. Human lines, then as the LAST line one
JSON object for the 1000-field case: {"fields", "decision_ms", "reference_ms",
"speedup", "same_choice", "target_speedup", "target_decision_ms", "runs": [...]}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from observatory.astro import MAUNA_LOA, Ephemeris  # noqa: E402  (configures astropy offline first)
from observatory.clock import parse_iso  # noqa: E402
from observatory.scheduler import Observation, Scheduler  # noqa: E402

import astropy.units as u  # noqa: E402
from astropy.coordinates import EarthLocation, NonRotationTransformationWarning, SkyCoord  # noqa: E402
from astropy.time import Time  # noqa: E402
from astroplan import (AltitudeConstraint, AtNightConstraint, MoonSeparationConstraint,  # noqa: E402
                       Observer, is_always_observable)

START = parse_iso("2026-11-24T08:00")  # dark at Mauna Loa, full moon up
TARGET_SPEEDUP = 50


def fields(n: int, seed: int = 1) -> list[Observation]:
    rng = np.random.default_rng(seed)
    return [Observation(f"f{i}", float(rng.uniform(0, 360)), float(np.degrees(np.arcsin(rng.uniform(-0.7, 1)))),
                        priority=float(rng.uniform(50, 200))) for i in range(n)]


def time_ours(eph: Ephemeris, obs: list[Observation], repeat: int) -> tuple[float, str | None]:
    sched = Scheduler(obs, eph)
    sched.decide(START - 60)  # warm: the night's ephemeris is cached in a running unit
    laps = []
    for i in range(repeat):
        t0 = time.perf_counter()
        sched.decide(START + 60.0 * i, current=obs[0].name, exposures_done={obs[1].name: 10})
        laps.append(time.perf_counter() - t0)
    return float(np.median(laps)) * 1e3, float(np.mean(laps)) * 1e3


def time_astroplan(obs: list[Observation], repeat: int) -> tuple[float, str | None]:
    location = EarthLocation.from_geodetic(lon=MAUNA_LOA.longitude_deg * u.deg, lat=MAUNA_LOA.latitude_deg * u.deg,
                                           height=MAUNA_LOA.elevation_m * u.m)
    observer = Observer(location=location)
    targets = SkyCoord([o.ra_deg for o in obs] * u.deg, [o.dec_deg for o in obs] * u.deg)
    priority = np.array([o.priority for o in obs])
    set_s = obs[0].set_duration + 120.0
    constraints = [AltitudeConstraint(min=30 * u.deg), MoonSeparationConstraint(min=15 * u.deg),
                   AtNightConstraint.twilight_astronomical()]

    def once(t: float):
        times = Time([t, t + set_s], format="unix", scale="utc")
        ok = is_always_observable(constraints, observer, targets, times=times)
        alt = observer.altaz(times[0], targets).alt.deg
        merit = np.where(ok, priority * np.sin(np.radians(alt)), 0.0)
        return obs[int(np.argmax(merit))].name if ok.any() else None

    once(START - 3600)  # warm (astropy tables, astroplan imports)
    laps = []
    for i in range(repeat):
        t0 = time.perf_counter()
        once(START + 60.0 * i + 7.0)
        laps.append(time.perf_counter() - t0)
    return float(np.median(laps)) * 1e3, float(np.mean(laps)) * 1e3, once


def time_pocs_way(obs: list[Observation], sample: int) -> tuple[float, str | None, bool]:
    """One decision the POCS way; returns (ms for all of ``obs``, winner, scaled?)."""
    from astroplan import FixedTarget
    location = EarthLocation.from_geodetic(lon=MAUNA_LOA.longitude_deg * u.deg, lat=MAUNA_LOA.latitude_deg * u.deg,
                                           height=MAUNA_LOA.elevation_m * u.m)
    observer = Observer(location=location)
    constraints = [AltitudeConstraint(min=30 * u.deg), MoonSeparationConstraint(min=15 * u.deg),
                   AtNightConstraint.twilight_astronomical()]
    set_s = obs[0].set_duration + 120.0
    timed = obs[:sample]
    times = Time([START, START + set_s], format="unix", scale="utc")
    constraints[0](observer, SkyCoord(0 * u.deg, 0 * u.deg), times=times)   # warm astropy's caches
    t0 = time.perf_counter()
    best, best_merit = None, -1.0
    for o in timed:
        target = FixedTarget(SkyCoord(o.ra_deg * u.deg, o.dec_deg * u.deg), name=o.name)
        if all(np.all(c(observer, target, times=times)) for c in constraints):
            alt = observer.altaz(times[0], target).alt.deg
            merit = o.priority * np.sin(np.radians(alt))
            if merit > best_merit:
                best, best_merit = o.name, merit
    elapsed = (time.perf_counter() - t0) * 1e3
    scaled = len(timed) < len(obs)
    return elapsed * len(obs) / len(timed), (None if scaled else best), scaled


def same_winner(eph: Ephemeris, obs: list[Observation], astroplan_once) -> tuple[str | None, str | None]:
    """Both winners at one time, ours without hysteresis or meridian penalty (astroplan has neither)."""
    ours = Scheduler(obs, eph, meridian_policy="ignore").decide(START).winner
    return ours, astroplan_once(START)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fields", type=int, nargs="+", default=[10, 100, 1000, 10000])
    p.add_argument("--repeat", type=int, default=50, help="decisions timed for ours")
    p.add_argument("--astroplan-repeat", type=int, default=5, help="vectorised astroplan computations timed")
    p.add_argument("--reference-sample", type=int, default=1000,
                   help="largest field count the POCS-way reference is run on in full")
    args = p.parse_args()
    warnings.simplefilter("ignore", NonRotationTransformationWarning)

    eph = Ephemeris(MAUNA_LOA)
    runs = []
    for n in args.fields:
        obs = fields(n)
        ours_ms, ours_mean = time_ours(eph, obs, args.repeat)
        astro_ms, astro_mean, astroplan_once = time_astroplan(obs, args.astroplan_repeat)
        ref_ms, ref_winner, scaled = time_pocs_way(obs, args.reference_sample)
        # Like for like: the reference knows neither meridian flips nor block fit.
        ours_winner = Scheduler(obs, eph, meridian_policy="ignore", block_fit=False).decide(START).winner
        same = None if scaled else ours_winner == ref_winner
        run = {"fields": n, "decision_ms": round(ours_ms, 3), "reference_ms": round(ref_ms, 1),
               "speedup": round(ref_ms / ours_ms, 1), "same_choice": same, "reference_scaled": scaled,
               "astroplan_vectorised_ms": round(astro_ms, 2),
               "speedup_vs_vectorised": round(astro_ms / ours_ms, 1),
               "same_choice_vectorised": ours_winner == astroplan_once(START), "decision_mean_ms": round(ours_mean, 3)}
        runs.append(run)
        print(f"{n:5d} fields: ours {ours_ms:8.3f} ms | POCS way {ref_ms:10.1f} ms{' (scaled)' if scaled else ''}"
              f" -> {run['speedup']:8.1f}x, same choice {same} | astroplan vectorised {astro_ms:7.1f} ms"
              f" -> {run['speedup_vs_vectorised']:6.1f}x, same choice {run['same_choice_vectorised']}", flush=True)
    key = next((r for r in runs if r["fields"] == 1000), runs[-1])
    print(json.dumps({**{k: key[k] for k in ("fields", "decision_ms", "reference_ms", "speedup", "same_choice")},
                      "target_speedup": TARGET_SPEEDUP, "target_decision_ms": 20, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A preview of a night: the sequence of observations the scheduler would make,
found by running it forward through the dark time, as a table and a plot.

    python -m observatory.preview [--config conf/unit.yaml] [--date 2026-11-23] [--png night.png] [--json]

``--date`` is the local date of the evening (as in reports/<night>); default:
the coming (or current) night. The forward simulation assumes clear weather and
no faults: each block is one exposure set (exptime + readout per exposure),
plus a slew and pointing allowance when the field changes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from observatory.astro import Ephemeris, Site, altaz
from observatory.clock import iso, parse_iso
from observatory.scheduler import Scheduler


@dataclass(frozen=True)
class Block:
    field: str
    start_unix: float
    end_unix: float
    exposures: int
    altitude_start_deg: float
    altitude_end_deg: float
    reason: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["start"], d["end"] = iso(self.start_unix)[:19], iso(self.end_unix)[:19]
        return d


def forward_simulate(scheduler: Scheduler, start_unix: float, end_unix: float, *, readout_s: float = 5.0,
                     change_overhead_s: float = 90.0, retry_s: float = 600.0) -> list[Block]:
    """Run the scheduler through [start, end) as the unit would: one set at a time."""
    site = scheduler.site
    blocks: list[Block] = []
    current, done = None, {}
    t = start_unix
    while t < end_unix:
        decision = scheduler.decide(t, current=current, exposures_done=done)
        if decision.winner is None:
            current, t = None, t + retry_s
            continue
        ob = scheduler.observation(decision.winner)
        begin = t if decision.winner == current else t + change_overhead_s
        end = begin + ob.exp_set_size * (ob.exptime + readout_s)
        if end > end_unix:
            break
        alts, _ = altaz(np.array([ob.ra_deg]), np.array([ob.dec_deg]), np.array([begin, end]), site)
        alts = np.asarray(alts).reshape(-1)
        if blocks and blocks[-1].field == ob.name and abs(blocks[-1].end_unix - begin) < 1:
            last = blocks.pop()
            blocks.append(Block(ob.name, last.start_unix, end, last.exposures + ob.exp_set_size,
                                last.altitude_start_deg, float(alts[-1]), last.reason))
        else:
            blocks.append(Block(ob.name, begin, end, ob.exp_set_size, float(alts[0]), float(alts[-1]),
                                decision.reason))
        done[ob.name] = done.get(ob.name, 0) + ob.exp_set_size
        current, t = ob.name, end
    return blocks


def table(blocks: list[Block]) -> str:
    lines = [f"{'start (UTC)':19}  {'end':8}  {'field':22} {'frames':>6}  {'alt start':>9} {'alt end':>7}"]
    for b in blocks:
        lines.append(f"{iso(b.start_unix)[:19]}  {iso(b.end_unix)[11:19]}  {b.field[:22]:22} {b.exposures:6d}"
                     f"  {b.altitude_start_deg:9.1f} {b.altitude_end_deg:7.1f}")
    return "\n".join(lines)


def plot(blocks: list[Block], scheduler: Scheduler, start_unix: float, end_unix: float, path: str | Path,
         title: str) -> Path:
    """Altitude against time of every field the night observes; thick where observed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = np.linspace(start_unix, end_unix, 200)
    hours = (times - start_unix) / 3600.0
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    names = list(dict.fromkeys(b.field for b in blocks))
    colors = plt.cm.tab10(np.linspace(0, 1, max(len(names), 1)))
    for name, color in zip(names, colors):
        ob = scheduler.observation(name)
        alt, _ = altaz(np.array([ob.ra_deg]), np.array([ob.dec_deg]), times, scheduler.site)
        ax.plot(hours, np.asarray(alt).reshape(-1), color=color, lw=0.8, alpha=0.6)
        for b in (b for b in blocks if b.field == name):
            span = np.linspace(b.start_unix, b.end_unix, 30)
            a, _ = altaz(np.array([ob.ra_deg]), np.array([ob.dec_deg]), span, scheduler.site)
            ax.plot((span - start_unix) / 3600.0, np.asarray(a).reshape(-1), color=color, lw=4,
                    label=name if b is next(x for x in blocks if x.field == name) else None)
    ax.axhline(scheduler.min_altitude_deg, color="grey", ls="--", lw=0.8)
    ax.set_ylim(0, 90)
    ax.set_xlim(0, hours[-1])
    ax.set_xlabel(f"hours after {iso(start_unix)[:16]} UTC (start of dark time)")
    ax.set_ylabel("altitude [deg]")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def night_bounds(ephemeris: Ephemeris, date: str | None, horizon: float) -> tuple[float, float]:
    """Dark interval of the night whose evening falls on local date ``date``."""
    if date is None:
        return ephemeris.dark_interval(time.time(), horizon)
    # Local noon of that date, then the next dark interval.
    noon = parse_iso(f"{date}T12:00:00") - ephemeris.site.longitude_deg / 15.0 * 3600.0
    return ephemeris.dark_interval(noon, horizon)


def main(argv=None) -> int:
    from observatory.config import ConfigError, load_config, scheduler_kwargs
    from observatory.scheduler import FieldsError, load_fields

    p = argparse.ArgumentParser(description="Preview the scheduler's plan for a night.")
    p.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "conf" / "unit.yaml"))
    p.add_argument("--date", help="local date of the evening, YYYY-MM-DD (default: tonight)")
    p.add_argument("--png", help="write the altitude plot to this file")
    p.add_argument("--json", action="store_true", help="print the blocks as JSON instead of a table")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        observations = load_fields(cfg["scheduler"]["fields_file"])
    except (ConfigError, FieldsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    loc = cfg["location"]
    ephemeris = Ephemeris(Site(loc["name"], loc["latitude"], loc["longitude"], loc["elevation"]))
    scheduler = Scheduler(observations, ephemeris, **scheduler_kwargs(cfg["scheduler"], loc))
    try:
        start, end = night_bounds(ephemeris, args.date, loc["observe_horizon"])
    except ValueError as e:
        print(f"error: --date: {e}", file=sys.stderr)
        return 2
    readout = max(float(c["settings"].get("readout_time", 5.0)) for c in cfg["cameras"])
    blocks = forward_simulate(scheduler, start, end, readout_s=readout)
    if args.json:
        print(json.dumps([b.to_dict() for b in blocks], indent=1))
    else:
        night = ephemeris.night_date(start)
        print(f"{cfg['name']} at {loc['name']}, night of {night}: dark {iso(start)[:16]} - {iso(end)[11:16]} UTC")
        print(table(blocks), flush=True)
    if args.png:
        out = plot(blocks, scheduler, start, end, args.png,
                   f"{cfg['name']}: night of {ephemeris.night_date(start)}")
        print(f"plot: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

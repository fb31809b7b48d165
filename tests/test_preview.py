"""The preview of a night: a forward run of the real scheduler."""
import json
import subprocess
import sys

import numpy as np
import pytest

from observatory.astro import Ephemeris, Site, altaz
from observatory.config import load_config, scheduler_kwargs
from observatory.preview import forward_simulate, night_bounds, plot
from observatory.scheduler import Scheduler, load_fields
from tests.unit_runner import ROOT


@pytest.fixture(scope="module")
def night():
    cfg = load_config(ROOT / "conf" / "unit.yaml")
    loc = cfg["location"]
    eph = Ephemeris(Site(loc["name"], loc["latitude"], loc["longitude"], loc["elevation"]))
    sched = Scheduler(load_fields(cfg["scheduler"]["fields_file"]), eph, **scheduler_kwargs(cfg["scheduler"], loc))
    start, end = night_bounds(eph, "2026-11-23", loc["observe_horizon"])
    return sched, start, end, forward_simulate(sched, start, end)


def test_the_plan_fills_the_night_with_observable_blocks(night):
    sched, start, end, blocks = night
    assert len(blocks) >= 4
    assert blocks[0].start_unix - start < 600
    for a, b in zip(blocks, blocks[1:]):
        assert a.end_unix <= b.start_unix, "blocks overlap"
    for b in blocks:
        assert start <= b.start_unix < b.end_unix <= end
        ob = sched.observation(b.field)
        alt, _ = altaz(np.array([ob.ra_deg]), np.array([ob.dec_deg]),
                       np.linspace(b.start_unix, b.end_unix, 20), sched.site)
        assert np.all(np.asarray(alt) >= sched.min_altitude_deg - 0.1), b
        assert b.exposures % ob.exp_set_size == 0
    observed = sum(b.end_unix - b.start_unix for b in blocks)
    assert observed > 0.85 * (end - start)


def test_plot_is_a_png(night, tmp_path):
    sched, start, end, blocks = night
    out = plot(blocks, sched, start, end, tmp_path / "night.png", "test")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_command_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "observatory.preview", "--date", "2026-11-23", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    blocks = json.loads(run.stdout)
    assert blocks and {"field", "start", "end", "exposures"} <= set(blocks[0])
    bad = subprocess.run([sys.executable, "-m", "observatory.preview", "--config", str(tmp_path / "none.yaml")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "none.yaml" in bad.stderr

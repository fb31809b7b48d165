"""The nightly report (observatory/report.py), from a real store written with
observatory.archive the way the unit writes it."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from messages import RecordExposure, RecordObservation
from observatory.archive import Archive
from observatory.clock import iso, parse_iso
from observatory.report import CATEGORIES, main, make_report, report_data

NIGHT = "2026-11-23"                       # local evening at Mauna Loa (UTC-10:22)
T0 = parse_iso("2026-11-24T06:00:00")      # the window: 06:00-12:00 UTC, all of it dark
END = T0 + 6 * 3600.0
SITE = {"name": "Mauna Loa", "latitude": 19.54, "longitude": -155.58, "elevation": 3400.0,
        "observe_horizon": -18.0, "min_altitude": 30.0}
FIELDS = {"A": (10.0, 20.0), "B": (60.0, 30.0), "C": (30.0, 0.0)}


class Night:
    """Writes rows through Archive as the supervisor and the archive actor do."""

    def __init__(self, pandir):
        self.pandir = pandir
        self.archive = Archive(pandir / "db" / "unit.sqlite")
        self.state = "starting"
        self.n = 0

    def event(self, kind, t, message, **data):
        self.archive.record_event(kind, "unit", message, T0 + t, 1.0e9 + t, data)

    def go(self, t, state, note=""):
        line = f"{self.state} -> {state}" + (f" ({note})" if note else "")
        self.event("state", t, line, state=state, previous=self.state, target=None)
        self.state = state

    def safety(self, t, safe, reasons=()):
        text = "safe" if safe else "UNSAFE: " + ", ".join(reasons)
        self.event("safety", t, text, safe=safe, reasons=list(reasons), sun_alt=-40.0)

    def observation(self, oid, field, t):
        ra, dec = FIELDS[field]
        self.archive.record_observation(RecordObservation(
            observation_id=oid, night=NIGHT, field_name=field, ra_deg=ra, dec_deg=dec, priority=100.0,
            exptime=120.0, min_nexp=60, exp_set_size=10, decision_id=f"d-{oid}", start_unix=T0 + t))

    def exposure(self, oid, t, exptime=120.0, readout=5.0, image_type="science", cameras=("cam00", "cam01"),
                 stagger=0.0):
        for i, cam in enumerate(cameras):
            t += stagger * (i > 0)
            self.n += 1
            self.archive.record_exposure(RecordExposure(
                exposure_id=f"e{self.n}", observation_id=oid, camera=cam, image_type=image_type,
                path=str(self.pandir / "images" / "x" / cam / f"e{self.n}.fits"), start_unix=T0 + t,
                end_unix=T0 + t + exptime + readout, exptime=exptime, ra_deg=0.0, dec_deg=0.0,
                set_index=0, frame_index=self.n))


def realistic_night(pandir) -> Night:
    n = Night(pandir)
    # Before the window: the unit started and was waiting, safe.
    n.event("unit", -120, "unit starting at simulated 2026-11-24T05:58:00.000, speed 60.0")
    n.safety(-100, True)
    n.go(-60, "ready", "night approaching")
    # Field A: two science rounds on two cameras.
    n.go(600, "scheduling", "dark and safe")
    n.observation("obs1", "A", 602)
    n.go(602, "slewing")
    n.go(662, "pointing")
    n.exposure("obs1", 665, exptime=30.0, image_type="pointing", cameras=("cam00",))
    n.go(722, "tracking", "pointing frame: 500 stars")
    n.go(724, "observing")
    n.exposure("obs1", 724, stagger=2.0)             # cam01 opens 2 s after cam00
    n.go(850, "analyzing")
    n.go(851, "tracking")
    n.go(852, "observing")
    n.exposure("obs1", 852)
    n.go(978, "analyzing")
    n.go(979, "scheduling")
    n.archive.close_observation("obs1", T0 + 979, "switched", 2)
    # Field B: clouds arrive during the first exposure, which is aborted.
    n.observation("obs2", "B", 981)
    n.go(981, "slewing")
    n.go(1041, "pointing")
    n.go(1100, "tracking")
    n.go(1101, "observing")
    n.safety(1150, False, ["cloudy (sky-ambient -10.0 C > -25.0 C)"])
    n.go(1150.5, "parking", "unsafe: cloudy (sky-ambient -10.0 C > -25.0 C)")
    n.archive.close_observation("obs2", T0 + 1150.5, "interrupted", 0)
    n.go(1210.5, "parked")
    n.event("error", 1999, "cam01 actor died (pid 4242)", child="cam01", pid=4242)
    n.event("restart", 2000, "cam01 restarted (pid 4343, incarnation 2)", child="cam01")
    n.safety(3000, True)
    n.go(3300, "ready", "safe again")
    # A slew fails: parked for a fault; a dark frame is taken meanwhile.
    n.go(3301, "scheduling", "dark and safe")
    n.go(3303, "slewing")
    n.go(3363, "parking", "mount failed")
    n.go(3423, "parked")
    n.exposure(None, 3500, exptime=30.0, readout=5.0, image_type="dark", cameras=("cam00",))
    n.go(4000, "ready", "safe again")
    # Field C: a focus frame during pointing, one round on cam00 only.
    n.go(4010, "scheduling", "dark and safe")
    n.observation("obs3", "C", 4012)
    n.go(4012, "slewing")
    n.go(4060, "pointing")
    n.exposure("obs3", 4070, exptime=5.0, readout=5.0, image_type="focus", cameras=("cam00",))
    n.go(4100, "tracking")
    n.go(4101, "observing")
    n.exposure("obs3", 4101, cameras=("cam00",))
    n.go(4227, "analyzing")
    n.go(4228, "scheduling")
    n.go(4230, "parking", "no target: nothing observable")
    n.archive.close_observation("obs3", T0 + 4230, "interrupted", 1)
    n.go(4290, "parked")
    # The service dies (last sign of life at 9000) and comes back at 11000.
    n.event("error", 9000, "the unit stalled for 2.0 wall s (120 simulated s)")
    n.state = "starting"
    n.event("unit", 11000, "unit starting at simulated 2026-11-24T09:03:20.000, speed 60.0")
    n.go(11001, "sleeping")
    n.go(11002, "ready", "night approaching")
    n.go(11003, "scheduling", "dark and safe")
    n.go(11004, "parking", "no target: nothing observable")
    n.go(11064, "parked")
    return n


# Worked out by hand from the sequence above (seconds).
EXPECTED = {
    "science": 360.0,          # cam00 (the busiest camera): 724-844, 852-972, 4101-4221
    "slewing": 239.0,          # scheduling + slewing: 2+60, 2+60, 2+60, 2+48, 2, 1
    "pointing": 149.0,         # 60 + 59 + (40 - 10 of focus)
    "readout": 75.5,           # 2+6+1+1+6+1, 1+49.5 (aborted exposure), 1+6+1
    "focus": 10.0,             # 4070-4080
    "calibration": 35.0,       # the dark frame 3500-3535, inside the fault
    "faults": 602.0,           # parking 3363-3423 + parked 3423-4000, less the dark frame
    "weather": 1849.5,         # parking 1150.5-1210.5 + parked until safe at 3000
    "idle": 16280.0,           # ready, the hold after the clouds, no target, the restart
    "daytime": 0.0,
    "down": 2000.0,            # last event 9000 -> unit starting 11000
}


def test_expected_adds_up():
    assert set(EXPECTED) == set(CATEGORIES)
    assert sum(EXPECTED.values()) == pytest.approx(END - T0)


@pytest.fixture
def night(tmp_path):
    n = realistic_night(tmp_path)
    yield n
    n.archive.close()


def test_breakdown_of_a_realistic_night(night, tmp_path):
    data = report_data(tmp_path / "db" / "unit.sqlite", NIGHT, site=SITE, start_unix=T0, end_unix=END)
    assert data["has_data"]
    assert data["window"]["source"] == "arguments"
    for cat, seconds in EXPECTED.items():
        assert data["breakdown_s"][cat] == pytest.approx(seconds, abs=1e-6), cat
    assert sum(data["breakdown_s"].values()) == pytest.approx(END - T0)
    assert data["dark_s"] == pytest.approx(END - T0)
    assert data["breakdown_dark_s"] == pytest.approx(data["breakdown_s"])
    assert data["open_shutter_s"] == pytest.approx(360.0)
    assert data["open_shutter_camera"] == "cam00"
    assert data["open_shutter_fraction"] == pytest.approx(360.0 / 21600.0, abs=1e-4)
    # Per camera, as summary.json counts it.
    cams = data["exposures"]["by_camera"]
    assert cams["cam00"]["science_exptime_s"] == pytest.approx(360.0)
    assert cams["cam01"]["science_exptime_s"] == pytest.approx(240.0)
    assert data["exposures"]["by_type"]["science"]["count"] == 5
    assert data["exposures"]["total"] == 8
    # Observations: field, times, the unit's count and the frames on disk.
    obs = {o["id"]: o for o in data["observations"]}
    assert [o["field"] for o in data["observations"]] == ["A", "B", "C"]
    assert (obs["obs1"]["exposures"], obs["obs1"]["frames"], obs["obs1"]["status"]) == (2, 4, "switched")
    assert (obs["obs2"]["frames"], obs["obs2"]["status"]) == (0, "interrupted")
    assert obs["obs3"]["frames"] == 1
    assert obs["obs1"]["end_unix"] == pytest.approx(T0 + 979)
    # Restarts (an actor, then the unit) and errors.
    assert [r["kind"] for r in data["restarts"]] == ["restart", "unit"]
    assert len(data["errors"]) == 2
    assert data["event_counts"]["safety"] == 2
    assert [(p["time_unix"] - T0, p["fault"]) for p in data["parkings"]] == \
        [(1150.5, False), (3363.0, True), (4230.0, False), (11004.0, False)]
    # The state timeline covers the window without gaps.
    states = data["states"]
    assert states[0]["start_unix"] == T0 and states[-1]["end_unix"] == END
    assert all(a["end_unix"] == b["start_unix"] for a, b in zip(states, states[1:]))
    assert states[0]["state"] == "ready"
    down = [s for s in states if s["state"] == "down"]
    assert [(s["start_unix"] - T0, s["end_unix"] - T0) for s in down] == [(9000.0, 11000.0)]
    faulted = [s for s in states if s["cause"] == "mount failed"]
    assert [s["state"] for s in faulted] == ["parking", "parked"]


def test_report_files(night, tmp_path):
    path = make_report(tmp_path, NIGHT, site=SITE, start_unix=T0, end_unix=END)
    assert path == tmp_path / "reports" / NIGHT / "report.html"
    text = path.read_text()
    for png in ("timeline.png", "altitude.png", "breakdown.png"):
        f = path.parent / png
        assert f.stat().st_size > 5000, png
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{png}"' in text
    for field in ("<td>A</td>", "<td>B</td>", "<td>C</td>"):
        assert field in text
    assert "cam01 restarted" in text and "mount failed" in text
    assert "the unit stalled" in text
    assert "<td>weather</td>" not in text        # categories carry a colour swatch
    assert "0:30:50" in text                     # weather, 1849.5 s
    _check_self_contained(text)


def test_window_from_summary_json(night, tmp_path):
    # As the archive actor writes it at housekeeping.
    summary = night.archive.night_summary(NIGHT, T0, END, {"dark_seconds": 21600.0, "safe_seconds": 19000.0})
    path = tmp_path / "reports" / NIGHT / "summary.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(summary))
    data = report_data(tmp_path / "db" / "unit.sqlite", NIGHT, site=SITE)
    assert data["window"]["source"] == "summary.json"
    assert data["window"]["start_unix"] == pytest.approx(T0, abs=0.001)
    assert data["open_shutter_s"] == summary["open_shutter_seconds"] == 360.0
    for cat, seconds in EXPECTED.items():
        assert data["breakdown_s"][cat] == pytest.approx(seconds, abs=0.01), cat


def test_default_window_is_local_noon_to_noon(night, tmp_path):
    data = report_data(tmp_path / "db" / "unit.sqlite", NIGHT, site=SITE)
    w = data["window"]
    assert w["source"] == "local noon to noon"
    # Local mean noon at longitude -155.58 is 22:22:19 UTC.
    assert iso(w["start_unix"]) == "2026-11-23T22:22:19.200"
    assert w["end_unix"] - w["start_unix"] == 86400.0
    b = data["breakdown_s"]
    assert sum(b.values()) == pytest.approx(86400.0)
    # Nothing known before the unit's first start: down until then.
    assert b["down"] == pytest.approx((T0 - 120 - w["start_unix"]) + 2000.0)
    # Dusk and dawn bound the dark time; after dawn the parked unit's time is daytime.
    from observatory.astro import Ephemeris, Site
    dusk, dawn = Ephemeris(Site("x", 19.54, -155.58, 3400.0)).dark_interval(T0)
    assert data["dark_s"] == pytest.approx(dawn - dusk, abs=0.01)
    assert b["daytime"] == pytest.approx(w["end_unix"] - dawn, abs=0.01)
    assert b["idle"] == pytest.approx(120.0 + EXPECTED["idle"] + dawn - END, abs=0.01)   # + start-up, ready
    bd = data["breakdown_dark_s"]
    assert bd["daytime"] == 0.0
    assert bd["down"] == pytest.approx(T0 - 120 - dusk + 2000.0, abs=0.01)
    assert sum(bd.values()) == pytest.approx(data["dark_s"], abs=0.01)
    for cat in ("science", "slewing", "pointing", "readout", "focus", "calibration", "faults", "weather"):
        assert b[cat] == pytest.approx(EXPECTED[cat], abs=1e-6), cat


def test_daytime_before_dusk(tmp_path):
    from observatory.astro import Ephemeris, Site
    n = Night(tmp_path)
    n.event("unit", -4 * 3600.0, "unit starting")
    n.safety(-4 * 3600.0 + 1, False, ["sun up (altitude 30.0 > -18.0 deg)"])
    n.go(-4 * 3600.0 + 2, "sleeping")
    n.go(-2 * 3600.0, "ready", "night approaching")
    n.safety(-1 * 3600.0, True)
    n.archive.close()
    start, end = T0 - 3 * 3600.0, T0
    data = report_data(tmp_path / "db" / "unit.sqlite", NIGHT, site=SITE, start_unix=start, end_unix=end)
    dusk, _ = Ephemeris(Site("x", 19.54, -155.58, 3400.0)).dark_interval(T0)
    assert parse_iso("2026-11-24T04:45:00") < dusk < parse_iso("2026-11-24T05:15:00")
    b = data["breakdown_s"]
    assert b["daytime"] == pytest.approx(dusk - start, abs=0.01)
    # Still unsafe after dusk (the verdict turned safe only at T0 - 1 h): weather, not daytime.
    assert b["weather"] == pytest.approx(T0 - 3600.0 - dusk, abs=0.01)
    assert b["idle"] == pytest.approx(3600.0, abs=0.01)


def test_empty_night(tmp_path):
    # No database at all.
    path = make_report(tmp_path, "2026-11-25", site=SITE)
    text = path.read_text()
    assert "No data recorded" in text
    assert not (path.parent / "timeline.png").exists()
    _check_self_contained(text)
    # A database with tables but nothing for that night.
    Archive(tmp_path / "db" / "unit.sqlite").close()
    data = report_data(tmp_path / "db" / "unit.sqlite", "2026-11-25", site=SITE)
    assert not data["has_data"]
    assert data["observations"] == [] and sum(data["breakdown_s"].values()) == 0.0
    assert "No data recorded" in make_report(tmp_path, "2026-11-25", site=SITE).read_text()


def test_night_absent_from_a_busy_database(night, tmp_path):
    data = report_data(tmp_path / "db" / "unit.sqlite", "2026-12-25", site=SITE)
    assert not data["has_data"]


def test_cli(night, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    code = main(["--pandir", str(tmp_path), "--night", NIGHT, "--site-lat", "19.54", "--site-lon", "-155.58",
                 "--start", iso(T0), "--end", iso(END), "--out-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(out / "report.html")
    assert (out / "timeline.png").is_file()
    assert main(["--pandir", str(tmp_path), "--night", "23/11/2026"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err


def _without_generated(text: str) -> str:
    return re.sub(r"Generated [0-9: -]+ UTC", "Generated ... UTC", text)


def test_cli_as_the_archive_actor_runs_it(night, tmp_path, capsys):
    """--site-json, --start-unix/--end-unix and --json: the same files as make_report
    called with that site and window, and the result as one JSON line."""
    expected = make_report(tmp_path, NIGHT, tmp_path / "direct", site=SITE, start_unix=T0, end_unix=END)
    code = main(["--pandir", str(tmp_path), "--night", NIGHT, "--site-json", json.dumps(SITE),
                 "--start-unix", repr(T0), "--end-unix", repr(END), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    path = tmp_path / "reports" / NIGHT / "report.html"
    assert result == {"path": str(path), "error": None}
    assert _without_generated(path.read_text()) == _without_generated(expected.read_text())
    assert sorted(p.name for p in path.parent.iterdir()) == ["altitude.png", "breakdown.png", "report.html",
                                                            "timeline.png"]


def test_cli_json_errors(night, tmp_path, capsys, monkeypatch):
    bad_site = dict(SITE, latitude=100.0)
    code = main(["--pandir", str(tmp_path), "--night", NIGHT, "--site-json", json.dumps(bad_site), "--json"])
    assert code == 2
    assert json.loads(capsys.readouterr().out) == {
        "path": None, "error": "ReportError: site latitude 100.0 is not within -90..90 degrees"}
    assert main(["--pandir", str(tmp_path), "--night", NIGHT, "--start-unix", repr(T0), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "ReportError: --start-unix and --end-unix go together"
    # Anything else is caught too, as "Type: message" (the archive actor records it so).
    import observatory.report as report

    def broken(*args, **kwargs):
        raise RuntimeError("plotting exploded")
    monkeypatch.setattr(report, "make_report", broken)
    assert main(["--pandir", str(tmp_path), "--night", NIGHT, "--site-json", json.dumps(SITE), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"path": None, "error": "RuntimeError: plotting exploded"}
    assert "Traceback" in captured.err
    # Without --json an unexpected error is not swallowed.
    with pytest.raises(RuntimeError):
        main(["--pandir", str(tmp_path), "--night", NIGHT, "--site-json", json.dumps(SITE)])


def test_cli_stops_at_once_without_its_parent(night, tmp_path):
    """--parent-pid: a report whose parent is already gone writes nothing."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "observatory.report", "--pandir", str(tmp_path), "--night", NIGHT,
                           "--site-json", json.dumps(SITE), "--json", "--parent-pid", str(2 ** 22 + 1)],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 3, proc.stderr
    assert "is gone" in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "reports").exists()


def test_a_failed_write_leaves_no_temporary(night, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def half_written(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError("No space left on device")
    monkeypatch.setattr(Figure, "savefig", half_written)
    with pytest.raises(OSError):
        make_report(tmp_path, NIGHT, site=SITE, start_unix=T0, end_unix=END)
    out = tmp_path / "reports" / NIGHT
    assert list(out.iterdir()) == []


def test_remove_temporaries(tmp_path):
    from observatory.report import remove_temporaries
    left = [tmp_path / ".report.html.4242.tmp", tmp_path / ".timeline.png.4242.tmp"]
    others = [tmp_path / ".report.html.4243.tmp", tmp_path / "report.html"]
    for p in left + others:
        p.write_text("x")
    assert sorted(remove_temporaries(tmp_path, 4242)) == sorted(left)
    assert sorted(tmp_path.iterdir()) == sorted(others)


class _Checker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.refs = [], [], []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href"):
                self.refs.append(value)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(tag)
        else:
            self.stack.pop()


def _check_self_contained(text):
    assert text.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(text)
    assert checker.errors == [] and checker.stack == []
    assert all("/" not in ref and ":" not in ref for ref in checker.refs), checker.refs
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text

"""Fields file loading and scheduler decisions."""
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from observatory.astro import MAUNA_LOA, Ephemeris, Site, altaz, lst_deg
from observatory.clock import parse_iso
from observatory.scheduler import (VETOES, Candidate, Decision, FieldsError, Observation, Scheduler,
                                   load_fields, parse_fields)

DEFAULT_FIELDS = Path(__file__).resolve().parents[1] / "conf" / "fields.yaml"
# Mauna Loa, dark since 04:59; the full moon (near the Pleiades) is 45 deg from the zenith.
NIGHT = parse_iso("2026-11-24T06:30")


@pytest.fixture(scope="module")
def eph():
    return Ephemeris(MAUNA_LOA)


def write(tmp_path, text, name="fields.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------
# Fields file
# --------------------------------------------------------------------------

GOOD = """
- field: {name: "M42", position: "05h35m17.3s -05d23m28s", equinox: J2000}
  observation: {priority: 75, exptime: 30, min_nexp: 10, exp_set_size: 5,
                filter_name: g, tags: [nebula], constraints: [{name: altitude}], type: x.y.Z}
- field: {name: "Degrees", position: "83.82 -5.39"}
- field: {name: "Colons", position: "05:35:17.3 -05:23:28"}
  observation: {priority: 150}
- field: {name: "List", position: [83.82, -5.39]}
  observation: {exptime: "2 min", tags: survey}
  extra_key_from_a_newer_pocs: 1
"""


def test_load_good_file(tmp_path):
    obs = load_fields(write(tmp_path, GOOD))
    assert [o.name for o in obs] == ["M42", "Degrees", "Colons", "List"]
    m42 = obs[0]
    assert (m42.ra_deg, m42.dec_deg) == pytest.approx((83.8221, -5.3911), abs=1e-3)
    assert (m42.priority, m42.exptime, m42.min_nexp, m42.exp_set_size) == (75, 30, 10, 5)
    assert m42.tags == ("nebula",) and m42.filter_name == "g"
    assert m42.set_duration == 150
    for o in (obs[1], obs[3]):
        assert (o.ra_deg, o.dec_deg) == (83.82, -5.39)
    assert (obs[2].ra_deg, obs[2].dec_deg) == pytest.approx((m42.ra_deg, m42.dec_deg), abs=1e-9)
    assert obs[1] == Observation("Degrees", obs[1].ra_deg, obs[1].dec_deg)  # all defaults
    assert obs[1].set_duration == 1200
    assert obs[2].priority == 150
    assert obs[3].exptime == 120 and obs[3].tags == ("survey",)


def test_fk5_equinox_is_precessed_to_icrs(tmp_path):
    obs = load_fields(write(tmp_path, '- field: {name: X, position: "83.82 -5.39", equinox: J2026}\n'))
    assert abs(obs[0].ra_deg - 83.82) > 0.2  # 26 years of precession, about 0.35 deg in RA


ENTRY = '- field: {{name: "{name}", position: "{position}"}}\n  observation: {{{obs}}}\n'


def entry(name="WASP-33", position="02h26m51.06s +37d33m01.7s", obs="priority: 100"):
    return ENTRY.format(name=name, position=position, obs=obs)


BAD = [
    ("", "the file is empty"),
    ("field: {name: X}\n", "expected a list of fields, got a mapping"),
    ("[]\n", "the list of fields is empty"),
    ("- [1, 2]\n", "entry 1: expected a mapping with 'field' and 'observation', got a list"),
    ("- observation: {priority: 1}\n", "entry 1: missing 'field'"),
    ("- field: {position: '10 20'}\n", "entry 1: field has no name"),
    ("- field: {name: X}\n", "entry 1 (X): field has no position"),
    (entry(position="nowhere"), "entry 1 (WASP-33): cannot parse position 'nowhere'"),
    (entry(position="10 95"), "entry 1 (WASP-33): cannot parse position '10 95'"),
    (entry() + entry(), "entry 2 (WASP-33): name duplicates entry 1"),
    (entry() + entry(name="Wasp 33"), "entry 2 (Wasp 33): name duplicates entry 1 (WASP-33) once case"),
    (entry(obs="priority: 0"), "entry 1 (WASP-33): priority must be > 0, got 0"),
    (entry(obs="priority: high"), "entry 1 (WASP-33): priority must be a number, got 'high'"),
    (entry(obs="exptime: -1"), "entry 1 (WASP-33): exptime must be > 0 seconds, got -1"),
    (entry(obs="min_nexp: 2.5, exp_set_size: 1"), "entry 1 (WASP-33): min_nexp must be an integer >= 1, got 2.5"),
    (entry(obs="exp_set_size: 0"), "entry 1 (WASP-33): exp_set_size must be an integer >= 1, got 0"),
    (entry(obs="tags: {a: 1}"), "entry 1 (WASP-33): tags must be a list of words"),
    ("- field: {name: X, position: '10 20'}\n  observation: [1]\n",
     "entry 1 (X): 'observation' must be a mapping, got a list"),
    ("- field: {name: X, position: [10, 20\n", "not valid YAML"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m for _, m in BAD])
def test_bad_fields_files_name_file_entry_and_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(FieldsError) as info:
        load_fields(path)
    assert f"{path}: {message}" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_exp_set_size_must_divide_min_nexp_message(tmp_path):
    text = entry("HD 189733") + entry("HD 209458") + entry(obs="min_nexp: 60, exp_set_size: 7")
    path = write(tmp_path, text)
    with pytest.raises(FieldsError) as info:
        load_fields(path)
    assert str(info.value) == f"{path}: entry 3 (WASP-33): exp_set_size 7 does not divide min_nexp 60"
    assert info.value.problems == ["entry 3 (WASP-33): exp_set_size 7 does not divide min_nexp 60"]


def test_every_problem_is_reported(tmp_path):
    text = entry("A", obs="priority: -1") + entry("B") + entry("C", position="bad", obs="exptime: 0")
    with pytest.raises(FieldsError) as info:
        load_fields(write(tmp_path, text))
    problems = info.value.problems
    assert len(problems) == 3
    assert problems[0].startswith("entry 1 (A): priority")
    assert problems[1].startswith("entry 3 (C): cannot parse position")
    assert problems[2].startswith("entry 3 (C): exptime")


def test_parse_fields_from_data():
    obs = parse_fields([{"field": {"name": 1234, "position": "10 20"}}], source="settings")
    assert obs == [Observation("1234", 10.0, 20.0)]
    with pytest.raises(FieldsError, match=r"^settings: entry 1 \(X\): priority must be > 0, got -1$"):
        parse_fields([{"field": {"name": "X", "position": "10 20"}, "observation": {"priority": -1}}], "settings")


def test_missing_file(tmp_path):
    with pytest.raises(FieldsError, match="missing.yaml: cannot read"):
        load_fields(tmp_path / "missing.yaml")


def test_observation_validates_itself():
    assert Observation("x", 1, 2, exptime=30, exp_set_size=5, min_nexp=10).set_duration == 150
    with pytest.raises(ValueError, match="exp_set_size 7 does not divide min_nexp 60"):
        Observation("x", 1, 2, exp_set_size=7)
    with pytest.raises(ValueError, match="priority must be > 0"):
        Observation("x", 1, 2, priority=0)


def test_default_fields_file_loads():
    obs = load_fields(DEFAULT_FIELDS)
    assert 30 <= len(obs) <= 45
    names = {o.name for o in obs}
    for expected in ("WASP-33", "HD 189733", "HD 209458", "HAT-P-7", "KELT-9", "WASP-12", "TrES-3",
                     "M45", "Hyades", "M44", "M42", "Double Cluster"):
        assert expected in names
    by_name = {o.name: o for o in obs}
    assert (by_name["HD 189733"].ra_deg, by_name["HD 189733"].dec_deg) == pytest.approx((300.182, 22.711), abs=0.01)
    ras = np.array([o.ra_deg for o in obs])
    assert np.histogram(ras, bins=8, range=(0, 360))[0].min() >= 1  # spread around the sky
    assert {o.priority for o in obs} > {50.0, 200.0}
    assert len({(o.exptime, o.min_nexp, o.exp_set_size) for o in obs}) >= 3


# --------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------

def transiting(name, dec=MAUNA_LOA.latitude_deg, hour_angle_deg=0.0, at=NIGHT, **kw):
    """A field at the given hour angle (degrees) at time ``at``, J2000 near enough."""
    # J2000 -> date precession is ~0.37 deg in RA here; tests keep margins larger.
    ra = (lst_deg(at, MAUNA_LOA.longitude_deg) - hour_angle_deg - 0.37) % 360
    return Observation(name, ra, dec, **kw)


def test_merit_is_priority_times_sin_altitude(eph):
    obs = [transiting("zenith", priority=100), transiting("lower", dec=-10.0, priority=100)]
    d = Scheduler(obs, eph).decide(NIGHT)
    assert d.winner == "zenith"
    for c in d.candidates:
        assert c.vetoes == ()
        assert c.merit == pytest.approx(100 * math.sin(math.radians(c.altitude_deg)))
    assert d.candidate("zenith").altitude_deg > 89
    assert d.reason.startswith("zenith best of 2 candidates")


def test_field_below_the_horizon_is_vetoed(eph):
    obs = [transiting("up"), transiting("south", dec=-60.0), transiting("east", hour_angle_deg=-80.0)]
    d = Scheduler(obs, eph).decide(NIGHT)
    assert d.winner == "up"
    assert d.candidate("south").vetoes == ("below_horizon",)
    assert d.candidate("east").vetoes == ("below_horizon",)
    assert d.candidate("south").merit == 0.0


def test_field_setting_during_its_set_is_vetoed(eph):
    # West of the meridian, 30.5 deg high now: below 30 before one set (1200 s + overhead) ends.
    hour_angles = np.linspace(0, 90, 9001)
    alt, _ = altaz((lst_deg(NIGHT, MAUNA_LOA.longitude_deg) - hour_angles - 0.37) % 360, 0.0, NIGHT, MAUNA_LOA)
    ha = hour_angles[np.argmin(np.abs(alt - 30.5))]
    obs = [transiting("up"), transiting("setting", dec=0.0, hour_angle_deg=ha)]
    d = Scheduler(obs, eph).decide(NIGHT)
    setting = d.candidate("setting")
    assert setting.altitude_deg == pytest.approx(30.5, abs=0.05)
    assert setting.vetoes == ("below_horizon",)
    # A short set fits before it sinks.
    short = transiting("setting", dec=0.0, hour_angle_deg=ha, exptime=10, min_nexp=10, exp_set_size=2)
    d = Scheduler([short], eph, set_overhead_s=0).decide(NIGHT)
    assert d.winner == "setting"


def test_field_near_the_moon_is_vetoed(eph):
    moon_ra, moon_dec = eph.moon_radec(NIGHT)
    obs = [transiting("up"), Observation("moonlit", moon_ra + 3.0, moon_dec, priority=1000)]
    d = Scheduler(obs, eph, min_altitude_deg=0.0).decide(NIGHT)
    assert "moon" in d.candidate("moonlit").vetoes
    assert d.winner == "up"
    d = Scheduler(obs, eph, min_altitude_deg=0.0, moon_separation_deg=2.0).decide(NIGHT)
    assert d.winner == "moonlit"


def test_done_field_is_vetoed(eph):
    obs = [transiting("a", priority=200), transiting("b", dec=0.0)]
    sched = Scheduler(obs, eph)
    assert sched.decide(NIGHT, exposures_done={"a": 50}).winner == "a"
    d = sched.decide(NIGHT, current="a", exposures_done={"a": 60, "unknown": 3})
    assert d.candidate("a").vetoes == ("done",)
    assert d.winner == "b"
    assert d.reason == f"b best of 1 candidate (merit {d.candidate('b').merit:.1f}); leaving a (done)"


def test_hysteresis_keeps_the_current_field(eph):
    obs = [transiting("current", priority=100), transiting("rival", priority=105)]
    sched = Scheduler(obs, eph, hysteresis=0.1)
    assert sched.decide(NIGHT).winner == "rival"
    d = sched.decide(NIGHT, current="current")
    assert d.winner == "current"
    assert d.reason.startswith("keeping current (merit ")
    assert "within 10% of rival" in d.reason
    # A clearly better field wins despite the hysteresis.
    sched.set_observations([transiting("current", priority=100), transiting("rival", priority=150)])
    d = sched.decide(NIGHT, current="current")
    assert d.winner == "rival"
    assert "current merit" in d.reason and "over 10% lower" in d.reason
    # The current field when it is also the best.
    assert sched.decide(NIGHT, current="rival").reason.startswith("keeping rival, best of 2 candidates")


def test_no_observable_field(eph):
    obs = [transiting("south", dec=-70.0), transiting("east", hour_angle_deg=-90.0), transiting("up")]
    d = Scheduler(obs, eph).decide(NIGHT, exposures_done={"up": 60})
    assert d.winner is None
    assert d.reason == "no observable field: 3 vetoed (below_horizon 2, done 1)"
    assert len(d.candidates) == 3


def test_sun_up_vetoes_everything(eph):
    noon = parse_iso("2026-11-24T22:00")  # 11:38 local
    d = Scheduler([transiting("up", at=noon)], eph).decide(noon)
    assert d.winner is None
    assert d.candidates[0].vetoes == ("sun_up",)
    assert d.reason.startswith("no observable field: 1 vetoed (sun_up 1); sun at ")
    assert "dark from 2026-11-25T04:59" in d.reason


def test_no_astronomical_night_at_high_latitude_in_summer():
    midsummer_midnight = parse_iso("2026-06-21T00:00")
    eph = Ephemeris(Site("Orkney", 59.0, 0.0, 10.0))
    d = Scheduler([Observation("Polaris", 37.95, 89.26)], eph).decide(midsummer_midnight)
    assert d.winner is None
    assert d.reason.startswith("no observable field: 1 vetoed (sun_up 1); sun at -7.")
    assert d.reason.endswith("no dark time ahead")


def test_night_ends_veto(eph):
    _, dawn = eph.dark_interval(NIGHT)
    at = dawn - 600
    obs = [transiting("long", at=at), transiting("short", at=at, exptime=30, min_nexp=10, exp_set_size=5)]
    d = Scheduler(obs, eph).decide(at)
    assert d.candidate("long").vetoes == ("night_ends",)
    assert d.winner == "short"  # 150 s + 120 s overhead fits in the last 10 minutes


def test_decision_to_dict_is_json_and_round_trips(eph):
    d = Scheduler([transiting("a"), transiting("b", dec=-70.0)], eph).decide(NIGHT, current="gone")
    assert "gone is no longer in the fields list" in d.reason
    data = json.loads(json.dumps(d.to_dict()))
    assert data["winner"] == "a" and data["time"].startswith("2026-11-24T06:30:00")
    assert data["candidates"][1] == {"name": "b", "merit": 0.0, "altitude_deg": pytest.approx(d.candidates[1].altitude_deg),
                                     "vetoes": ["below_horizon"], "notes": []}
    assert Decision.from_dict(data) == d
    assert isinstance(d.candidates[0], Candidate)


def test_empty_scheduler(eph):
    d = Scheduler([], eph).decide(NIGHT)
    assert d.winner is None and d.candidates == ()


def test_fifty_fields_decide_fast(eph):
    rng = np.random.default_rng(5)
    obs = [Observation(f"f{i}", float(rng.uniform(0, 360)), float(np.degrees(np.arcsin(rng.uniform(-0.7, 1)))),
                       priority=float(rng.uniform(50, 200))) for i in range(50)]
    sched = Scheduler(obs, eph)
    sched.decide(NIGHT)  # ephemeris warm
    n = 50
    t0 = time.perf_counter()
    for i in range(n):
        d = sched.decide(NIGHT + 60 * i, current="f3", exposures_done={"f1": 60})
    assert (time.perf_counter() - t0) / n < 0.020
    assert len(d.candidates) == 50


def test_default_fields_cover_the_whole_night_at_mauna_loa(eph):
    """Night of 2026-11-24 UTC (full moon): two fields or more always observable."""
    obs = load_fields(DEFAULT_FIELDS)
    sched = Scheduler(obs, eph)
    dusk, dawn = eph.dark_interval(parse_iso("2026-11-24T05:00"))
    assert parse_iso("2026-11-24T05:00") <= dusk + 120 and dawn <= parse_iso("2026-11-24T15:30")
    longest_set = max(o.set_duration for o in obs) + sched.set_overhead_s
    winners = set()
    for t in np.arange(dusk + 1, dawn, 300.0):
        d = sched.decide(float(t))
        above = [c.name for c in d.candidates if not {"below_horizon", "moon"} & set(c.vetoes)]
        assert len(above) >= 2, f"only {above} observable at {t}"
        if t + longest_set < dawn:
            assert sum(not c.vetoes for c in d.candidates) >= 2, d.reason
        winners.add(d.winner)
    assert len(winners) >= 3  # the choice follows the sky
    vetoes_seen = {v for c in d.candidates for v in c.vetoes}
    assert vetoes_seen <= set(VETOES)


# --------------------------------------------------------------------------
# Horizon line (obstructions), time windows, meridian
# --------------------------------------------------------------------------

def test_obstruction_blocks_a_field_plain_altitude_allows(eph):
    # 45 deg high in the east: fine for min_altitude 30, behind a 60-deg wall from az 60 to 120.
    east = transiting("east", dec=0.0, hour_angle_deg=-45.0, priority=1000)
    up = transiting("up", dec=0.0)
    plain = Scheduler([east, up], eph, meridian_policy="ignore").decide(NIGHT)
    assert plain.winner == "east" and plain.candidate("east").vetoes == ()
    az_east = altaz(east.ra_deg, east.dec_deg, NIGHT, MAUNA_LOA)[1]
    assert 60 < az_east < 120
    wall = [(50, 0), (60, 60), (120, 60), (130, 0)]
    sched = Scheduler([east, up], eph, horizon=wall, meridian_policy="ignore")
    d = sched.decide(NIGHT, current="east")
    c = d.candidate("east")
    assert c.vetoes == ("below_horizon",) and c.merit == 0.0
    assert c.notes and c.notes[0].startswith("behind the obstruction")
    assert d.winner == "up"
    assert "leaving east (below_horizon: behind the obstruction" in d.reason
    assert d.candidate("up").vetoes == ()  # the wall is only in the east
    assert sched.horizon_deg([90.0, 0.0, 55.0])[0] == 60.0
    assert sched.horizon_deg([90.0, 0.0, 55.0])[1:].tolist() == [30.0, 30.0]  # max(min_alt, 30)


def test_horizon_interpolates_and_wraps_at_360(eph):
    sched = Scheduler([], eph, horizon=[(350, 50), (10, 70), (180, 0)])
    assert sched.horizon_deg(0.0) == pytest.approx(60.0)   # halfway from 350 to 370
    assert sched.horizon_deg(355.0) == pytest.approx(55.0)
    assert sched.horizon_deg(95.0) == pytest.approx(35.0)  # 70 -> 0 between 10 and 180
    assert sched.horizon_deg(170.0) == pytest.approx(30.0)  # the plain minimum binds
    with pytest.raises(ValueError, match="horizon"):
        Scheduler([], eph, horizon=[(10, 20, 30)])


def test_obstruction_is_checked_at_the_end_of_the_set_and_counted(eph):
    # Rising in the east at 40 deg: clear now, but the set ends behind a wall further south.
    field = transiting("rising", dec=0.0, hour_angle_deg=-50.0)
    alt0, az0 = altaz(field.ra_deg, field.dec_deg, NIGHT, MAUNA_LOA)
    alt1, az1 = altaz(field.ra_deg, field.dec_deg, NIGHT + 1320, MAUNA_LOA)
    assert az1 > az0 and alt1 > alt0
    wall = [(0, 0), (az0 + 0.3, 0), (az0 + 0.5, 89), (az1 + 5, 89), (az1 + 6, 0)]
    d = Scheduler([field], eph, horizon=wall).decide(NIGHT)
    assert d.candidates[0].vetoes == ("below_horizon",)
    assert "by the end of the set" in d.candidates[0].notes[-1]
    assert d.reason == "no observable field: 1 vetoed (below_horizon 1 (1 behind the obstruction))"


WINDOWED = entry("W", obs="priority: 100, constraints: {time_windows: [[2026-11-24T06:00, 2026-11-24T07:00], "
                       "['2026-11-25T06:00:00Z', '2026-11-25T07:00:00']]}")


def test_time_windows_are_read_from_the_fields_file(tmp_path):
    (obs,) = load_fields(write(tmp_path, WINDOWED))
    assert obs.time_windows == ((parse_iso("2026-11-24T06:00"), parse_iso("2026-11-24T07:00")),
                                (parse_iso("2026-11-25T06:00"), parse_iso("2026-11-25T07:00")))


@pytest.mark.parametrize("windows, message", [
    ("[[2026-11-24T07:00, 2026-11-24T06:00]]", "time window 1: start 2026-11-24T07:00:00 is not before end"),
    ("[[2026-11-24T06:00]]", "time window 1 must be a [start, end] pair"),
    ("[[2026-11-24T06:00, 2026-11-24T07:00], [tonight, 2026-11-24T07:00]]",
     "time window 2: cannot read 'tonight' as an ISO time"),
    ("2026-11-24T06:00", "time_windows must be a non-empty list"),
    ("[]", "time_windows must be a non-empty list"),
])
def test_malformed_time_window_is_a_fields_error_naming_the_entry(tmp_path, windows, message):
    text = entry("A") + entry("B", obs="constraints: {time_windows: " + windows + "}")
    path = write(tmp_path, text)
    with pytest.raises(FieldsError) as info:
        load_fields(path)
    assert f"{path}: entry 2 (B): {message}" in str(info.value)


def test_constraints_list_from_pocs_is_still_accepted(tmp_path):
    (obs,) = load_fields(write(tmp_path, entry(obs="constraints: [{name: altitude}]")))
    assert obs.time_windows == ()


def test_field_outside_its_time_windows_is_vetoed(eph):
    set_time = 1200 + 120
    open_now = transiting("open", time_windows=[(NIGHT - 600, NIGHT + set_time + 1)])
    too_short = transiting("short", time_windows=[(NIGHT - 600, NIGHT + set_time - 60)])
    later = transiting("later", time_windows=[(NIGHT + 3600, NIGHT + 7200), (NIGHT - 7200, NIGHT - 3600)])
    free = transiting("free", priority=50)
    d = Scheduler([open_now, too_short, later, free], eph, meridian_policy="ignore").decide(NIGHT)
    assert d.candidate("open").vetoes == ()
    assert d.candidate("short").vetoes == ("time_window",)  # the set would run past the window's end
    assert d.candidate("later").vetoes == ("time_window",)
    assert d.candidate("free").vetoes == ()
    assert d.winner == "open"
    d = Scheduler([later], eph).decide(NIGHT)
    assert d.reason == "no observable field: 1 vetoed (time_window 1)"
    with pytest.raises(ValueError, match="start < end"):
        Observation("x", 1, 2, time_windows=[(10, 5)])


def test_meridian_crossing_is_penalised_by_default(eph):
    # 2 deg east of the meridian: crosses in about 8 min, inside a 22-min set.
    east = transiting("east", hour_angle_deg=-2.0)
    west = transiting("west", hour_angle_deg=+2.0)
    d = Scheduler([east, west], eph).decide(NIGHT)
    ce, cw = d.candidate("east"), d.candidate("west")
    assert ce.vetoes == () and cw.vetoes == () and cw.notes == ()
    assert len(ce.notes) == 1
    minutes = 2.0 / (360 / 86164.0905) / 60
    assert ce.notes[0] == f"crosses meridian in {minutes:.0f} min: flip needed"
    assert ce.merit == pytest.approx(0.5 * 100 * math.sin(math.radians(ce.altitude_deg)))
    assert cw.merit == pytest.approx(100 * math.sin(math.radians(cw.altitude_deg)))
    assert d.winner == "west"
    assert d.to_dict()["candidates"][1]["notes"] == [ce.notes[0]]
    # The penalty factor is a parameter; the penalised field can still win.
    d = Scheduler([east, west], eph, meridian_penalty=1.0).decide(NIGHT)
    assert d.candidate("east").merit == pytest.approx(100 * math.sin(math.radians(ce.altitude_deg)))


def test_meridian_crossing_veto_and_ignore_policies(eph):
    east = transiting("east", hour_angle_deg=-2.0, priority=200)
    far_east = transiting("far_east", hour_angle_deg=-10.0, priority=200)  # 40 min away: set ends first
    west = transiting("west", hour_angle_deg=+2.0)
    d = Scheduler([east, far_east, west], eph, meridian_policy="veto").decide(NIGHT, current="east")
    assert d.candidate("east").vetoes == ("meridian",) and d.candidate("east").merit == 0.0
    assert d.candidate("far_east").vetoes == () and d.candidate("far_east").notes == ()
    assert d.winner == "far_east"
    assert "leaving east (meridian)" in d.reason
    d = Scheduler([east, west], eph, meridian_policy="ignore").decide(NIGHT)
    assert d.candidate("east").vetoes == () and d.candidate("east").notes == ()
    assert d.candidate("east").merit == pytest.approx(200 * math.sin(math.radians(d.candidate("east").altitude_deg)))
    assert d.winner == "east"
    # A short set that ends before the meridian does not cross it.
    quick = transiting("quick", hour_angle_deg=-2.0, exptime=10, min_nexp=10, exp_set_size=2)
    d = Scheduler([quick], eph, meridian_policy="veto", set_overhead_s=0).decide(NIGHT)
    assert d.winner == "quick" and d.candidates[0].notes == ()
    with pytest.raises(ValueError, match="meridian_policy"):
        Scheduler([], eph, meridian_policy="flip")


def test_candidate_from_old_dict_has_no_notes():
    c = Candidate.from_dict({"name": "a", "merit": 1.0, "altitude_deg": 40.0, "vetoes": []})
    assert c.notes == () and c.to_dict()["notes"] == []


def test_decision_altitudes_match_astro_altaz(eph):
    rng = np.random.default_rng(11)
    obs = [Observation(f"f{i}", float(rng.uniform(0, 360)), float(rng.uniform(-60, 80))) for i in range(40)]
    d = Scheduler(obs, eph).decide(NIGHT)
    alt, _ = altaz([o.ra_deg for o in obs], [o.dec_deg for o in obs], NIGHT, MAUNA_LOA)
    by_name = {c.name: c.altitude_deg for c in d.candidates}
    assert [by_name[o.name] for o in obs] == pytest.approx(alt.tolist(), abs=1e-9)


def test_block_fit_prefers_a_field_whose_whole_block_fits():
    """Two equal fields, one setting within the hour: the one that stays up wins,
    and the setting one says how much of its block would fit."""
    from observatory.astro import MAUNA_LOA, Ephemeris, lst_deg
    from observatory.clock import parse_iso
    eph = Ephemeris(MAUNA_LOA)
    t = parse_iso("2026-11-24T10:00:00")
    lst = float(lst_deg(t, MAUNA_LOA.longitude_deg))
    # West of the meridian, about 45 degrees high and sinking; east, rising.
    setting = Observation("setting", (lst - 45.0) % 360.0, 10.0, priority=100.0, min_nexp=60, exp_set_size=10)
    rising = Observation("rising", (lst + 40.0) % 360.0, 10.0, priority=100.0, min_nexp=60, exp_set_size=10)
    with_fit = Scheduler([setting, rising], eph, meridian_policy="ignore").decide(t)
    without = Scheduler([setting, rising], eph, meridian_policy="ignore", block_fit=False).decide(t)
    assert with_fit.winner == "rising"
    s = with_fit.candidate("setting")
    assert not s.vetoes and any("of the remaining block fits" in n for n in s.notes)
    assert s.merit < without.candidate("setting").merit
    # Rounds already done shrink the block: a nearly finished field fits again.
    nearly_done = Scheduler([setting, rising], eph, meridian_policy="ignore").decide(
        t, exposures_done={"setting": 50})
    assert nearly_done.candidate("setting").merit > s.merit

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

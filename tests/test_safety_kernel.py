"""The safety kernel: its rules and holds with a manual clock; the kernel in a
real actor system parking a real simulated mount (and closing a dome) by
itself, sending again what was not confirmed; and a running unit whose
safety_audit table tells an unsafe spell, with observing resumed only after
the configured clear-after."""
from __future__ import annotations

import json
import sqlite3
import stat
import time
from pathlib import Path

import pytest
import yaml
from thespian.actors import Actor

from actors.accessories import DomeActor
from actors.archive import ArchiveActor
from actors.mount import MountActor
from actors.safety import SafetyActor
from actors.weather import WeatherActor
from drivers.ups import BatteryClock, NutUPS, SimulatedUPS, make_ups, parse_upsc
from messages import (CloseDome, DeviceMoved, GetStatus, Initialized, MountArrived, MountMoving, OpenDome, Park,
                      RecordSafetyAudit, SafetyVerdict, SlewTo)
from observatory.archive import Archive
from observatory.astro import lst_deg
from observatory.clock import SimClock, iso
from observatory.safety_rules import SafetyInputs, SafetyKernel, SafetyLimits
from simulators.weather import TimelineError, WeatherTimeline
from tests import test_actors
from tests.test_actors import NIGHT, SAFETY_SETTINGS, SITE, make_init, start_actor, wait_reply

# The actor-system fixtures of tests/test_actors.py (a system per test on a free port,
# every process checked gone afterwards).
asys = test_actors.asys
warm_astropy = test_actors.warm_astropy

T0 = 1_800_000_000.0
DARK = -40.0


def reading(t, **kw):
    r = {"timestamp": t, "sky_minus_ambient_c": -35.0, "wind_kph": 10.0, "gust_kph": 15.0, "rain": False}
    r.update(kw)
    return r


def inputs(now, r="fresh", **kw):
    return SafetyInputs(now=now, reading=reading(now) if r == "fresh" else r, sun_alt_deg=kw.pop("sun", DARK),
                        **kw)


# --------------------------------------------------------------------------
# Rules and hysteresis, with a manual clock
# --------------------------------------------------------------------------

def test_rain_is_unsafe_at_once_and_clears_only_after_600_s_of_dry_readings():
    k = SafetyKernel(SafetyLimits())
    assert k.assess(inputs(T0)).safe
    a = k.assess(SafetyInputs(now=T0 + 30, reading=reading(T0 + 30, rain=True), sun_alt_deg=DARK))
    assert not a.safe and a.reasons == ("rain",) and a.changes["added"] == ["rain"] and not a.weather_safe
    t = T0 + 60                       # the first dry reading: the 600 s start now
    verdicts = {}
    while t <= T0 + 60 + 700:
        verdicts[t] = k.assess(inputs(t))
        t += 30
    for t, a in verdicts.items():
        dry = t - (T0 + 60)
        assert a.safe == (dry >= 600), (dry, a.reasons)
        if dry < 600:
            assert a.reasons == (f"rain: waiting for {600 - dry:.0f} s more of dry readings (600 s needed)",)
            assert a.conditions["rain"]["phase"] == "clearing"
    assert verdicts[T0 + 60].changes["clearing"] == ["rain"]
    assert verdicts[T0 + 660].changes["cleared"] == ["rain"]
    # In between, nothing changed: no audit row for every tick.
    assert not any(any(verdicts[T0 + 60 + 30 * i].changes.values()) for i in range(1, 20))


def test_rain_during_the_clear_after_starts_it_again():
    k = SafetyKernel(SafetyLimits())
    k.assess(inputs(T0, reading(T0, rain=True)))
    k.assess(inputs(T0 + 100))
    a = k.assess(inputs(T0 + 400, reading(T0 + 400, rain=True)))
    assert a.reasons == ("rain",) and a.changes["unsafe_again"] == ["rain"]
    assert not k.assess(inputs(T0 + 900)).safe          # 500 s after the new dry start... still waiting
    assert not k.assess(inputs(T0 + 1399)).safe
    assert k.assess(inputs(T0 + 1500)).safe


def test_a_wind_gust_resets_its_clear_after_timer():
    limits = SafetyLimits(clear_after={**SafetyLimits().clear_after, "gusty": 600.0, "windy": 600.0})
    k = SafetyKernel(limits)
    a = k.assess(inputs(T0, reading(T0, gust_kph=80.0)))
    assert a.reasons == ("gusty (gust 80.0 kph > 70.0 kph)",)
    a = k.assess(inputs(T0 + 30))                               # calm from T0+30
    assert a.reasons == ("gusty: waiting for 600 s more of readings without gusts above the limit (600 s needed)",)
    k.assess(inputs(T0 + 330))
    a = k.assess(inputs(T0 + 400, reading(T0 + 400, gust_kph=75.0)))    # another gust
    assert not a.safe and a.conditions["gusty"]["phase"] == "unsafe"
    k.assess(inputs(T0 + 430))
    assert not k.assess(inputs(T0 + 630)).safe, "the first gust's timer would have cleared here"
    a = k.assess(inputs(T0 + 1000))
    assert not a.safe and a.reasons == ("gusty: waiting for 30 s more of readings without gusts above the limit "
                                        "(600 s needed)",)
    assert k.assess(inputs(T0 + 1030)).safe
    # The mean wind has its own condition and clear-after.
    short = SafetyKernel(SafetyLimits(clear_after={**SafetyLimits().clear_after, "windy": 120.0}))
    short.assess(inputs(T0, reading(T0, wind_kph=60.0, gust_kph=65.0)))
    assert not short.assess(inputs(T0 + 60)).safe
    assert short.assess(inputs(T0 + 180)).safe


def test_clouds_clear_after_their_own_period():
    k = SafetyKernel(SafetyLimits())           # cloud_clear_after default 300
    assert k.assess(inputs(T0, reading(T0, sky_minus_ambient_c=-15.0))).reasons == (
        "cloudy (sky-ambient -15.0 C > -25.0 C)",)
    k.assess(inputs(T0 + 30))
    assert not k.assess(inputs(T0 + 300)).safe
    assert k.assess(inputs(T0 + 330)).safe


def test_a_reading_becomes_stale_after_60_s_and_clears_when_fresh():
    k = SafetyKernel(SafetyLimits())
    r = reading(T0)
    assert k.assess(inputs(T0 + 60, r)).safe                    # equal to the limit: safe
    a = k.assess(inputs(T0 + 61, r))
    assert not a.safe and a.reasons == ("stale (reading 61 s old > 60 s)",) and not a.weather_safe
    assert k.assess(inputs(T0 + 90)).safe                       # fresh again: clears at once (default 0)
    # No reading at all is unsafe too.
    a = SafetyKernel(SafetyLimits()).assess(SafetyInputs(now=T0, reading=None, sun_alt_deg=DARK))
    assert a.reasons == ("no reading",)
    # The caller may judge the age itself (delivery delays at high speed).
    assert k.assess(inputs(T0 + 500, r, reading_age_s=10.0)).safe


def test_the_rain_does_not_clear_by_silence():
    """Dry time is counted in measurement time: a station gone quiet holds the rain (and is stale)."""
    k = SafetyKernel(SafetyLimits())
    k.assess(inputs(T0, reading(T0, rain=True)))
    last = reading(T0 + 30)                       # the last reading: dry
    k.assess(inputs(T0 + 30, last))
    a = k.assess(inputs(T0 + 1000, last))
    assert [c for c in a.conditions] == ["stale", "rain"]
    assert a.conditions["rain"]["phase"] == "clearing" and "600 s more of dry readings" in a.reasons[1]


def test_missing_values_sun_disk_power_and_devices():
    limits = SafetyLimits(min_free_disk_gb=1.0, max_on_battery_s=0.0, device_timeout_s=5.0)
    k = SafetyKernel(limits)
    a = k.assess(inputs(T0, reading(T0, rain=None, wind_kph=None)))
    assert a.reasons == ("missing rain, wind_kph",)
    k = SafetyKernel(limits)
    a = k.assess(inputs(T0, sun=-10.0))
    assert a.reasons == ("sun up (altitude -10.0 > -18.0 deg)",) and a.weather_safe
    a = k.assess(inputs(T0 + 5, free_disk_gb=0.4))
    assert a.reasons == ("disk: 0.40 GB free under PANDIR < 1.00 GB",) and a.weather_safe
    assert k.assess(inputs(T0 + 10, free_disk_gb=1.0)).safe     # at the limit: safe
    assert not k.assess(inputs(T0 + 15, free_disk_gb=None)).safe
    assert k.assess(inputs(T0 + 20, free_disk_gb=50.0)).safe
    a = k.assess(inputs(T0 + 25, power="battery", on_battery_s=0.0))
    assert a.reasons == ("power: on battery for 0 s",)
    assert k.assess(inputs(T0 + 30, power="mains")).safe
    assert k.assess(inputs(T0 + 31, power="unknown", power_error="upsc: not found")).reasons == (
        "power: the UPS does not answer (upsc: not found)",)
    a = k.assess(inputs(T0 + 35, devices={"mount": 7.2, "dome": 0.0}, device_errors={"mount": "link lost"}))
    assert a.reasons == ("mount not answering (no status for 7 s, last error: link lost)",)
    assert a.changes["added"] == ["device:mount"]
    assert k.assess(inputs(T0 + 36, devices={"mount": 0.0, "dome": 0.0})).safe


def test_power_on_battery_is_unsafe_after_max_on_battery_s():
    k = SafetyKernel(SafetyLimits(max_on_battery_s=120.0,
                                  clear_after={**SafetyLimits().clear_after, "power": 60.0}))
    battery = BatteryClock()
    for t in (0, 60, 119):
        assert k.assess(inputs(T0 + t, power="battery", on_battery_s=battery.update("battery", T0 + t))).safe
    a = k.assess(inputs(T0 + 120, power="battery", on_battery_s=battery.update("battery", T0 + 120)))
    assert a.reasons == ("power: on battery for 120 s",)
    a = k.assess(inputs(T0 + 130, power="mains", on_battery_s=battery.update("mains", T0 + 130)))
    assert a.reasons == ("power: waiting for 60 s more of mains power (60 s needed)",)
    assert k.assess(inputs(T0 + 190, power="mains")).safe
    assert battery.update("battery", T0 + 200) == 0.0 and battery.update("battery", T0 + 230) == 30.0


def test_limits_from_the_configuration_section():
    from observatory.config import SafetyConfig
    s = {**SafetyConfig().model_dump(), "rain_clear_after": 120.0, "max_weather_age": 30.0}
    limits = SafetyLimits.from_settings(s, -12.0)
    assert limits.clear_after["rain"] == 120.0 and limits.clear_after["cloudy"] == 300.0
    assert limits.max_weather_age_s == 30.0 and limits.horizon_deg == -12.0
    assert SafetyConfig().max_weather_age == 60.0 and SafetyConfig().rain_clear_after == 600.0


def test_a_restored_kernel_remembers_the_rain():
    k = SafetyKernel(SafetyLimits())
    k.assess(inputs(T0, reading(T0, rain=True)))
    k.assess(inputs(T0 + 30))
    k.assess(inputs(T0 + 60, devices={"mount": 9.0}))
    saved = json.loads(json.dumps(k.to_dict()))
    again = SafetyKernel(SafetyLimits())
    again.restore(saved)
    assert set(again.held) == {"rain"}                 # device health is measured afresh
    assert not again.assess(inputs(T0 + 300)).safe
    assert again.assess(inputs(T0 + 630)).safe


# --------------------------------------------------------------------------
# Power: the timeline's power keys, the simulated UPS, NUT's upsc
# --------------------------------------------------------------------------

def test_timeline_power_keys_and_the_simulated_ups(tmp_path):
    path = tmp_path / "weather.yaml"
    path.write_text(yaml.safe_dump({"timeline": [{"after": 60, "conditions": "clear", "power": "battery"},
                                                 {"after": 120, "conditions": "offline", "power": "battery"},
                                                 {"after": 180, "conditions": "clear"}]}))
    tl = WeatherTimeline.load(path, T0)
    assert [tl.power_at(T0 + s) for s in (0, 59, 60, 150, 180)] == ["mains", "mains", "battery", "battery",
                                                                     "mains"]
    with pytest.raises(TimelineError, match="entry 1: power must be mains or battery"):
        WeatherTimeline.from_list([{"after": 1, "conditions": "clear", "power": "generator"}], T0)
    clock = SimClock.starting_now(T0 + 90, 1.0)
    ups = make_ups({"ups_driver": "simulator", "ups_timeline": str(path), "timeline_start_unix": T0}, clock)
    assert isinstance(ups, SimulatedUPS) and ups.read()["power"] == "battery"
    path.write_text("timeline: []\n")                 # an operator restores the mains
    import os
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    assert ups.read()["power"] == "mains"
    assert make_ups({"ups_driver": "simulator"}, clock).read()["power"] == "mains"
    assert make_ups({"ups_driver": "none"}, clock) is None


UPSC_ON_BATTERY = """battery.charge: 87
battery.runtime: 1520
device.model: Smart-UPS 750
ups.status: OB DISCHRG
"""


def test_nut_upsc_output_and_failures(tmp_path):
    assert parse_upsc(UPSC_ON_BATTERY)["power"] == "battery"
    assert parse_upsc(UPSC_ON_BATTERY)["charge_pct"] == 87.0
    assert parse_upsc("ups.status: OL CHRG\n")["power"] == "mains"
    assert parse_upsc("ups.status: FSD\n")["power"] == "unknown"
    fake = tmp_path / "upsc"
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = \"myups@localhost\" ] || {{ echo 'Error: Unknown UPS' >&2; exit 1; }}\n"
                    f"cat <<'EOF'\n{UPSC_ON_BATTERY}EOF\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert NutUPS("myups@localhost", str(fake)).read()["power"] == "battery"
    bad = NutUPS("other@localhost", str(fake)).read()
    assert bad["power"] == "unknown" and "Unknown UPS" in bad["error"]
    assert NutUPS("x", str(tmp_path / "missing")).read()["power"] == "unknown"
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nexec sleep 5\n")
    slow.chmod(slow.stat().st_mode | stat.S_IEXEC)
    t = time.time()
    assert "no answer" in NutUPS("x", str(slow), timeout_s=0.3).read()["error"] and time.time() - t < 3


def test_archive_keeps_one_row_per_audit_record(tmp_path):
    archive = Archive(tmp_path / "unit.sqlite")
    rec = RecordSafetyAudit(audit_id="a1", kind="verdict", time_unix=T0, wall_unix=time.time(), safe=False,
                            reasons=("rain",), inputs={"sun_alt_deg": -40.0}, changed={"added": ["rain"]})
    archive.record_safety_audit(rec)
    archive.record_safety_audit(rec)                    # re-sent after an archive restart
    rows = archive.db.execute("SELECT time, kind, safe, reasons, inputs, changed, device FROM safety_audit").fetchall()
    assert rows == [(iso(T0), "verdict", 0, '["rain"]', '{"sun_alt_deg": -40.0}', '{"added": ["rain"]}', None)]
    archive.close()


# --------------------------------------------------------------------------
# The kernel in a real actor system
# --------------------------------------------------------------------------

class DropFirstPark(Actor):
    """Stands between the kernel and the real mount actor: swallows the first Park
    (a lost message, a mount that ignored it) and relays everything else both ways."""

    def receiveMessage(self, msg, sender):
        if isinstance(msg, dict) and "mount" in msg:
            self.mount, self.clients, self.dropped = msg["mount"], {}, 0
            self.send(sender, "ready")
        elif not hasattr(self, "mount"):
            return
        elif sender == self.mount:
            client = self.clients.get(getattr(msg, "request_id", None))
            if client is not None:
                self.send(client, msg)
        elif isinstance(msg, Park) and self.dropped == 0:
            self.dropped += 1
        elif hasattr(msg, "request_id"):
            self.clients[msg.request_id] = sender
            self.send(self.mount, msg)


def audit_rows(db_path: Path, sql: str = "SELECT kind, device, action, safe, message FROM safety_audit ORDER BY "
                                           "wall_unix", args=()):
    if not db_path.exists():
        return []
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def wait_until(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def kernel_settings(**kw):
    return {**SAFETY_SETTINGS, "ups_driver": "none", "device_timeout": 3.0, **kw}


def slew_to_zenith(asys, mount, clock):
    ra, dec = lst_deg(clock.now() + 60, SITE["longitude"]), SITE["latitude"]
    slew = SlewTo(ra_deg=ra, dec_deg=dec)
    with asys.private() as p:
        p.tell(mount, slew)
        arrived = wait_reply(p, slew.request_id, 15.0, MountArrived)
    assert arrived is not None and arrived.action == "slew", arrived


def test_kernel_parks_a_real_mount_and_sends_again_when_not_confirmed(asys, tmp_path):
    speed = 20.0
    clock = SimClock.starting_now(NIGHT, speed)
    archive, _ = start_actor(asys, ArchiveActor, "archive", "archive", {}, tmp_path, clock=clock)
    mount, _ = start_actor(asys, MountActor, "mount", "mount",
                           {"driver": "simulator", "settings": {"slew_rate_deg_s": 3.0, "settle_time_s": 2.0}},
                           tmp_path, clock=clock)
    slew_to_zenith(asys, mount, clock)
    proxy = asys.createActor(DropFirstPark)
    assert asys.ask(proxy, {"mount": mount}, 5) == "ready"

    # No weather station: 'no reading', unsafe from the first evaluation.
    safety = asys.createActor(SafetyActor)
    init = make_init("safety", "safety", kernel_settings(park_confirm_timeout=30.0, confirm_min_wall=1.0),
                     tmp_path, clock=clock, peers={"mount": proxy, "archive": archive})
    db = tmp_path / "db" / "unit.sqlite"
    with asys.private() as p:
        p.tell(safety, init)
        assert isinstance(wait_reply(p, init.request_id, 15.0, Initialized), Initialized)
        confirmed = wait_until(lambda: audit_rows(db, "SELECT time_unix, message FROM safety_audit WHERE "
                                                      "kind='confirmed' AND device='mount'"),
                               20.0, "the park confirmed")
        verdict = None
        while (msg := p.listen(0.2)) is not None:
            verdict = msg if isinstance(msg, SafetyVerdict) else verdict
    rows = audit_rows(db)
    commands = [r for r in rows if r[0] == "command"]
    assert len(commands) >= 2, rows
    assert commands[0][1:3] == ("mount", "park") and "seen tracking while unsafe" in commands[0][4]
    assert "not confirmed (attempt 1): sending again" in commands[1][4] and "attempt 2" in commands[1][4]
    assert confirmed[0][1] == "mount parked"
    assert rows[0][0] == "verdict" and rows[0][3] == 0
    reasons = audit_rows(db, "SELECT reasons, inputs FROM safety_audit WHERE kind='verdict' ORDER BY wall_unix")
    assert "no reading" in json.loads(reasons[0][0])
    inputs = json.loads(reasons[0][1])
    assert inputs["weather"] is None and inputs["sun_alt_deg"] < -18 and inputs["free_disk_gb"] > 0
    assert set(inputs["devices"]) == {"mount"}
    status = wait_reply_status(asys, mount)
    assert status["parked"] is True
    assert verdict is None or verdict.safe is False


def wait_reply_status(asys, addr):
    req = GetStatus()
    with asys.private() as p:
        p.tell(addr, req)
        return wait_reply(p, req.request_id, 5.0).status


def test_mount_answers_every_park_requester_and_interrupts_a_slew(asys, tmp_path):
    speed = 20.0
    clock = SimClock.starting_now(NIGHT, speed)
    mount, _ = start_actor(asys, MountActor, "mount", "mount",
                           {"driver": "simulator", "settings": {"slew_rate_deg_s": 3.0, "settle_time_s": 2.0}},
                           tmp_path, clock=clock)
    ra, dec = lst_deg(clock.now() + 60, SITE["longitude"]), SITE["latitude"]
    slew, park1, park2 = SlewTo(ra_deg=ra, dec_deg=dec), Park(), Park()
    with asys.private() as a, asys.private() as b, asys.private() as c:
        a.tell(mount, slew)
        assert isinstance(wait_reply(a, slew.request_id, 5.0), MountMoving)
        b.tell(mount, park1)
        interrupted = wait_reply(a, slew.request_id, 5.0, MountArrived)
        assert interrupted is not None and interrupted.action == "slew-interrupted"
        assert isinstance(wait_reply(b, park1.request_id, 5.0), MountMoving)
        c.tell(mount, park2)                                    # a second requester while parking
        moving = wait_reply(c, park2.request_id, 5.0)
        assert isinstance(moving, MountMoving) and moving.action == "park"
        first = wait_reply(b, park1.request_id, 15.0, MountArrived)
        second = wait_reply(c, park2.request_id, 15.0, MountArrived)
    assert first.action == second.action == "park" and first.status["parked"] and second.status["parked"]


def test_kernel_closes_an_open_dome_and_shares_the_close(asys, tmp_path):
    speed = 20.0
    clock = SimClock.starting_now(NIGHT, speed)
    archive, _ = start_actor(asys, ArchiveActor, "archive", "archive", {}, tmp_path, clock=clock)
    dome, _ = start_actor(asys, DomeActor, "dome", "dome", {"driver": "simulator",
                                                            "settings": {"shutter_time_s": 40.0}},
                          tmp_path, clock=clock)
    opened = OpenDome()
    with asys.private() as p:
        p.tell(dome, opened)
        reply = wait_reply(p, opened.request_id, 10.0, DeviceMoved)
    assert reply is not None and reply.ok and reply.status["shutter"] == "open"
    safety = asys.createActor(SafetyActor)
    init = make_init("safety", "safety", kernel_settings(), tmp_path, clock=clock,
                     peers={"dome": dome, "archive": archive})
    db = tmp_path / "db" / "unit.sqlite"
    with asys.private() as p:
        p.tell(safety, init)
        wait_until(lambda: audit_rows(db, "SELECT 1 FROM safety_audit WHERE kind='command' AND device='dome'"),
                   10.0, "the close sent")
        # The supervisor closes too, meanwhile: the dome answers both.
        close = CloseDome()
        with asys.private() as q:
            q.tell(dome, close)
            mine = wait_reply(q, close.request_id, 10.0, DeviceMoved)
        assert mine is not None and mine.ok and mine.action == "close"
        confirmed = wait_until(lambda: audit_rows(db, "SELECT message FROM safety_audit WHERE kind='confirmed'"),
                               10.0, "the close confirmed")
    assert confirmed[0][0] == "dome: close done"
    assert wait_reply_status(asys, dome)["shutter"] == "closed"
    commands = audit_rows(db, "SELECT message FROM safety_audit WHERE kind='command'")
    assert len(commands) == 1 and "shutter open while unsafe" in commands[0][0]


def test_kernel_follows_the_simulated_ups(asys, tmp_path):
    speed = 60.0
    clock = SimClock.starting_now(NIGHT, speed)
    weather, _ = start_actor(asys, WeatherActor, "weather", "weather", {"driver": "simulator", "timeline": None, "sample_interval": 5.0},
                             tmp_path, clock=clock)
    timeline = tmp_path / "power.yaml"
    timeline.write_text(yaml.safe_dump({"timeline": [{"at": iso(clock.now() + 120), "conditions": "clear",
                                                      "power": "battery"}]}))
    safety = asys.createActor(SafetyActor)
    init = make_init("safety", "safety", {**SAFETY_SETTINGS, "ups_timeline": str(timeline),
                                          "max_weather_age": 60.0}, tmp_path, clock=clock,
                     peers={"weather": weather})
    seen = []
    with asys.private() as p:
        p.tell(safety, init)
        deadline = time.time() + 15
        while time.time() < deadline:
            msg = p.listen(0.5)
            if isinstance(msg, SafetyVerdict):
                seen.append(msg)
                if not msg.safe and any(r.startswith("power: on battery") for r in msg.reasons):
                    break
    safe_first = next((v for v in seen if v.safe), None)
    battery = seen[-1]
    assert safe_first is not None, [(v.safe, v.reasons) for v in seen]
    assert not battery.safe and battery.reasons[0].startswith("power: on battery") and battery.weather_safe
    assert battery.time_unix >= safe_first.time_unix


# --------------------------------------------------------------------------
# A running unit: the audit trail of an unsafe spell, and the clear-after
# --------------------------------------------------------------------------

def test_unit_audits_an_unsafe_spell_and_resumes_only_after_the_clear_after(tmp_path):
    from tests.test_unit_faults import DARK_START, science_count, sim_now
    from tests.unit_runner import RunningUnit
    clear_after = 300.0
    timeline = tmp_path / "weather.yaml"
    timeline.write_text("timeline: []\n")
    unit = RunningUnit(tmp_path, start=DARK_START, speed=60,
                       overrides={"weather.timeline": str(timeline), "weather.sample_interval": 5.0,
                                  "safety.reopen_after": 0.0, "safety.rain_clear_after": clear_after})
    try:
        unit.wait_for(lambda: science_count(unit, "cam00") >= 1, 90, "a first science frame")
        now = sim_now(unit)
        dry_at = now + 300
        timeline.write_text(yaml.safe_dump({"timeline": [{"at": iso(now), "conditions": "rain"},
                                                         {"at": iso(dry_at), "conditions": "clear"}]}))
        q = "SELECT time_unix, kind, safe, reasons, inputs, changed, device, action, message FROM safety_audit" \
            " WHERE time_unix >= ? ORDER BY time_unix, wall_unix"
        safe_again = unit.wait_for(lambda: [r for r in unit.query(q, (now - 10,)) if r[1] == "verdict" and r[2]],
                                   60, "safe again in the audit trail")[0]
        resumed = unit.wait_for(lambda: unit.query(
            "SELECT MIN(start_unix) FROM exposures WHERE image_type='science' AND start_unix > ?", (now,))[0][0],
            60, "observing resumed")
        rows = unit.query(q, (now - 10,))
        verdicts = [r for r in rows if r[1] == "verdict"]
        unsafe = next(r for r in verdicts if "rain" in json.loads(r[3]))
        assert unsafe[2] == 0 and "rain" in json.loads(unsafe[5])["added"]
        inputs = json.loads(unsafe[4])
        assert inputs["weather"]["rain"] is True and inputs["weather_age_s"] is not None
        assert inputs["sun_alt_deg"] < -18 and inputs["free_disk_gb"] > 0 and inputs["power"]["state"] == "mains"
        assert inputs["devices"]["mount"]["answering"] is True
        clearing = [r for r in verdicts if "rain" in json.loads(r[5]).get("clearing", [])]
        assert clearing, verdicts
        assert any("waiting for" in reason and "dry readings" in reason for reason in json.loads(clearing[0][3]))
        assert clearing[0][0] >= dry_at - 10
        # Safe only after clear_after of dry readings, and observing only after that.
        assert safe_again[0] - dry_at >= clear_after - 10, (safe_again[0] - dry_at)
        assert "rain" in json.loads(safe_again[5])["cleared"] and json.loads(safe_again[3]) == []
        assert resumed >= safe_again[0]
        # Only changes are recorded, not every evaluation.
        assert len(verdicts) <= 6, [(r[1], r[3]) for r in verdicts]
        # The kernel parked the mount itself, and recorded the confirmation.
        commands = [r for r in rows if r[1] == "command" and r[6] == "mount"]
        assert commands and commands[0][7] == "park" and commands[0][0] <= unsafe[0] + 5
        assert [r for r in rows if r[1] == "confirmed" and r[6] == "mount"]
        assert unit.terminate() == 0
    finally:
        unit.kill()

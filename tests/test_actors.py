"""Each actor alone, inside a real multiprocTCPBase actor system (one process
per actor), driven from outside with private contexts and request ids.

Every test gets its own actor system on a free port, shut down in the fixture
teardown; the teardown also checks that every process of the system is gone.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

import pytest
import yaml
from astropy.io import fits
from thespian.actors import Actor, ActorSystem

# Imported here, before the actor system forks, so that every actor process
# starts with astropy & co. already loaded.
from actors.analysis import AnalysisActor
from actors.archive import ArchiveActor
from actors.base import UnitActor
from actors.camera import CameraActor
from actors.mount import MountActor
from actors.safety import SafetyActor
from actors.scheduler import SchedulerActor
from actors.weather import WeatherActor
from messages import (AbortExposure, AnalyzeFrame, CheckObservation, CloseObservation, CommandFailed,
                      DeviceStatus, ExposureAborted, ExposureComplete, ExposureStarted, FrameAnalyzed,
                      GetStatus, InitializationFailed, Initialize, Initialized, MountArrived, MountMoving,
                      NightSummaryWritten, ObservationChecked, Park, PeersChanged, RecordDecision,
                      RecordEvent, RecordExposure, RecordMetrics, RecordObservation, RequestSchedule,
                      SafetyVerdict, ScheduleDecision, SlewTo, StartExposure, WriteNightSummary)
from observatory import logs
from observatory.astro import lst_deg
from observatory.clock import SimClock, parse_iso
from observatory.imaging import write_fits_atomic
from observatory.processes import pid_alive, prepare_actor_host
from simulators.camera import SimulatedCamera

ROOT = Path(__file__).resolve().parent.parent
# Mauna Loa, 20:30 local on 2026-11-24: astronomically dark (sun about -40 deg).
NIGHT = parse_iso("2026-11-24T06:30:00")
SITE = {"name": "Mauna Loa Observatory", "latitude": 19.54, "longitude": -155.58, "elevation": 3400.0,
        "observe_horizon": -18.0, "min_altitude": 30.0}
SAFETY_SETTINGS = {"check_interval": 5.0, "max_check_wall_interval": 0.25, "max_weather_age": 180.0,
                   "max_sky_minus_ambient": -25.0, "max_wind": 50.0, "max_gust": 70.0, "reopen_after": 300.0}
SMALL_CAMERA = {"width": 400, "height": 300, "readout_time": 2.0, "limit_mag": 11.0}


# --------------------------------------------------------------------------
# Helpers: ports, sockets and processes
# --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ip(hexip: str) -> str:
    raw = bytes.fromhex(hexip)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def tcp_listeners() -> dict[int, tuple[str, int]]:
    """socket inode -> (ip, port) of every TCP socket in LISTEN state (IPv4 and IPv6)."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":          # TCP_LISTEN
                continue
            hexip, hexport = fields[1].split(":")
            out[int(fields[9])] = (_ip(hexip), int(hexport, 16))
    return out


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def parent_pids() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def system_pids(admin_port: int) -> set[int]:
    """The admin process (the holder of the admin port's listening socket) and all its descendants."""
    listeners = {inode for inode, (_, port) in tcp_listeners().items() if port == admin_port}
    me = os.getpid()
    ppids = parent_pids()
    holders = {pid for pid in ppids if pid != me and socket_inodes(pid) & listeners}
    found = set(holders)
    changed = True
    while changed:
        changed = False
        for pid, ppid in ppids.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


# --------------------------------------------------------------------------
# Helpers: talking to actors
# --------------------------------------------------------------------------

def wait_reply(ctx, request_id: str, timeout: float, types=None):
    """Next message on ``ctx`` that answers ``request_id`` (others are dropped)."""
    deadline = time.time() + timeout
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            return None
        msg = ctx.listen(remaining)
        if msg is None:
            return None
        if getattr(msg, "request_id", None) == request_id and (types is None or isinstance(msg, types)):
            return msg


def ask(asys, addr, msg, timeout: float = 5.0, types=None):
    """Ask in a private context of its own; return the reply carrying msg's request id."""
    with asys.private() as p:
        p.tell(addr, msg)
        return wait_reply(p, msg.request_id, timeout, types)


def make_init(name, role, settings, tmp_path, *, start=NIGHT, speed=20.0, peers=None, clock=None):
    """The Initialize a supervisor would send; actors of one test share ``clock`` when given."""
    clock = clock or SimClock.starting_now(start, speed)
    return Initialize(name=name, role=role, settings=settings, clock=clock.to_dict(), pandir=str(tmp_path),
                      site=dict(SITE), epoch=1, peers=peers or {})


def start_actor(asys, cls, name, role, settings, tmp_path, **kw):
    addr = asys.createActor(cls)
    init = make_init(name, role, settings, tmp_path, **kw)
    reply = ask(asys, addr, init, timeout=15.0)
    assert isinstance(reply, Initialized), f"{name}: expected Initialized, got {reply!r}"
    assert reply.name == name and reply.epoch == 1 and reply.pid != os.getpid()
    return addr, reply


# --------------------------------------------------------------------------
# The actor system fixture
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def warm_astropy():
    """Do astropy's slow first-time work (about 2 s: ephemeris and time-scale tables)
    once in this process, before any actor system forks from it, instead of once
    in every safety and scheduler actor process."""
    from observatory.astro import Ephemeris, Site
    eph = Ephemeris(Site(SITE["name"], SITE["latitude"], SITE["longitude"], SITE["elevation"]))
    eph.sun_alt(NIGHT)
    eph.moon_radec(NIGHT)


@pytest.fixture
def asys(tmp_path, monkeypatch, warm_astropy):
    monkeypatch.setenv("THESPLOG_FILE", str(tmp_path / "logs" / "thespian-internal.log"))
    prepare_actor_host()
    port = free_port()
    system = ActorSystem("multiprocTCPBase", {"Admin Port": port}, logDefs=logs.thespian_log_defs(tmp_path))
    system.test_admin_port = port
    pids: set[int] = set()
    try:
        pids = system_pids(port)
        yield system
        pids |= system_pids(port)
    finally:
        system.shutdown()
    # shutdown() gives up after 10 s and leaves hung actors running: check.
    deadline = time.time() + 5
    while time.time() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    left = [p for p in pids if pid_alive(p)]
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"actor system processes still running after shutdown: {left}"


# --------------------------------------------------------------------------
# Process-level safety nets
# --------------------------------------------------------------------------

def test_every_socket_listens_on_loopback_only(asys, tmp_path):
    _, mount = start_actor(asys, MountActor, "mount", "mount", {"driver": "simulator", "settings": {}}, tmp_path)
    _, weather = start_actor(asys, WeatherActor, "weather", "weather", {"driver": "simulator", "timeline": None},
                             tmp_path)
    pids = system_pids(asys.test_admin_port)
    assert {mount.pid, weather.pid} <= pids
    listeners = tcp_listeners()
    admin = [addr for addr in listeners.values() if addr[1] == asys.test_admin_port]
    assert admin == [("127.0.0.1", asys.test_admin_port)]
    seen = {}
    for pid in pids | {os.getpid()}:
        for inode in socket_inodes(pid) & set(listeners):
            seen.setdefault(pid, set()).add(listeners[inode])
    for pid in (mount.pid, weather.pid):
        assert seen.get(pid), f"actor {pid} has no listening socket"
    wildcard = {pid: addrs for pid, addrs in seen.items()
                if any(ip not in ("127.0.0.1", "::1") for ip, _ in addrs)}
    assert not wildcard, f"sockets not on loopback: {wildcard}"


def test_loopback_check_agrees_with_ss(asys, tmp_path):
    """Cross-check of the /proc parsing above with iproute2's ss, when present."""
    import shutil
    import subprocess
    if shutil.which("ss") is None:
        pytest.skip("ss not installed")
    _, mount = start_actor(asys, MountActor, "mount", "mount", {"driver": "simulator", "settings": {}}, tmp_path)
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
    lines = [line for line in out.splitlines() if f"pid={mount.pid}," in line]
    assert lines, out
    for line in lines:
        local = line.split()[3]
        assert local.startswith("127.0.0.1:"), line
    assert any(line.split()[3] == f"127.0.0.1:{asys.test_admin_port}" for line in out.splitlines())


class PdeathChild(UnitActor):
    role = "pdeath-child"


class PdeathParent(Actor):
    """Creates a PdeathChild and reports both pids (and the child's parent pid)."""

    def receiveMessage(self, msg, sender):
        if msg == "spawn":
            self.asker = sender
            self.child = self.createActor(PdeathChild)
            self.send(self.child, GetStatus(request_id="child-status"))
        elif isinstance(msg, DeviceStatus) and msg.request_id == "child-status":
            ppid = int(Path(f"/proc/{msg.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            self.send(self.asker, {"parent": os.getpid(), "child": msg.pid, "child_ppid": ppid})


def test_child_exits_when_its_parent_is_killed(asys):
    parent = asys.createActor(PdeathParent)
    with asys.private() as p:
        reply = p.ask(parent, "spawn", 10)
    assert isinstance(reply, dict), reply
    assert reply["child_ppid"] == reply["parent"] != reply["child"]
    assert pid_alive(reply["parent"]) and pid_alive(reply["child"])
    os.kill(reply["parent"], signal.SIGKILL)
    deadline = time.time() + 2.0
    while pid_alive(reply["child"]) and time.time() < deadline:
        time.sleep(0.01)
    assert not pid_alive(reply["parent"])
    assert not pid_alive(reply["child"]), "the orphaned child actor is still running 2 s after its parent died"


# --------------------------------------------------------------------------
# Mount
# --------------------------------------------------------------------------

def test_mount_slew_status_during_slew_and_park(asys, tmp_path):
    speed = 20.0
    addr, init = start_actor(asys, MountActor, "mount", "mount",
                             {"driver": "simulator", "settings": {"slew_rate_deg_s": 3.0, "settle_time_s": 2.0}},
                             tmp_path, speed=speed)
    assert init.info["status"]["parked"] is True
    assert init.info["connect"]["model"]
    # A target near the zenith: RA = local sidereal time, Dec = latitude.
    clock = SimClock.starting_now(NIGHT, speed)
    ra, dec = lst_deg(clock.now() + 2 * speed, SITE["longitude"]), SITE["latitude"]
    slew = SlewTo(ra_deg=ra, dec_deg=dec)
    with asys.private() as p:
        t0 = time.time()
        p.tell(addr, slew)
        moving = wait_reply(p, slew.request_id, 5.0)
        assert isinstance(moving, MountMoving), moving
        assert moving.action == "slew" and moving.name == "mount"
        # From the pole (park) to Dec 19.5: 70.5 deg at 3 deg/s plus 2 s settling.
        assert 20.0 < moving.expected_s < 30.0, moving.expected_s

        # Status while slewing is answered at once, from another context.
        t1 = time.time()
        status = ask(asys, addr, GetStatus(), timeout=2.0)
        answered = time.time() - t1
        assert isinstance(status, DeviceStatus), status
        assert status.status["state"] == "slewing" and status.status["slew_remaining_s"] > 5.0
        assert answered < 0.5, f"GetStatus took {answered:.3f} s during a slew"

        arrived = wait_reply(p, slew.request_id, 10.0, MountArrived)
        elapsed = time.time() - t0
    assert isinstance(arrived, MountArrived), arrived
    assert arrived.action == "slew"
    s = arrived.status
    assert s["state"] == "tracking" and s["tracking"] and not s["parked"]
    assert abs((s["ra_deg"] - ra + 180) % 360 - 180) < 0.01 and abs(s["dec_deg"] - dec) < 0.01
    assert s["alt_deg"] > 80
    expected_wall = moving.expected_s / speed
    assert expected_wall * 0.9 < elapsed < expected_wall + 1.5, (elapsed, expected_wall)

    park = Park()
    with asys.private() as p:
        p.tell(addr, park)
        moving = wait_reply(p, park.request_id, 5.0)
        assert isinstance(moving, MountMoving) and moving.action == "park", moving
        assert 20.0 < moving.expected_s < 30.0
        arrived = wait_reply(p, park.request_id, 10.0, MountArrived)
    assert isinstance(arrived, MountArrived) and arrived.action == "park", arrived
    assert arrived.status["parked"] is True and arrived.status["state"] == "parked"
    assert arrived.status["dec_deg"] == pytest.approx(90.0, abs=1e-6)
    # Parking again is idempotent: nothing to move.
    again = Park()
    with asys.private() as p:
        p.tell(addr, again)
        moving = wait_reply(p, again.request_id, 5.0)
        assert isinstance(moving, MountMoving) and moving.expected_s == 0.0
        arrived = wait_reply(p, again.request_id, 5.0, MountArrived)
    assert arrived is not None and arrived.status["parked"]


def test_mount_refuses_a_target_below_the_horizon(asys, tmp_path):
    addr, _ = start_actor(asys, MountActor, "mount", "mount", {"driver": "simulator", "settings": {}}, tmp_path)
    ra = (lst_deg(NIGHT, SITE["longitude"]) + 180.0) % 360.0      # on the meridian below the pole
    reply = ask(asys, addr, SlewTo(ra_deg=ra, dec_deg=-60.0))
    assert isinstance(reply, CommandFailed), reply
    assert reply.command == "SlewTo" and "MountError" in reply.error and "altitude" in reply.error
    status = ask(asys, addr, GetStatus())
    assert isinstance(status, DeviceStatus) and status.status["state"] in ("parked", "stopped")
    assert status.status["slew_remaining_s"] == 0.0


def test_mount_refused_slew_leaves_the_mount_parked(asys, tmp_path):
    addr, _ = start_actor(asys, MountActor, "mount", "mount", {"driver": "simulator", "settings": {}}, tmp_path)
    ra = (lst_deg(NIGHT, SITE["longitude"]) + 180.0) % 360.0
    assert isinstance(ask(asys, addr, SlewTo(ra_deg=ra, dec_deg=-60.0)), CommandFailed)
    status = ask(asys, addr, GetStatus())
    assert isinstance(status, DeviceStatus) and status.status["parked"] is True, status.status["state"]


def test_mount_with_bad_settings_fails_initialisation(asys, tmp_path):
    addr = asys.createActor(MountActor)
    init = make_init("mount", "mount", {"driver": "simulator", "settings": {"slew_rate_deg_s": 0}}, tmp_path)
    reply = ask(asys, addr, init, timeout=10.0)
    assert isinstance(reply, InitializationFailed), reply
    assert "slew_rate_deg_s" in reply.error and reply.pid > 0


# --------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------

def camera_settings(**extra):
    return {"name": "cam00", "driver": "simulator", "primary": True, "settings": dict(SMALL_CAMERA, **extra)}


def test_camera_exposure_status_busy_and_file(asys, tmp_path):
    speed = 20.0
    addr, init = start_actor(asys, CameraActor, "cam00", "camera", camera_settings(), tmp_path, speed=speed)
    assert init.info["connect"]["width"] == 400 and init.info["connect"]["height"] == 300
    path = tmp_path / "images" / "field" / "cam00" / "seq" / "img1.fits"
    start = StartExposure(exposure_id="exp-1", exptime=20.0, path=str(path), image_type="science",
                          ra_deg=300.18, dec_deg=22.71, header={"OBJECT": ("HD 189733", "target field")})
    with asys.private() as p:
        p.tell(addr, start)
        started = wait_reply(p, start.request_id, 5.0)
        assert isinstance(started, ExposureStarted), started
        assert started.camera == "cam00" and started.exposure_id == "exp-1"

        status = ask(asys, addr, GetStatus(), timeout=2.0)
        assert isinstance(status, DeviceStatus) and status.status["state"] == "exposing"
        assert status.status["exposure_id"] == "exp-1" and 0.0 <= status.status["progress"] < 1.0

        # A second exposure while busy is refused with a reply, not a crash...
        other = StartExposure(exposure_id="exp-2", exptime=5.0, path=str(path.with_name("img2.fits")),
                              image_type="science", ra_deg=300.18, dec_deg=22.71)
        refused = ask(asys, addr, other, timeout=3.0)
        assert isinstance(refused, CommandFailed), refused
        assert refused.command == "StartExposure" and "busy" in refused.error and refused.source == "cam00"
        # ...and the actor carries on.
        status = ask(asys, addr, GetStatus(), timeout=2.0)
        assert isinstance(status, DeviceStatus) and status.status["exposure_id"] == "exp-1"
        # A repeated request for the running exposure is ignored (idempotent).
        p.tell(addr, start)

        done = wait_reply(p, start.request_id, 10.0, ExposureComplete)
        assert isinstance(done, ExposureComplete), done
        assert p.listen(0.3) is None, "the repeated StartExposure produced a second answer"
    assert done.path == str(path) and path.is_file()
    assert not path.with_name("img2.fits").exists()
    assert done.exptime == 20.0 and done.end_unix - done.start_unix == pytest.approx(20.0)
    assert done.start_unix == pytest.approx(started.start_unix)
    assert done.image_type == "science" and done.exposure_id == "exp-1"
    with fits.open(path) as hdul:
        assert hdul[0].data.shape == (300, 400)
        h = hdul[0].header
    assert h["OBJECT"] == "HD 189733" and h["IMAGETYP"] == "science" and h["EXPTIME"] == 20.0
    assert h["CAMERA"] == "cam00"
    status = ask(asys, addr, GetStatus(), timeout=2.0)
    assert status.status["state"] == "idle" and status.status["exposure_id"] is None


def test_camera_abort_leaves_no_file(asys, tmp_path):
    speed = 20.0
    addr, _ = start_actor(asys, CameraActor, "cam00", "camera", camera_settings(), tmp_path, speed=speed)
    path = tmp_path / "images" / "abort" / "img.fits"
    start = StartExposure(exposure_id="exp-a", exptime=10.0, path=str(path), image_type="science",
                          ra_deg=300.18, dec_deg=22.71)
    with asys.private() as p:
        p.tell(addr, start)
        assert isinstance(wait_reply(p, start.request_id, 5.0), ExposureStarted)
        p.tell(addr, AbortExposure())
        aborted = wait_reply(p, start.request_id, 5.0)
        assert isinstance(aborted, ExposureAborted), aborted
        assert aborted.exposure_id == "exp-a" and aborted.camera == "cam00"
        # Wait past the time the exposure and readout would have ended.
        time.sleep((10.0 + SMALL_CAMERA["readout_time"]) / speed + 0.5)
        assert p.listen(0.05) is None, "a late answer came for the aborted exposure"
    assert not path.exists()
    assert not path.parent.exists() or not any(path.parent.iterdir()), "partial files left behind"
    status = ask(asys, addr, GetStatus(), timeout=2.0)
    assert status.status["state"] == "idle" and status.status["exposure_id"] is None
    # The camera can expose again.
    again = StartExposure(exposure_id="exp-b", exptime=1.0, path=str(path), image_type="dark",
                          ra_deg=300.18, dec_deg=22.71)
    with asys.private() as p:
        p.tell(addr, again)
        assert isinstance(wait_reply(p, again.request_id, 5.0), ExposureStarted)
        done = wait_reply(p, again.request_id, 5.0)
    assert isinstance(done, ExposureComplete) and path.is_file()


def test_camera_abort_too_late_is_not_reported_as_aborted(asys, tmp_path):
    """Regression: an abort that came while the frame was being written (driver.abort() returns
    False, the exposure completes) was answered ExposureAborted, and the file appeared afterwards:
    an image the unit believed aborted and never archived."""
    # A full-size frame, so that writing it (with fsync) takes a visible fraction of a second.
    settings = {"name": "cam00", "driver": "simulator",
                "settings": {"readout_time": 0.0, "limit_mag": 8.0, "hot_pixel_fraction": 0.0}}
    addr, _ = start_actor(asys, CameraActor, "cam00", "camera", settings, tmp_path, speed=20.0)
    path = tmp_path / "late" / "img.fits"
    start = StartExposure(exposure_id="exp-late", exptime=1.0, path=str(path), image_type="science",
                          ra_deg=300.18, dec_deg=22.71)
    with asys.private() as p:
        p.tell(addr, start)
        assert isinstance(wait_reply(p, start.request_id, 5.0), ExposureStarted)
        deadline = time.time() + 20
        while not list(path.parent.glob(".img.fits.*.part")) and not path.exists() and time.time() < deadline:
            time.sleep(0.001)
        assert not path.exists(), "missed the write: the test could not abort during it"
        p.tell(addr, AbortExposure())          # the file is being written: too late to abort
        reply = wait_reply(p, start.request_id, 10.0)
    deadline = time.time() + 10
    while list(path.parent.glob(".img.fits.*.part")) and time.time() < deadline:
        time.sleep(0.01)
    if isinstance(reply, ExposureAborted):
        assert not path.exists(), "ExposureAborted was reported, yet the frame was written"
    else:
        assert isinstance(reply, ExposureComplete) and path.is_file(), reply


def test_camera_refuses_a_bad_request(asys, tmp_path):
    addr, _ = start_actor(asys, CameraActor, "cam00", "camera", camera_settings(), tmp_path)
    bad = StartExposure(exposure_id="exp-x", exptime=1.0, path=str(tmp_path / "x.fits"), image_type="selfie",
                        ra_deg=0.0, dec_deg=0.0)
    reply = ask(asys, addr, bad)
    assert isinstance(reply, CommandFailed) and "selfie" in reply.error
    status = ask(asys, addr, GetStatus())
    assert isinstance(status, DeviceStatus) and status.status["state"] == "idle"


# --------------------------------------------------------------------------
# Weather and safety
# --------------------------------------------------------------------------

def collect_verdicts(ctx, until, timeout, into):
    """SafetyVerdicts arriving on ``ctx`` until one satisfies ``until`` (returned) or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        msg = ctx.listen(max(0.01, deadline - time.time()))
        if isinstance(msg, InitializationFailed):
            pytest.fail(f"{msg.name} failed to initialise: {msg.error}")
        if isinstance(msg, SafetyVerdict):
            into.append(msg)
            if until(msg):
                return msg
    return None


def test_safety_turns_unsafe_when_the_weather_peer_reports_rain(asys, tmp_path):
    speed = 60.0
    clock = SimClock.starting_now(NIGHT, speed)         # one clock for every actor, as the supervisor does
    clear, _ = start_actor(asys, WeatherActor, "weather", "weather",
                           {"driver": "simulator", "timeline": None, "sample_interval": 30.0}, tmp_path, clock=clock)

    safety = asys.createActor(SafetyActor)
    init = make_init("safety", "safety", SAFETY_SETTINGS, tmp_path, clock=clock, peers={"weather": clear})
    verdicts: list[SafetyVerdict] = []
    with asys.private() as p:          # the safety actor reports to whoever sent Initialize
        p.tell(safety, init)
        # 1. With the weather peer given in Initialize: dark, clear, fresh reading -> safe.
        safe = collect_verdicts(p, lambda v: v.safe, 15.0, verdicts)
        assert safe is not None, [(v.safe, v.reasons) for v in verdicts]
        assert safe.reasons == () and safe.weather_safe and safe.sun_alt_deg < SITE["observe_horizon"]

        # 2. A (replacement) station whose timeline turns to rain one simulated minute from now.
        timeline = tmp_path / "weather.yaml"
        timeline.write_text(yaml.safe_dump({"timeline": [{"after": 60, "conditions": "rain"}]}))
        rain_start = clock.now()
        rainy, _ = start_actor(asys, WeatherActor, "weather", "weather",
                               {"driver": "simulator", "timeline": str(timeline), "sample_interval": 30.0,
                                "timeline_start_unix": rain_start}, tmp_path, clock=clock)
        p.tell(safety, PeersChanged(peers={"weather": rainy}))
        rain = collect_verdicts(p, lambda v: not v.safe and "rain" in v.reasons, 10.0, verdicts)
    assert rain is not None, [(v.safe, v.reasons) for v in verdicts]
    assert rain.weather_safe is False and rain.changed is True
    assert rain.time_unix >= rain_start + 60 - 30      # sampled no earlier than the 30 s interval of the change
    assert rain.sun_alt_deg < -18.0
    # It was safe right up to the rain: no other reason appeared in between.
    after_safe = verdicts[verdicts.index(safe):-1]
    assert all(v.safe for v in after_safe), [(v.safe, v.reasons) for v in after_safe]
    status = ask(asys, safety, GetStatus())
    assert isinstance(status, DeviceStatus)
    assert status.status["safe"] is False and "rain" in status.status["reasons"]


def test_safety_without_a_weather_station_is_unsafe(asys, tmp_path):
    safety = asys.createActor(SafetyActor)
    init = make_init("safety", "safety", SAFETY_SETTINGS, tmp_path)
    with asys.private() as p:
        p.tell(safety, init)
        verdict = None
        deadline = time.time() + 10
        while verdict is None and time.time() < deadline:
            msg = p.listen(deadline - time.time())
            if isinstance(msg, SafetyVerdict):
                verdict = msg
    assert verdict is not None and verdict.safe is False and "no reading" in verdict.reasons


# --------------------------------------------------------------------------
# Scheduler
# --------------------------------------------------------------------------

def scheduler_settings(fields_file):
    return {"fields_file": str(fields_file), "moon_separation": 15.0, "hysteresis": 0.1}


def test_scheduler_decision_at_a_dark_time(asys, tmp_path):
    addr, init = start_actor(asys, SchedulerActor, "scheduler", "scheduler",
                             scheduler_settings(ROOT / "conf" / "fields.yaml"), tmp_path)
    assert init.info["fields"] > 5
    request = RequestSchedule(time_unix=NIGHT)
    reply = ask(asys, addr, request, timeout=10.0)
    assert isinstance(reply, ScheduleDecision), reply
    assert reply.winner is not None and reply.decision_id
    assert reply.observation["name"] == reply.winner
    for key in ("ra_deg", "dec_deg", "priority", "exptime", "min_nexp", "exp_set_size"):
        assert key in reply.observation
    d = reply.decision
    assert d["winner"] == reply.winner and d["reason"] == reply.reason and "fields_error" not in d
    names = [c["name"] for c in d["candidates"]]
    assert len(names) == init.info["fields"] and reply.winner in names
    best = max(d["candidates"], key=lambda c: c["merit"])
    assert best["name"] == reply.winner and best["merit"] > 0 and best["vetoes"] == []
    assert best["altitude_deg"] >= SITE["min_altitude"]
    assert any(c["vetoes"] for c in d["candidates"]), "some field should be vetoed (e.g. below the horizon)"
    for c in d["candidates"]:
        assert (c["merit"] == 0) == bool(c["vetoes"]), c
    json.dumps(d)


def test_scheduler_checks_a_field_again_before_a_slew(asys, tmp_path):
    addr, _ = start_actor(asys, SchedulerActor, "scheduler", "scheduler",
                          scheduler_settings(ROOT / "conf" / "fields.yaml"), tmp_path)
    decision = ask(asys, addr, RequestSchedule(time_unix=NIGHT), timeout=10.0)
    ok = ask(asys, addr, CheckObservation(name=decision.winner, time_unix=NIGHT), timeout=10.0)
    assert isinstance(ok, ObservationChecked) and ok.ok and ok.vetoes == ()
    vetoed = next(c for c in decision.decision["candidates"] if "below_horizon" in c["vetoes"])
    no = ask(asys, addr, CheckObservation(name=vetoed["name"], time_unix=NIGHT), timeout=10.0)
    assert not no.ok and "below_horizon" in no.vetoes
    done = ask(asys, addr, CheckObservation(name=decision.winner, time_unix=NIGHT,
                                            exposures_done={decision.winner: 10_000}), timeout=10.0)
    assert not done.ok and "done" in done.vetoes
    unknown = ask(asys, addr, CheckObservation(name="Nowhere", time_unix=NIGHT), timeout=10.0)
    assert not unknown.ok and unknown.vetoes == ("unknown field",)


def test_scheduler_with_an_invalid_fields_file_fails_initialisation(asys, tmp_path):
    bad = tmp_path / "fields.yaml"
    bad.write_text('- field: {name: "No Position"}\n')
    addr = asys.createActor(SchedulerActor)
    reply = ask(asys, addr, make_init("scheduler", "scheduler", scheduler_settings(bad), tmp_path), timeout=10.0)
    assert isinstance(reply, InitializationFailed), reply
    assert str(bad) in reply.error and "position" in reply.error


def _bump_mtime(path: Path, seconds: float) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + int(seconds * 1e9)))


def test_scheduler_keeps_the_last_good_fields_after_a_bad_edit(asys, tmp_path):
    fields = tmp_path / "fields.yaml"
    fields.write_text((ROOT / "conf" / "fields.yaml").read_text())
    addr, init = start_actor(asys, SchedulerActor, "scheduler", "scheduler", scheduler_settings(fields), tmp_path)
    first = ask(asys, addr, RequestSchedule(time_unix=NIGHT), timeout=10.0)
    assert isinstance(first, ScheduleDecision) and first.winner

    fields.write_text(fields.read_text() + '- field: {name: "Broken", position: "not a position"}\n')
    _bump_mtime(fields, 2)
    second = ask(asys, addr, RequestSchedule(time_unix=NIGHT), timeout=10.0)
    assert isinstance(second, ScheduleDecision), second
    assert second.winner == first.winner
    assert len(second.decision["candidates"]) == init.info["fields"]
    assert "Broken" not in [c["name"] for c in second.decision["candidates"]]
    error = second.decision.get("fields_error")
    assert error and str(fields) in error and "Broken" in error and "last good" in error
    status = ask(asys, addr, GetStatus())
    assert status.status["fields_error"] == error and status.status["fields"] == init.info["fields"]

    # A fixed file is picked up and the error goes away.
    ra = lst_deg(NIGHT, SITE["longitude"])
    fields.write_text(f'- field: {{name: "Zenith", position: "{ra:.4f} {SITE["latitude"]:.4f}"}}\n')
    _bump_mtime(fields, 4)
    third = ask(asys, addr, RequestSchedule(time_unix=NIGHT), timeout=10.0)
    assert isinstance(third, ScheduleDecision), third
    assert third.winner == "Zenith" and "fields_error" not in third.decision
    assert [c["name"] for c in third.decision["candidates"]] == ["Zenith"]


# --------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------

def simulated_frame(path: Path) -> Path:
    cam = SimulatedCamera("cam00", {"width": 400, "height": 300}, SimClock.starting_now(NIGHT))
    data = cam.render(120.0, 300.18, 22.71)
    return write_fits_atomic(path, data, {"SATURATE": 15000})


def test_analysis_measures_a_simulated_frame(asys, tmp_path):
    frame = simulated_frame(tmp_path / "frame.fits")
    addr, _ = start_actor(asys, AnalysisActor, "analysis", "analysis", {}, tmp_path)
    reply = ask(asys, addr, AnalyzeFrame(exposure_id="e1", camera="cam00", path=str(frame)), timeout=10.0)
    assert isinstance(reply, FrameAnalyzed), reply
    m = reply.metrics
    assert "error" not in m, m
    assert m["n_stars"] > 0 and len(reply.sources) > 0
    assert 1.2 < m["fwhm_px"] < 4.0                       # the simulator draws 2.2 px stars
    assert 2048 < m["background"] < 15000 and m["background_rms"] > 0
    assert reply.drift_px is None
    # Against its own sources the drift is zero.
    again = ask(asys, addr, AnalyzeFrame(exposure_id="e2", camera="cam00", path=str(frame),
                                         reference_sources=reply.sources), timeout=10.0)
    assert isinstance(again, FrameAnalyzed) and again.drift_px is not None
    dx, dy, n = again.drift_px
    assert abs(dx) < 0.1 and abs(dy) < 0.1 and n >= 5


def test_analysis_of_a_text_file_names_the_file(asys, tmp_path):
    text = tmp_path / "notes.fits"
    text.write_text("this is not an image\n" * 10)
    addr, _ = start_actor(asys, AnalysisActor, "analysis", "analysis", {}, tmp_path)
    reply = ask(asys, addr, AnalyzeFrame(exposure_id="t1", camera="cam00", path=str(text)), timeout=10.0)
    assert isinstance(reply, FrameAnalyzed), reply
    assert str(text) in reply.metrics["error"]
    missing = ask(asys, addr, AnalyzeFrame(exposure_id="t2", camera="cam00", path=str(tmp_path / "gone.fits")),
                  timeout=10.0)
    assert isinstance(missing, FrameAnalyzed) and str(tmp_path / "gone.fits") in missing.metrics["error"]
    status = ask(asys, addr, GetStatus())
    assert status.status["pending"] == 0


def test_analysis_survives_an_unexpected_error(asys, tmp_path):
    """Regression: the worker thread once caught only ImageError, so any other exception (here a
    ValueError from measure_drift on malformed reference_sources) killed it, and that request and
    every later one went unanswered while GetStatus still answered."""
    frame = simulated_frame(tmp_path / "frame.fits")
    addr, _ = start_actor(asys, AnalysisActor, "analysis", "analysis", {}, tmp_path)
    bad = AnalyzeFrame(exposure_id="b1", camera="cam00", path=str(frame), reference_sources=(("x", "y", "f"),))
    reply = ask(asys, addr, bad, timeout=5.0)
    assert isinstance(reply, FrameAnalyzed) and str(frame) in reply.metrics.get("error", ""), reply
    good = ask(asys, addr, AnalyzeFrame(exposure_id="g1", camera="cam00", path=str(frame)), timeout=5.0)
    assert isinstance(good, FrameAnalyzed) and good.metrics.get("n_stars", 0) > 0, good
    status = ask(asys, addr, GetStatus())
    assert status.status["pending"] == 0


# --------------------------------------------------------------------------
# Archive
# --------------------------------------------------------------------------

def query(db: Path, sql: str):
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def test_archive_actor_records_and_writes_the_night_summary(asys, tmp_path):
    addr, init = start_actor(asys, ArchiveActor, "archive", "archive", {}, tmp_path)
    db = tmp_path / "db" / "unit.sqlite"
    assert init.info["path"] == str(db) and db.is_file()
    t = NIGHT + 600
    asys.tell(addr, RecordObservation(observation_id="o1", night="2026-11-24", field_name="HD 189733",
                                      ra_deg=300.18, dec_deg=22.71, priority=200.0, exptime=120.0, min_nexp=60,
                                      exp_set_size=10, decision_id="d1", start_unix=t))
    for cam in ("cam00", "cam01"):
        for i in range(2):
            exp = RecordExposure(exposure_id=f"o1-{i}-{cam}", observation_id="o1", camera=cam,
                                 image_type="science", path=f"{tmp_path}/images/{cam}/{i}.fits",
                                 start_unix=t + 130 * i, end_unix=t + 130 * i + 120, exptime=120.0,
                                 ra_deg=300.18, dec_deg=22.71, set_index=0, frame_index=i)
            asys.tell(addr, exp)
            asys.tell(addr, exp)                                  # re-sent: must not duplicate
    asys.tell(addr, RecordMetrics(exposure_id="o1-0-cam00", metrics={"n_stars": 42, "fwhm_px": float("nan"),
                                                                    "background": 2500.0}, drift_px=(0.5, -0.25, 30)))
    asys.tell(addr, RecordEvent(kind="state", source="unit", message="ready -> scheduling", time_unix=t,
                                wall_unix=time.time(), data={"n": 1}))
    asys.tell(addr, RecordDecision(decision_id="d1", time_unix=t, winner="HD 189733", reason="best merit",
                                   decision={"candidates": []}))
    asys.tell(addr, CloseObservation(observation_id="o1", end_unix=t + 300, status="complete", exposures=2))

    deadline = time.time() + 5
    while time.time() < deadline:
        if query(db, "SELECT status FROM observations") == [("complete",)] and \
                query(db, "SELECT COUNT(*) FROM decisions") == [(1,)] and \
                query(db, "SELECT COUNT(*) FROM events") == [(1,)] and \
                query(db, "SELECT n_stars FROM exposures WHERE id='o1-0-cam00'") == [(42,)]:
            break
        time.sleep(0.05)
    assert query(db, "SELECT id, field, status, exposures FROM observations") == [("o1", "HD 189733", "complete", 2)]
    assert query(db, "SELECT COUNT(*) FROM exposures") == [(4,)]
    assert query(db, "SELECT n_stars, fwhm_px, background, drift_x_px, drift_y_px FROM exposures"
                     " WHERE id='o1-0-cam00'") == [(42, None, 2500.0, 0.5, -0.25)]
    assert query(db, "SELECT kind, message, data FROM events") == [("state", "ready -> scheduling", '{"n": 1}')]
    assert query(db, "SELECT id, winner FROM decisions") == [("d1", "HD 189733")]

    request = WriteNightSummary(night="2026-11-24", start_unix=NIGHT, end_unix=NIGHT + 36000,
                                stats={"dark_seconds": 30000.0, "safe_seconds": 2400.0, "restarts": {},
                                       "unsafe_periods": 0})
    reply = ask(asys, addr, request, timeout=10.0)
    assert isinstance(reply, NightSummaryWritten), reply
    summary_path = tmp_path / "reports" / "2026-11-24" / "summary.json"
    assert reply.path == str(summary_path) and summary_path.is_file()
    assert json.loads(summary_path.read_text()) == reply.summary
    s = reply.summary
    assert s["night"] == "2026-11-24"
    assert s["exposures_per_camera"] == {"cam00": {"science": 2, "pointing": 0, "open_shutter_s": 240.0},
                                         "cam01": {"science": 2, "pointing": 0, "open_shutter_s": 240.0}}
    assert s["open_shutter_seconds"] == 240.0 and s["open_shutter_fraction"] == pytest.approx(0.1)
    assert s["targets"] == [{"field": "HD 189733", "exposures": 2, "status": "complete"}]
    assert s["events"] == {"state": 1}
    assert not list(summary_path.parent.glob("*.tmp"))

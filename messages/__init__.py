"""Every message that crosses between actors, and nothing else.

Messages are frozen dataclasses of plain values (floats, strings, ISO times,
small dicts and tuples), so any process can import and unpickle them without
pulling in astropy or a driver. Images travel as file paths.

Each request carries a ``request_id``; the reply echoes it, so a late reply to
an earlier question (from an actor that has since been replaced, for example)
can be recognised and dropped. ``epoch`` counts the incarnations of a device
actor: the supervisor bumps it at every restart.

The catalogue, with who sends what to whom, is in docs/messages.md.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Message:
    request_id: str = field(default_factory=new_request_id, kw_only=True)


# --- lifecycle: supervisor <-> every child actor ---------------------------

@dataclass(frozen=True)
class Initialize(Message):
    """First message to a new (or replacement) child: who it is and what it owns."""
    name: str
    role: str
    settings: dict
    clock: dict
    pandir: str
    site: dict
    epoch: int = 0
    peers: dict = field(default_factory=dict)   # role name -> ActorAddress


@dataclass(frozen=True)
class Initialized(Message):
    name: str
    pid: int
    epoch: int
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class InitializationFailed(Message):
    name: str
    pid: int
    epoch: int
    error: str


@dataclass(frozen=True)
class CommandFailed(Message):
    """Reply to any request that could not be carried out."""
    source: str
    command: str
    error: str


@dataclass(frozen=True)
class GetStatus(Message):
    pass


@dataclass(frozen=True)
class Heartbeat(Message):
    """Are you alive and answering? Sent by the supervisor every few wall seconds."""
    pass


@dataclass(frozen=True)
class HeartbeatReply(Message):
    name: str
    pid: int
    epoch: int


@dataclass(frozen=True)
class DeviceStatus(Message):
    name: str
    pid: int
    epoch: int
    status: dict


# --- mount -----------------------------------------------------------------

@dataclass(frozen=True)
class SlewTo(Message):
    ra_deg: float
    dec_deg: float


@dataclass(frozen=True)
class Park(Message):
    pass


@dataclass(frozen=True)
class Unpark(Message):
    pass


@dataclass(frozen=True)
class StopMount(Message):
    pass


@dataclass(frozen=True)
class SetTracking(Message):
    on: bool


@dataclass(frozen=True)
class GuidePulse(Message):
    ra_ms: float
    dec_ms: float


@dataclass(frozen=True)
class MountMoving(Message):
    """The mount accepted a slew or park and expects to arrive in ``expected_s`` (simulated)."""
    name: str
    action: str          # 'slew' | 'park'
    expected_s: float


@dataclass(frozen=True)
class MountArrived(Message):
    """Sent when a slew or park started by ``request_id`` has finished."""
    name: str
    action: str
    status: dict


# --- dome, focusers, filter wheel ------------------------------------------

@dataclass(frozen=True)
class OpenDome(Message):
    pass


@dataclass(frozen=True)
class CloseDome(Message):
    pass


@dataclass(frozen=True)
class MoveFocuser(Message):
    position: int        # absolute, in focuser steps


@dataclass(frozen=True)
class SetFilter(Message):
    filter: str          # a filter name, or a slot number (from 1) as text


@dataclass(frozen=True)
class DeviceMoved(Message):
    """Reply to OpenDome, CloseDome, MoveFocuser or SetFilter once the device
    has stopped: ``ok`` says whether it reached what was asked."""
    name: str
    action: str          # 'open' | 'close' | 'focus' | 'filter'
    ok: bool
    status: dict
    error: str = ""


# --- cameras ---------------------------------------------------------------

@dataclass(frozen=True)
class StartExposure(Message):
    exposure_id: str
    exptime: float
    path: str
    image_type: str          # 'science' | 'pointing' | 'dark' | 'flat' | 'bias'
    ra_deg: float            # where the mount says it points, for the header
    dec_deg: float
    header: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ExposureStarted(Message):
    camera: str
    exposure_id: str
    start_unix: float


@dataclass(frozen=True)
class ExposureComplete(Message):
    camera: str
    exposure_id: str
    path: str
    image_type: str
    start_unix: float
    end_unix: float
    exptime: float


@dataclass(frozen=True)
class ExposureFailed(Message):
    camera: str
    exposure_id: str
    error: str


@dataclass(frozen=True)
class AbortExposure(Message):
    pass


@dataclass(frozen=True)
class ExposureAborted(Message):
    camera: str
    exposure_id: str


# --- weather and safety ----------------------------------------------------

@dataclass(frozen=True)
class ReadWeather(Message):
    pass


@dataclass(frozen=True)
class WeatherReading(Message):
    name: str
    reading: dict            # includes its own 'timestamp' (Unix seconds)


@dataclass(frozen=True)
class SafetyVerdict(Message):
    safe: bool
    reasons: tuple
    time_unix: float
    sun_alt_deg: float
    weather_safe: bool
    changed: bool = False
    ambient_temp_c: float | None = None    # from the last fresh weather reading: headers (AMBTEMP), refocus


# --- scheduler -------------------------------------------------------------

@dataclass(frozen=True)
class RequestSchedule(Message):
    time_unix: float
    current: str | None = None
    exposures_done: dict = field(default_factory=dict)
    requested: str | None = None     # a field the operator asked for: chosen unless vetoed


@dataclass(frozen=True)
class ScheduleDecision(Message):
    decision_id: str
    winner: str | None
    reason: str
    observation: dict | None     # the winner's parameters (name, ra_deg, dec_deg, exptime, ...)
    decision: dict               # full explanation: candidates, merits, vetoes


@dataclass(frozen=True)
class CheckObservation(Message):
    """Is this field still observable (no veto) at time_unix? Asked just before slewing."""
    name: str
    time_unix: float
    exposures_done: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ObservationChecked(Message):
    name: str
    ok: bool
    vetoes: tuple = ()


# --- analysis --------------------------------------------------------------

@dataclass(frozen=True)
class AnalyzeFrame(Message):
    exposure_id: str
    camera: str
    path: str
    reference_sources: tuple = ()     # (x, y, flux) of the pointing frame, for drift
    urgent: bool = False              # the sequence waits for it (pointing): goes before the queue
    solve: str = ""                   # plate solve: "" no, "fast" (fast solver only), "full" (then solve-field)


@dataclass(frozen=True)
class FrameAnalyzed(Message):
    exposure_id: str
    camera: str
    path: str
    metrics: dict
    sources: tuple = ()
    drift_px: tuple | None = None     # (dx, dy, n_matched) against the reference
    solution: dict | None = None      # observatory.solver.Solution.to_dict() when solved (WCS written to the file)


# --- archive (the single writer of the SQLite store) -----------------------

@dataclass(frozen=True)
class RecordEvent(Message):
    kind: str
    source: str
    message: str
    time_unix: float
    wall_unix: float
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RecordObservation(Message):
    observation_id: str
    night: str
    field_name: str
    ra_deg: float
    dec_deg: float
    priority: float
    exptime: float
    min_nexp: int
    exp_set_size: int
    decision_id: str
    start_unix: float


@dataclass(frozen=True)
class CloseObservation(Message):
    observation_id: str
    end_unix: float
    status: str
    exposures: int


@dataclass(frozen=True)
class RecordExposure(Message):
    exposure_id: str
    observation_id: str | None
    camera: str
    image_type: str
    path: str
    start_unix: float
    end_unix: float
    exptime: float
    ra_deg: float
    dec_deg: float
    set_index: int
    frame_index: int


@dataclass(frozen=True)
class RecordMetrics(Message):
    exposure_id: str
    metrics: dict
    drift_px: tuple | None = None


@dataclass(frozen=True)
class RecordDecision(Message):
    decision_id: str
    time_unix: float
    winner: str | None
    reason: str
    decision: dict


@dataclass(frozen=True)
class WriteNightSummary(Message):
    night: str
    start_unix: float
    end_unix: float
    stats: dict              # figures only the supervisor knows: dark/safe seconds, restarts


@dataclass(frozen=True)
class NightSummaryWritten(Message):
    night: str
    path: str
    summary: dict


# --- the unit: run_unit.py / console <-> supervisor ------------------------

@dataclass(frozen=True)
class StartUnit(Message):
    config: dict
    clock: dict
    pandir: str
    nights: int | None = None
    owner_pid: int | None = None     # run_unit.py: when it dies, the unit parks and ends itself


@dataclass(frozen=True)
class UnitStarted(Message):
    pid: int


@dataclass(frozen=True)
class UnitStateChanged(Message):
    state: str
    previous: str
    time_unix: float
    target: str | None
    note: str = ""


@dataclass(frozen=True)
class NightComplete(Message):
    night: str
    summary_path: str
    summary: dict
    nights_done: int


@dataclass(frozen=True)
class StopUnit(Message):
    reason: str = "operator request"


@dataclass(frozen=True)
class UnitStopped(Message):
    parked: bool
    note: str = ""


@dataclass(frozen=True)
class GetUnitStatus(Message):
    pass


@dataclass(frozen=True)
class UnitStatus(Message):
    status: dict


@dataclass(frozen=True)
class UnitFailed(Message):
    """The supervisor gave up (restart budget spent on a vital device, ...)."""
    error: str


# --- operator commands: run_unit.py (for the console and the gateway) -> supervisor
# Each is answered with ControlReply (same request_id). Validation of what an
# operator typed happens before a message is built (observatory/control.py);
# the supervisor still refuses what the unit's state does not allow.

@dataclass(frozen=True)
class ParkUnit(Message):
    """Park (and close) now and stay parked until UnparkUnit."""
    reason: str = "operator"


@dataclass(frozen=True)
class UnparkUnit(Message):
    """Lift an operator park: automatic observing resumes when it is safe and dark."""


@dataclass(frozen=True)
class PauseUnit(Message):
    """Let the exposures under way finish, then start no new ones (keep tracking) until ResumeUnit."""


@dataclass(frozen=True)
class ResumeUnit(Message):
    pass


@dataclass(frozen=True)
class ObserveField(Message):
    """Observe this field (a name from the fields file) next, whatever the scheduler would choose."""
    name: str


@dataclass(frozen=True)
class TakePicture(Message):
    """One exposure now at the current pointing (all cameras, or ``camera``)."""
    exptime: float
    camera: str | None = None


@dataclass(frozen=True)
class SetConfigValue(Message):
    """Apply an already validated configuration change live. ``key`` is dotted (``safety.max_wind``)."""
    key: str
    value: Any


@dataclass(frozen=True)
class InjectFault(Message):
    """Simulation mode only: make ``target`` (an actor or simulator name) misbehave.
    ``kind``: raise, exit, hang, kill, timeout, garbage, disconnect, slow, disk_full, unsafe, ..."""
    target: str
    kind: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ControlReply(Message):
    ok: bool
    result: dict = field(default_factory=dict)
    error: str = ""


# --- safety kernel: its audit trail (safety -> archive) ---------------------
# The kernel itself commands park and close with the mount's and dome's own
# messages (Park, CloseDome) and reads their replies (MountMoving,
# MountArrived, DeviceMoved, CommandFailed); it reads device health with
# GetStatus / DeviceStatus. Only its record for the archive is new.

@dataclass(frozen=True)
class RecordSafetyAudit(Message):
    """One row of the ``safety_audit`` table. ``kind``: 'verdict' (the verdict or
    its set of conditions changed), 'command' (the kernel sent park or close),
    'confirmed' (the device reported it done), 'failed' (it reported a failure,
    an interruption, or did not confirm in time). ``audit_id`` makes a re-sent
    record (after an archive restart) harmless."""
    audit_id: str
    kind: str
    time_unix: float
    wall_unix: float
    safe: bool
    reasons: tuple = ()
    inputs: dict = field(default_factory=dict)      # weather reading and its age, sun, disk, power, devices
    changed: dict = field(default_factory=dict)     # conditions added, cleared, clearing, unsafe again
    device: str = ""                                # commands: 'mount' | 'dome'
    action: str = ""                                # commands: 'park' | 'close'
    message: str = ""


# --- timer payloads (the actor's own wakeups; never sent between actors) ---

@dataclass(frozen=True)
class Tick:
    kind: str
    token: Any = None


@dataclass(frozen=True)
class PeersChanged(Message):
    """A peer an actor talks to directly was replaced (e.g. safety's weather station)."""
    peers: dict

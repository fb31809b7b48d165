"""The supervisor (globalName "unit"): runs the observing sequence from the
state table, owns every other actor, and restarts the ones that die.

Everything here is event driven: a state's entry starts work (a slew, a set
of exposures), the replies move the sequence on, and a periodic tick watches
the clock (waiting for dark, deadlines, accounting, status.json). No handler
ever waits for a device.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from thespian.actors import ActorSystemConventionUpdate, ChildActorExited, DeadEnvelope, PoisonMessage

from actors.accessories import DomeActor, FilterWheelActor, FocuserActor
from actors.analysis import AnalysisActor
from actors.archive import ArchiveActor
from actors.base import UnitActor
from actors.camera import CameraActor
from actors.mount import MountActor
from actors.safety import SafetyActor
from actors.scheduler import SchedulerActor
from actors.weather import WeatherActor
from messages import (AbortExposure, AnalyzeFrame, CheckObservation, CloseDome, CloseObservation, CommandFailed,
                      ControlReply, DeviceMoved, DeviceStatus, InjectFault, MoveFocuser, ObserveField, OpenDome,
                      ParkUnit, PauseUnit, ResumeUnit, SetConfigValue, SetFilter, TakePicture, UnparkUnit,
                      ExposureAborted, ExposureComplete, ExposureFailed, ExposureStarted, FrameAnalyzed,
                      GetStatus, GetUnitStatus, GuidePulse, Heartbeat, HeartbeatReply, Initialize, InitializationFailed, Initialized,
                      Message, MountArrived, MountMoving, NightComplete, NightSummaryWritten, ObservationChecked, Park,
                      PeersChanged, RecordDecision, RecordEvent, RecordExposure, RecordMetrics,
                      RecordObservation, RecordSafetyAudit, RequestSchedule, SafetyVerdict, ScheduleDecision, SetTracking,
                      SlewTo, StartExposure, StartUnit, StopUnit, Tick, UnitFailed, UnitStarted,
                      UnitStateChanged, UnitStatus, UnitStopped, WriteNightSummary, new_request_id)
from observatory import headers
from observatory.astro import Ephemeris, Site, lst_deg
from observatory.clock import SimClock, iso
from observatory.statetable import load_state_table

# Devices without which the unit cannot observe at all.
# Deadlines are simulated time, but computing (scheduling, measuring, solving,
# rendering a simulated frame) takes wall time at any speed: at x600 on a small
# or busy computer, minutes of simulated time are a fraction of a wall second.
COMPUTE_WALL_S = 30.0
EXPOSURE_WALL_S = 10.0

# States that observe the night sky: only between dark start and dark end.
DARK_STATES = ("scheduling", "slewing", "pointing", "tracking", "focusing", "observing", "analyzing")
VITAL_ROLES = ("mount", "dome", "safety", "weather", "scheduler", "archive", "analysis")
ACCESSORY_ROLES = ("dome", "focuser", "filterwheel")
EMPTY_ROUNDS_BEFORE_PARKING = 3
# A night state that waits for nothing (no deadline, no exposure, no flip, no
# focus run, no operator hold) is stuck; after this long, simulated and wall,
# the unit parks and retries rather than lose the rest of the night.
STUCK_SIM_S = 600.0
STUCK_WALL_S = 30.0
SIDEREAL_DEG_PER_S = 360.0 / 86164.0905
ARCHIVE_MESSAGES = (RecordEvent, RecordObservation, CloseObservation, RecordExposure, RecordMetrics,
                    RecordDecision, RecordSafetyAudit, WriteNightSummary)


@dataclass
class Child:
    name: str
    role: str
    actor_class: type
    settings: dict
    address: object = None
    pid: int | None = None
    epoch: int = 0
    ready: bool = False
    failed: bool = False
    init_request: str | None = None
    init_sent_wall: float = 0.0
    policy: object = None                               # observatory.supervision.RestartPolicy
    host: str | None = None                             # a member host (multi-host units), None: this one
    lost: bool = False                                  # its host is gone: waiting for it to come back
    last_exit: str = ""                                 # why it was last restarted (for the record)
    last_heartbeat_reply: float = 0.0                   # wall time
    restart_count: int = 0
    driver_exec: str | None = None                      # an INDI device's driver executable, as it reports it


@dataclass
class Observation:
    id: str
    name: str
    ra_deg: float
    dec_deg: float
    exptime: float
    min_nexp: int
    exp_set_size: int
    priority: float
    decision_id: str
    seq_id: str
    start_unix: float
    frames: int = 0                  # exposure rounds completed (science)
    frame_in_set: int = 0
    set_index: int = 0
    reference_sources: tuple = ()
    flip_due: bool = False           # slewed to while east of the meridian: a flip will be needed
    command_ra: float | None = None  # where the mount is sent: the field, corrected by plate solves
    command_dec: float | None = None
    pointing_attempts: int = 0       # pointing frames solved since the last slew from scheduling
    dither_arcsec: float = 0.0       # dither step (0: none)
    dither: tuple = (0.0, 0.0)       # (east, north) arcsec of the current set from the field
    dithered_set: int = 0            # the set the current dither is for


class Supervisor(UnitActor):
    role = "supervisor"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started = False
        self.stopping = None           # (requester, request_id) once a stop was asked for

    # ------------------------------------------------------------ start-up

    def receiveMsg_StartUnit(self, msg: StartUnit, sender):
        if self.started:
            self.send(sender, UnitStarted(pid=os.getpid(), request_id=msg.request_id))
            return
        from observatory import logs
        self.started = True
        self.owner = sender
        self.name = "unit"
        self.config = msg.config
        self.pandir = msg.pandir
        self.clock = SimClock.from_dict(msg.clock)
        self.log = logs.configure(self.pandir, "unit")
        self.nights_limit = msg.nights
        self.owner_pid = msg.owner_pid
        try:
            self.owner_pgid = os.getpgid(msg.owner_pid) if msg.owner_pid else None
        except ProcessLookupError:
            self.owner_pgid = None
        self.orphaned_since = None
        self.last_owner_check = 0.0
        loc = self.config["location"]
        self.site = {"name": loc["name"], "latitude": loc["latitude"], "longitude": loc["longitude"],
                     "elevation": loc["elevation"], "observe_horizon": loc["observe_horizon"],
                     "min_altitude": loc["min_altitude"]}
        self.table = load_state_table(self.config["states"])
        self.ephemeris = Ephemeris(Site(loc["name"], loc["latitude"], loc["longitude"], loc["elevation"]))
        self.horizon = loc["observe_horizon"]
        self.handleDeadLetters(startHandling=True)

        self.state = "starting"
        self.state_since = self.clock.now()
        self.expect: dict[str, str] = {}          # request id -> what the reply is for
        self.deadline: tuple[float, str] | None = None
        self.verdict: SafetyVerdict | None = None
        self.last_unsafe_sim = -math.inf
        self.mount_status: dict = {}
        self.accessory_status: dict[str, dict] = {}      # dome, focusers, filter wheel: last reported
        self.awaiting_dome = False     # on target, waiting for the shutter to open
        self.empty_rounds = 0          # consecutive exposure rounds without a single frame
        self.hold: str | None = None   # operator: 'park' (stay parked) or 'pause' (no new exposures)
        self.requested_field: str | None = None    # operator: observe this next
        self.pictures: dict[str, str] = {}          # exposure id -> camera, for operator pictures
        self.relayed: dict[str, tuple] = {}         # forwarded request id -> (operator message, requester)
        self.observation: Observation | None = None
        self.exposures_done: dict[str, int] = {}
        self.round: dict[str, str] = {}            # camera -> exposure id still pending this round
        self.round_frames: list[ExposureComplete] = []
        self.round_index = 0
        self.in_flight_analysis: dict[str, AnalyzeFrame] = {}
        self.last_analysis_wall = 0.0              # when the last figures came back
        self.last_drift = None
        self.flip_at = None            # simulated time of a planned meridian flip
        self.last_decision = None
        self.retry_at = -math.inf
        self.parked_for = ""          # the note of the last move to parking, for the move out of parked
        from observatory.supervision import StuckWatch
        self.stuck_watch = StuckWatch(STUCK_SIM_S, STUCK_WALL_S)
        self.archive_backlog: list[Message] = []
        self.archive_unacked: deque = deque()        # (wall time sent, record) not yet proven written
        self.heartbeats_sent: dict[str, float] = {}  # heartbeat request id -> wall time sent (archive only)
        self.nights_done = 0
        self.last_status_write = 0.0
        self.failure = None
        self.give_up = None            # set when a vital device is lost: park, then fail
        self.ambient_temp: float | None = None    # degrees C, from the safety kernel's weather readings
        self.journal = None
        self.journal_failing = False
        self.resume: dict | None = None
        self.in_flight_exposures: dict[str, dict] = {}   # exposure id -> what was journaled when it started
        self.focus_runs: dict[str, dict] = {}     # focuser -> {"af": Autofocus, "camera", "position"} while focusing
        self.focus_frames: dict[str, str] = {}    # focus exposure id -> focuser
        self.focus_state: dict[str, dict] = {}    # focuser -> {"night", "fwhm", "history"}: the last focus
        self.star_counts: dict[str, deque] = {}    # camera -> star counts of its recent clear frames
        self.flat_frames: dict[str, str] = {}      # flat exposure id -> camera, until its level is measured
        self.flat_levels: dict[str, float | None] = {}   # camera -> this round's flat level
        self.flat_round: dict | None = None        # the flat round under way: exptime, start, trend
        self.flat_wait_until: float | None = None  # sky out of range: the next flat round then
        self._new_night(self.clock.now())
        self._open_journal()

        self.children: dict[str, Child] = {}
        c = self.config
        # Every actor is forked from here and would inherit the garbage of start-up
        # (astropy's first time conversions leave tens of MB of reference cycles),
        # each freeing it at some random later moment: free it once, before the forks.
        import gc
        gc.collect()
        specs = [("archive", "archive", ArchiveActor, {"retention": c.get("retention")}),
                 ("weather", "weather", WeatherActor,
                  dict(c["weather"], timeline_start_unix=self.clock.start_unix)),
                 ("safety", "safety", SafetyActor,
                  dict(c["safety"], weather_timeline=c["weather"]["timeline"],
                       timeline_start_unix=self.clock.start_unix, sun_horizon=self.sun_limit())),
                 ("scheduler", "scheduler", SchedulerActor, c["scheduler"]),
                 ("analysis", "analysis", AnalysisActor, {"solve_timeout": c["observing"]["solve_timeout"],
                                                          "compress": c["images"]["compress"]}),
                 ("mount", "mount", MountActor, c["mount"])]
        specs += [(cam["name"], "camera", CameraActor, cam) for cam in c["cameras"]]
        if c.get("dome"):
            specs.append(("dome", "dome", DomeActor, c["dome"]))
        specs += [(f["name"], "focuser", FocuserActor, f) for f in c.get("focusers", [])]
        if c.get("filterwheel"):
            specs.append(("filterwheel", "filterwheel", FilterWheelActor, c["filterwheel"]))
        from observatory.supervision import RestartPolicy, child_specs
        child_spec = child_specs([(name, role) for name, role, _, _ in specs], c["supervision"], VITAL_ROLES)
        for name, role, cls, settings in specs:
            self.children[name] = Child(name, role, cls, settings, policy=RestartPolicy(child_spec[name]),
                                        host=settings.get("host"))
        self.hosts_up: set[str] = set()
        if any(child.host for child in self.children.values()):
            # Member hosts join and leave the convention: Thespian tells us (late; heartbeats first).
            self.notifyOnSystemRegistrationChanges(True)
        for child in self.children.values():
            self._spawn(child)
        self.send(sender, UnitStarted(pid=os.getpid(), request_id=msg.request_id))
        self.event("unit", f"unit starting at simulated {iso(self.clock.now())}, speed {self.clock.speed}",
                   pid=os.getpid(), config=self.config["config_file"])
        self.wake_in_wall(0.01, "tick")

    # The safety actor talks to these directly: it reads the weather, commands
    # park and close itself when unsafe, and records its audit trail.
    SAFETY_PEERS = ("weather", "mount", "dome", "archive")

    # ------------------------------------------------------------ the journal and resuming

    def _open_journal(self) -> None:
        """Read what the last run left in the journal, settle it, and start writing."""
        from observatory import journal
        path = Path(self.pandir) / "run" / "journal.jsonl"
        found = journal.replay(path)
        self.journal = journal.Journal(path)
        self.round_index = found.last_round_index
        for part in (Path(self.pandir) / "images").rglob(".*.part"):
            part.unlink(missing_ok=True)         # a frame being written when the unit died: never a frame
            self.event("resume", f"removed the half-written {part.name}", path=str(part))
        for exposure in found.in_flight.values():
            self._settle_exposure_from_journal(exposure)
        ob = found.observation
        if ob and found.night == self.night_date and ob.get("night") == self.night_date:
            self.resume = ob
            self.exposures_done = dict(found.exposures_done)
            self.event("resume", f"{ob['field']}: interrupted at frame {ob['frames']} by a restart; "
                                 "resuming it when observing starts", field=ob["field"], observation_id=ob["id"])
        elif ob:
            self.to_archive(CloseObservation(observation_id=ob["id"], end_unix=found.last_time_unix or self.clock.now(),
                                             status="interrupted", exposures=ob["frames"]))
            self.event("resume", f"{ob['field']}: interrupted by a restart, and its night is over", field=ob["field"])
        self.journal.restart(journal.JournalState(night=self.night_date, observation=self.resume,
                                                  exposures_done=dict(self.exposures_done),
                                                  last_round_index=self.round_index), self.clock.now())

    @staticmethod
    def _remove_partial_files(path: Path) -> None:
        for part in path.parent.glob(f".{path.name}.*.part"):
            part.unlink(missing_ok=True)

    def _settle_exposure_from_journal(self, e: dict, why: str = "before the restart") -> None:
        """An exposure under way when the unit died: its file exists (complete: files
        are written atomically) and gets its record, or it never came and is lost."""
        path = Path(e["path"])
        if path.exists():
            end = e["start_unix"] + e["exptime"]
            self.to_archive(RecordExposure(
                exposure_id=e["exposure_id"], observation_id=e.get("observation_id"), camera=e["camera"],
                image_type=e["image_type"], path=str(path), start_unix=e["start_unix"], end_unix=end,
                exptime=e["exptime"], ra_deg=e.get("ra_deg"), dec_deg=e.get("dec_deg"),
                set_index=e.get("set_index", 0), frame_index=e.get("frame_index", 0)))
            self.event("resume" if why == "before the restart" else "exposure",
                       f"{e['camera']}: frame {path.name} was written {why}; recorded",
                       exposure_id=e["exposure_id"], path=str(path))
        else:
            self.event("resume", f"{e['camera']}: exposure {e['exposure_id']} was lost in the restart (no file)",
                       exposure_id=e["exposure_id"])

    def _journal(self, kind: str, **data) -> None:
        if kind == "exposure_done":
            self.in_flight_exposures.pop(data["exposure_id"], None)
        if self.journal is None:
            return
        try:
            self.journal.write(kind, self.clock.now(), **data)
        except OSError as e:
            # A full disk: the unit goes on (frames cannot be written either), but
            # says once that a crash now would not be resumed exactly.
            if not self.journal_failing:
                self.journal_failing = True
                self.event("error", f"the night journal cannot be written ({e}): a restart now would not "
                                    "resume exactly", error=str(e))
            return
        if self.journal_failing:
            self.journal_failing = False
            self.event("journal", "the night journal is written again")

    def _resume_observation(self) -> bool:
        r, self.resume = self.resume, None
        if r is None:
            return False
        self.observation = Observation(
            id=r["id"], name=r["field"], ra_deg=r["ra_deg"], dec_deg=r["dec_deg"], exptime=r["exptime"],
            min_nexp=r["min_nexp"], exp_set_size=r["exp_set_size"], priority=r["priority"],
            decision_id=r.get("decision_id"), seq_id=r["seq_id"], start_unix=r["start_unix"], frames=r["frames"],
            frame_in_set=r["frame_in_set"], set_index=r["set_index"], command_ra=r.get("command_ra"),
            command_dec=r.get("command_dec"))
        self.event("resume", f"resuming {r['field']} at frame {r['frames']} (set {r['set_index'] + 1})",
                   field=r["field"], observation_id=r["id"], frames=r["frames"])
        self.goto("slewing", "resuming an interrupted observation")
        return True

    def _peers_for(self, child: Child) -> dict:
        if child.role == "safety":
            return {name: self.children[name].address for name in self.SAFETY_PEERS
                    if name in self.children and self.children[name].address}
        return {}

    def _spawn(self, child: Child) -> None:
        if child.host and child.host not in self.hosts_up:
            child.address, child.ready, child.lost = None, False, True
            self.event("host", f"{child.name} waits for its host {child.host}", child=child.name, host=child.host)
            return
        from observatory.hosts import host_requirements
        child.lost = False
        child.address = self.createActor(child.actor_class, targetActorRequirements=host_requirements(child.host))
        child.ready, child.pid = False, None
        child.epoch += 1
        init = Initialize(name=child.name, role=child.role, settings=child.settings, clock=self.clock.to_dict(),
                          pandir=self.pandir, site=self.site, epoch=child.epoch, peers=self._peers_for(child))
        child.init_request, child.init_sent_wall = init.request_id, time.time()
        self.send(child.address, init)

    def receiveMsg_Initialized(self, msg: Initialized, sender):
        child = self.children.get(msg.name)
        if not child or msg.request_id != child.init_request:
            return
        child.ready, child.pid = True, msg.pid
        child.last_heartbeat_reply = time.time()
        connected = msg.info.get("connect")
        if isinstance(connected, dict) and connected.get("driver_exec"):
            child.driver_exec = str(connected["driver_exec"])
        self.log.info("child_ready", child=child.name, child_pid=msg.pid, epoch=msg.epoch)
        if child.role == "mount":
            self.mount_status = msg.info.get("status", {})
        if child.role in ACCESSORY_ROLES:
            self.accessory_status[child.name] = msg.info.get("status", {})
            self._set_up_accessory(child)
        if child.epoch > 1:
            self.event("restart", f"{child.name} restarted (pid {msg.pid}, incarnation {child.epoch}) after: "
                                  f"{child.last_exit}", child=child.name, pid=msg.pid, epoch=child.epoch,
                       restarts=child.restart_count)
            self._resume_after_restart(child)
        if child.name in self.SAFETY_PEERS and self.children["safety"].address:
            self.send(self.children["safety"].address, PeersChanged(peers={child.name: child.address}))
        if child.role == "archive":
            self._resend_to_archive(child.address)
        if self.state == "starting" and all(c.ready or c.lost for c in self.children.values()):
            self.event("unit", "all actors ready", pids={c.name: c.pid for c in self.children.values()})
            self.goto(self.table.initial, "start-up complete")
        self.write_status(force=True)

    def receiveMsg_InitializationFailed(self, msg: InitializationFailed, sender):
        child = self.children.get(msg.name)
        if not child or msg.request_id != child.init_request:
            return
        self.event("error", f"{child.name} failed to initialise: {msg.error}", child=child.name)
        if self.state == "starting":
            # A broken configuration or device at start-up: nothing to retry against.
            self._fail(f"{child.name} failed to initialise: {msg.error}")
        else:
            self.send(child.address, _exit_request())
            self._restart(child, f"initialisation failed: {msg.error}")

    # ------------------------------------------------------------ supervision

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender):
        child = next((c for c in self.children.values() if c.address == msg.childAddress), None)
        if child is None or self.stopping or self.failure:
            return
        self.event("error", f"{child.name} actor died (pid {child.pid})", child=child.name, pid=child.pid)
        self._restart(child, "process exited")

    def _restart(self, child: Child, why: str) -> None:
        child.ready = False
        decision = child.policy.on_exit(time.time(), abnormal=True)
        if decision.action == "restart" and decision.delay_s == 0:
            # The replacement is on its way before the dead one's work is settled
            # (settling can start the next round, which takes time).
            child.restart_count += 1
            child.last_exit = f"{why}; {decision.reason}"
            self.night_restarts[child.name] = self.night_restarts.get(child.name, 0) + 1
            self._spawn(child)
            self._forget_work_of(child)
            return
        self._forget_work_of(child)
        if decision.action == "give_up":
            child.failed = True
            budget = decision.reason.removeprefix("restart budget spent (").removesuffix(")")
            if self.can_observe():
                left = len([c for c in self.children.values() if c.role == "camera" and not c.failed])
                self.event("error", f"{child.name}: {decision.reason}; device marked failed, "
                                    f"carrying on with {left} camera(s)", child=child.name, reason=why)
            else:
                error = f"{child.name} failed: restart budget spent ({budget}); last cause: {why}"
                self.event("error", error + "; parking and giving up", child=child.name)
                self.give_up = error
                if child.role == "mount":
                    self._fail(error + "; the mount could NOT be parked")
                elif self.state in ("parked", "sleeping", "housekeeping"):
                    self._fail(error)
                elif self.state != "parking":
                    self.goto("parking", f"{child.name} failed")
            self.write_status(force=True)
            return
        child.restart_count += 1
        child.last_exit = f"{why}; {decision.reason}"
        self.night_restarts[child.name] = self.night_restarts.get(child.name, 0) + 1
        if decision.delay_s > 0:
            self.event("restart", f"{child.name}: restarting in {decision.delay_s:g} s ({decision.reason}; "
                                  f"cause: {why})", child=child.name, delay_s=decision.delay_s)
            child.address = None
            self.wake_in_wall(decision.delay_s, "respawn", (child.name, child.restart_count))
        else:
            self._spawn(child)

    def _forget_work_of(self, child: Child) -> None:
        """A dead actor will not answer: settle what we were waiting for from it."""
        if child.role == "analysis":
            for m in self.in_flight_analysis.values():
                self._remove_partial_files(Path(m.path))    # a WCS update cut short; the frame itself is whole
        if child.role in ACCESSORY_ROLES:
            ours = {"dome": ("dome-open", "dome-close"), "focuser": ("focus", "focus-run", "focus-final"),
                    "filterwheel": ("filter",)}
            self.expect = {k: v for k, v in self.expect.items() if v not in ours[child.role]}
            run = self.focus_runs.get(child.name)
            if run is not None and not run.get("final"):
                run["af"].abort(f"{child.name} restarted")
                self._focus_finished(child.name)
            self._focusing_done()
        if child.role == "camera":
            # An exposure under way died with the actor, unless its file was complete
            # (files are renamed into place whole): then it is recorded like any frame.
            for exposure_id, e in list(self.in_flight_exposures.items()):
                if e["camera"] != child.name:
                    continue
                self._remove_partial_files(Path(e["path"]))
                if Path(e["path"]).exists():
                    self._settle_exposure_from_journal(e, why="before its actor died")
                else:
                    self.event("exposure", f"{child.name}: exposure {exposure_id} lost with the actor",
                               camera=child.name, exposure_id=exposure_id)
                self._journal("exposure_done", exposure_id=exposure_id, outcome="lost with the actor")
            if child.name in self.round:
                self.round.pop(child.name)
                self._round_progress()

    def _resume_after_restart(self, child: Child) -> None:
        """Re-initialised: read its state back and redo the step it was part of."""
        addr = child.address
        if child.role == "mount":
            if self.state == "slewing" and self.observation:
                self._slew()
            elif self.state == "parking":
                self._mount_command(Park(), "park")
            elif self.state == "calibrating" and not self.round and "slew" not in self.expect.values():
                self._flats_slew()
            elif self.state == "tracking" and not self.round and self.hold != "pause":
                # Tracking was entered (or confirmation asked of the dead actor)
                # while the mount was away: its fresh status decides again.
                self.expect = {k: v for k, v in self.expect.items() if v not in ("tracking", "guide")}
                self._enter_tracking()
            else:
                self._ask(addr, GetStatus(), "mount-status")
        elif child.role == "scheduler" and self.state == "scheduling":
            self._request_schedule()
        elif child.role == "analysis":
            for m in self.in_flight_analysis.values():
                self.send(addr, m)

    # ------------------------------------------------------------ member hosts

    def _lose(self, child: Child, why: str) -> None:
        """A child on a member host stopped answering: carry on without it until the
        host comes back (no restart here: it would be placed on the same lost host)."""
        if child.lost:
            return
        child.ready, child.lost, child.address = False, True, None
        self._forget_work_of(child)
        self.event("host", f"{child.name} on host {child.host} lost ({why}); carrying on without it until "
                           f"the host returns", child=child.name, host=child.host)
        if child.role in VITAL_ROLES and not self.table.is_always_safe(self.state):
            self._close_dome()
            self.goto("parking", f"{child.name} lost with its host {child.host}")
        self.write_status(force=True)

    def receiveMsg_ActorSystemConventionUpdate(self, msg: ActorSystemConventionUpdate, sender):
        from observatory.hosts import convention_host
        host = convention_host(msg)
        if host is None or not hasattr(self, "children"):
            return
        ours = [c for c in self.children.values() if c.host == host]
        if msg.remoteAdded:
            self.hosts_up.add(host)
            self.event("host", f"host {host} joined", host=host)
            for child in ours:
                if (child.lost or not child.address) and not child.failed and not self.stopping:
                    self.event("host", f"restoring {child.name} on {host}", child=child.name, host=host)
                    self._spawn(child)
        else:
            self.hosts_up.discard(host)
            self.event("host", f"host {host} left the convention", host=host)
            for child in ours:
                self._lose(child, "its host left the convention")

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender):
        poisoned = msg.poisonMessage
        if isinstance(poisoned, Initialize):
            child = self.children.get(poisoned.name)
            if child and child.host:
                self.hosts_up.discard(child.host)
                self._lose(child, "it could not be placed on its host")

    def receiveMsg_DeadEnvelope(self, msg: DeadEnvelope, sender):
        dead = msg.deadMessage
        if isinstance(dead, ARCHIVE_MESSAGES):
            # Sent to an archive that died: to its successor if there is one already
            # (a record written twice is one row), else kept until there is.
            archive = self.children.get("archive")
            if archive is not None and archive.address is not None and msg.deadAddress != archive.address:
                self.to_archive(dead)
            else:
                self.archive_backlog.append(dead)
        elif isinstance(dead, AnalyzeFrame):
            pass                                  # kept in in_flight_analysis and re-sent on restart
        elif self.log:
            self.log.info("dead_letter", type=type(dead).__name__)

    def _fail(self, error: str) -> None:
        self.failure = error
        self.log.error("unit_failed", error=error)
        self.write_status(force=True)
        self.send(self.owner, UnitFailed(error=error))

    # ------------------------------------------------------------ helpers

    def event(self, kind: str, message: str, **data) -> None:
        now = self.clock.now() if self.clock else time.time()
        if self.log:
            # pid/actor/event name the writer in every log line: event data says child_pid etc.
            clash = ("message", "pid", "actor", "event", "level", "timestamp")
            self.log.info("event", kind=kind, message=message,
                          **{(f"data_{k}" if k in clash else k): v for k, v in data.items() if k != "message"})
        self.to_archive(RecordEvent(kind=kind, source="unit", message=message, time_unix=now,
                                    wall_unix=time.time(), data=data))

    def to_archive(self, msg: Message) -> None:
        archive = self.children.get("archive") if hasattr(self, "children") else None
        if archive is None or archive.address is None or not archive.ready and archive.epoch > 1:
            self.archive_backlog.append(msg)
        else:
            # Kept until a heartbeat sent after it is answered: the archive works in
            # order, so that answer proves the record written. A hung archive (killed
            # by pid, no dead letters) or a crashed one gets the rest again.
            self.archive_unacked.append((time.time(), msg))
            self.send(archive.address, msg)

    def _archive_caught_up(self, heartbeat_sent_wall: float) -> None:
        while self.archive_unacked and self.archive_unacked[0][0] < heartbeat_sent_wall:
            self.archive_unacked.popleft()

    def _resend_to_archive(self, address) -> None:
        """A new archive: everything not proven written, then what waited for it.
        Records are idempotent (keyed), so a record written twice is one row."""
        seen, pending = set(), [m for _, m in self.archive_unacked] + self.archive_backlog
        self.archive_unacked.clear()
        self.archive_backlog = []
        for m in pending:
            if m.request_id not in seen:
                seen.add(m.request_id)
                self.archive_unacked.append((time.time(), m))
                self.send(address, m)

    def _ask(self, address, msg: Message, purpose: str) -> str:
        self.expect[msg.request_id] = purpose
        self.send(address, msg)
        return msg.request_id

    def _expected(self, msg: Message, *purposes: str) -> str | None:
        purpose = self.expect.get(msg.request_id)
        if purpose is None or (purposes and purpose not in purposes):
            if self.log:
                self.log.info("stale_reply", type=type(msg).__name__, request_id=msg.request_id)
            return None
        return purpose

    def _address(self, name: str):
        child = self.children.get(name)
        return child.address if child and child.ready and not child.failed else None

    def cameras(self) -> list[Child]:
        return [c for c in self.children.values() if c.role == "camera" and c.ready and not c.failed]

    def can_observe(self) -> bool:
        vital_ok = all(not c.failed and not c.lost for c in self.children.values() if c.role in VITAL_ROLES)
        return vital_ok and any(c.role == "camera" and not c.failed and not c.lost for c in self.children.values())

    def set_deadline(self, sim_seconds: float, what: str, wall_min: float = 3.0) -> None:
        """Passed once both ``sim_seconds`` of simulated time and ``wall_min`` wall
        seconds have gone by: devices work in simulated time, but computing
        (rendering, measuring, scheduling) takes wall time at any speed."""
        self.deadline = (self.clock.now() + sim_seconds, time.time() + wall_min, what)

    # ------------------------------------------------------------ the state machine

    def goto(self, state: str, note: str = "") -> None:
        previous = self.state
        if previous != "starting" and not self.table.allowed(previous, state):
            self.log.error("transition_refused", source=previous, dest=state, note=note)
            if state != "parking" and self.table.allowed(previous, "parking"):
                state, note = "parking", f"refused {previous}->{state}; parking"
            else:
                return
        if not self.table.is_always_safe(state) and not self.is_safe():
            note = f"unsafe ({self.unsafe_reasons()}) instead of {state}"
            state = "parking"
            if previous == "parking":
                return
        if self.stopping and state not in ("parking", "parked"):
            return
        self.state, self.state_since, self.deadline = state, self.clock.now(), None
        if state == "parking":
            self.parked_for = note
        self._journal("state", state=state)
        if state != "tracking":
            self.flip_at = None
        target = self.observation.name if self.observation else None
        line = f"{previous} -> {state}" + (f" ({note})" if note else "")
        self.event("state", line, state=state, previous=previous, target=target)
        self.send(self.owner, UnitStateChanged(state=state, previous=previous, time_unix=self.state_since,
                                               target=target, note=note))
        # The frame loop changes state three times a frame; status.json follows it
        # at most twice a second (the tick writes it), every other change at once.
        self.write_status(force=state not in ("tracking", "observing", "analyzing"))
        getattr(self, f"_enter_{state}")()

    def verdict_stale(self) -> bool:
        """The safety actor speaks at least every minute (simulated) or second (wall);
        a verdict well older than both means it is hung, gone or held up: not safe.
        The age is the verdict's own (when it was evaluated), not when it arrived:
        a verdict delivered late is as stale as one never delivered."""
        if not self.verdict:
            return False
        sim_age = self.clock.now() - self.verdict.time_unix
        return sim_age > 4 * self.config["safety"]["check_interval"] + 120 and self.clock.wall_seconds(sim_age) > 5

    def is_safe(self) -> bool:
        return bool(self.verdict and self.verdict.safe and not self.verdict_stale())

    def unsafe_reasons(self) -> str:
        if not self.verdict:
            return "no safety verdict yet"
        if self.verdict_stale():
            return "no safety verdict for too long"
        return ", ".join(self.verdict.reasons) or "unsafe"

    # sleeping: daytime; leave shortly before dark
    def _enter_sleeping(self):
        self._close_dome()

    def _tick_sleeping(self, now):
        if self.failure or not self.can_observe() or self.hold == "park":
            return
        if now >= self.night_start - self.config["observing"]["wake_before_dark"] and now < self.night_end:
            self.goto("ready", "night approaching")
        elif self._flats_due(now) == "evening":
            self.goto("ready", "evening twilight: flats")

    # ready: wait for dark and safe
    def _enter_ready(self):
        pass

    def _tick_ready(self, now):
        if now >= self.night_end:
            self.goto("parking", "night over")
        elif self.hold == "park":
            self.goto("parking", "operator park")
        elif self.hold == "pause":
            return
        elif not self.can_observe():
            self.goto("parking", "a vital device has failed")
        elif not (self.is_safe() and self._held_safe(now) and now >= self.retry_at):
            return
        elif self._flats_due(now):
            self.goto("calibrating", f"{self._flats_due(now)} twilight flats")
        elif now >= self.night_start:
            # (The safety kernel's sun limit is the flats' when flats are on: dark is checked here.)
            self.goto("scheduling", "dark and safe")

    def _held_safe(self, now) -> bool:
        return now - self.last_unsafe_sim >= self.config["safety"]["reopen_after"]

    # scheduling
    def _enter_scheduling(self):
        if self._resume_observation():
            return
        self._request_schedule()

    def _request_schedule(self):
        addr = self._address("scheduler")
        if addr is None:
            return                       # resumed when the scheduler is back
        current = self.observation.name if self.observation else None
        self._ask(addr, RequestSchedule(time_unix=self.clock.now(), current=current,
                                        exposures_done=dict(self.exposures_done),
                                        requested=self.requested_field), "schedule")
        self.set_deadline(120.0, "scheduler decision", wall_min=COMPUTE_WALL_S)

    def receiveMsg_ScheduleDecision(self, msg: ScheduleDecision, sender):
        if not self._expected(msg, "schedule") or self.state != "scheduling":
            return
        del self.expect[msg.request_id]
        now = self.clock.now()
        if self.requested_field:
            asked = msg.decision.get("requested", {})
            self.event("operator", f"requested field {self.requested_field}: "
                                   + ("observing it" if asked.get("accepted") else
                                      f"refused ({', '.join(asked.get('vetoes', [])) or 'not considered'})"),
                       field=self.requested_field)
            self.requested_field = None
        self.last_decision = {"id": msg.decision_id, "time": iso(now), "winner": msg.winner, "reason": msg.reason}
        self.to_archive(RecordDecision(decision_id=msg.decision_id, time_unix=now, winner=msg.winner,
                                       reason=msg.reason, decision=msg.decision))
        if msg.winner is None:
            self._close_observation("switched")
            self.retry_at = now + self.config["observing"]["retry_after_no_target"]
            self.goto("parking", f"no target: {msg.reason}")
            return
        if self.observation and self.observation.name == msg.winner and self.mount_status.get("tracking"):
            ob = self.observation
            if ob.dither_arcsec > 0 and ob.set_index != ob.dithered_set:
                self._next_dither(ob)
                self.goto("slewing", f"dither {ob.set_index}: {ob.dither[0]:+.0f}\" E, {ob.dither[1]:+.0f}\" N")
                return
            self.goto("tracking", msg.reason)
            return
        self._close_observation("switched")
        o = msg.observation
        seq_id = f"{headers.safe_name(self.config['name'])[:16]}_{headers.compact_time(now)}"
        self.observation = Observation(id=new_request_id(), name=o["name"], ra_deg=o["ra_deg"],
                                       dec_deg=o["dec_deg"], exptime=o["exptime"], min_nexp=o["min_nexp"],
                                       exp_set_size=o["exp_set_size"], priority=o["priority"],
                                       decision_id=msg.decision_id, seq_id=seq_id, start_unix=now,
                                       dither_arcsec=float(o.get("dither_arcsec") or 0.0))
        ob = self.observation
        self.night_exptimes.add(float(ob.exptime))
        self._journal("observation", id=ob.id, field=ob.name, ra_deg=ob.ra_deg, dec_deg=ob.dec_deg,
                      exptime=ob.exptime, min_nexp=ob.min_nexp, exp_set_size=ob.exp_set_size, priority=ob.priority,
                      decision_id=ob.decision_id, seq_id=ob.seq_id, start_unix=ob.start_unix, night=self.night_date)
        self.to_archive(RecordObservation(observation_id=ob.id, night=self.night_date, field_name=ob.name,
                                          ra_deg=ob.ra_deg, dec_deg=ob.dec_deg, priority=ob.priority,
                                          exptime=ob.exptime, min_nexp=ob.min_nexp, exp_set_size=ob.exp_set_size,
                                          decision_id=msg.decision_id, start_unix=now))
        self.goto("slewing", msg.reason)

    def _close_observation(self, status: str):
        """status: why it ends ('interrupted', 'switched', ...); a block that
        reached min_nexp is 'completed' whatever ended it."""
        ob = self.observation
        if ob is None:
            return
        if ob.frames >= ob.min_nexp:
            status = "completed"
        self.to_archive(CloseObservation(observation_id=ob.id, end_unix=self.clock.now(), status=status,
                                         exposures=ob.frames))
        self._journal("observation_closed", id=ob.id, status=status)
        self.observation = None

    # slewing
    def _enter_slewing(self):
        # Constraints are checked again just before the mount moves: the decision
        # may be stale (a restart, a retry), and a slew is the costly step.
        addr = self._address("scheduler")
        if addr is None:
            self._slew()
            return
        self._ask(addr, CheckObservation(name=self.observation.name, time_unix=self.clock.now(),
                                         exposures_done=dict(self.exposures_done)), "check")
        self.set_deadline(60.0, "pre-slew check", wall_min=COMPUTE_WALL_S)

    def receiveMsg_ObservationChecked(self, msg: ObservationChecked, sender):
        if not self._expected(msg, "check") or self.state != "slewing":
            return
        del self.expect[msg.request_id]
        if msg.ok:
            self._slew()
        else:
            self.event("scheduler", f"{msg.name} no longer observable ({', '.join(msg.vetoes)}); rescheduling",
                       field=msg.name, vetoes=list(msg.vetoes))
            self._close_observation("switched")
            self.goto("scheduling", f"{msg.name} vetoed before the slew")

    def _next_dither(self, ob: Observation) -> None:
        from observatory.astro import dither_offset
        ob.dither = dither_offset(ob.set_index, ob.dither_arcsec)
        ob.dithered_set = ob.set_index
        self.event("observation", f"{ob.name}: set {ob.set_index + 1} dithered {ob.dither[0]:+.0f}\" E, "
                                  f"{ob.dither[1]:+.0f}\" N", field=ob.name, dither_arcsec=list(ob.dither))

    def _target(self, ob: Observation) -> tuple[float, float]:
        """Where the current set should be centred: the field, plus the dither."""
        if ob.dither == (0.0, 0.0):
            return ob.ra_deg, ob.dec_deg
        from observatory.solver import tan_deproject
        ra, dec = tan_deproject([ob.dither[0] / 3600.0], [ob.dither[1] / 3600.0], ob.ra_deg, ob.dec_deg)
        return float(ra[0]) % 360.0, float(dec[0])

    def _slew(self):
        ob = self.observation
        self.awaiting_dome = False
        self._open_dome()                 # opens while the mount slews
        ra, dec = self._target(ob)
        if ob.command_ra is not None:     # the pointing correction found for this field
            ra += (ob.command_ra - ob.ra_deg + 180.0) % 360.0 - 180.0
            dec += ob.command_dec - ob.dec_deg
        self._mount_command(SlewTo(ra_deg=ra % 360.0, dec_deg=dec), "slew")

    def _mount_command(self, msg: Message, purpose: str):
        addr = self._address("mount")
        if addr is None:
            return                      # re-sent when the mount actor is back
        self.expect = {k: v for k, v in self.expect.items() if v not in ("slew", "park")}
        self._ask(addr, msg, purpose)
        self.set_deadline(self.config["observing"]["slew_margin"] + 300.0, f"mount {purpose} acknowledgement")

    def receiveMsg_MountMoving(self, msg: MountMoving, sender):
        if self._expected(msg, "slew", "park"):
            self.set_deadline(msg.expected_s + self.config["observing"]["slew_margin"], f"mount {msg.action}")

    def receiveMsg_MountArrived(self, msg: MountArrived, sender):
        purpose = self._expected(msg, "slew", "park")
        if not purpose:
            return
        del self.expect[msg.request_id]
        self.mount_status = msg.status
        if purpose == "slew" and self.state == "slewing":
            if msg.action == "slew":
                if self.observation:
                    self.observation.flip_due = self._hour_angle(self.clock.now()) < 0
                self._on_target_if_open()
            else:
                self.goto("parking", f"slew interrupted: {msg.status.get('state')}")
        elif purpose == "slew" and self.state == "calibrating":
            if msg.action == "slew":
                self._on_target_if_open()
            else:
                self.goto("parking", f"slew interrupted: {msg.status.get('state')}")
        elif purpose == "park" and self.state == "parking" and msg.action != "park":
            self.event("error", f"the park was interrupted (mount {msg.status.get('state')}): parking again")
            self._mount_command(Park(), "park")
        elif purpose == "park" and self.state == "parking":
            self.event("mount", "mount parked", ra=msg.status.get("ra_deg"), dec=msg.status.get("dec_deg"))
            self._parked_if_closed()

    # ------------------------------------------------------------ focusing

    def _focuser_for(self, camera: str) -> dict | None:
        return next((f for f in self.config.get("focusers", []) if f["camera"] == camera), None)

    def _focus_due(self) -> dict[str, str]:
        """Focusers with autofocus whose camera should be focused now, and why."""
        from observatory.autofocus import needs_refocus
        due = {}
        for f in self.config.get("focusers", []):
            focuser, camera = self.children.get(f["name"]), self.children.get(f["camera"])
            if f.get("autofocus") is None or not focuser or not focuser.ready or focuser.failed \
                    or not camera or not camera.ready or camera.failed:
                continue
            last = self.focus_state.get(f["name"])
            if last is None or last["night"] != self.night_date:
                due[f["name"]] = "first focus of the night"
                continue
            why = needs_refocus(list(last["history"]), self.ambient_temp, last.get("temp"), last["fwhm"],
                                f["autofocus"])
            if why:
                due[f["name"]] = why
        return due

    def _enter_focusing(self):
        from observatory.autofocus import Autofocus
        self.focus_runs = {}
        for name in self._focus_due():
            f = next(x for x in self.config["focusers"] if x["name"] == name)
            start = int(self.accessory_status.get(name, {}).get("position", f.get("position") or 0))
            lo, hi = f["limits"]
            af = Autofocus(min(max(start, lo), hi), (lo, hi), f["autofocus"])
            self.focus_runs[name] = {"af": af, "camera": f["camera"], "position": None}
            self.event("focus", f"{name}: autofocus of {f['camera']} from {start}", focuser=name)
            self._focus_step(name)
        if not self.focus_runs:
            self.goto("tracking", "nothing to focus")

    def _focus_step(self, name: str) -> None:
        run = self.focus_runs[name]
        position = run["af"].next_position()
        if position is None:
            self._focus_finished(name)
            return
        run["position"] = position
        # Each step (a move, a frame, its measurement) has its own deadline: a run
        # is dozens of frames, and measuring them takes wall time at any speed.
        self.set_deadline(float(run["af"].settings.exptime) + 600.0, "an autofocus step", wall_min=COMPUTE_WALL_S)
        self._ask(self.children[name].address, MoveFocuser(position=position), "focus-run")

    def _focus_exposure(self, name: str, status: dict) -> None:
        run = self.focus_runs[name]
        cam = self.children.get(run["camera"])
        if cam is None or not cam.ready or cam.failed:
            run["af"].abort(f"{run['camera']} is not available")
            self._focus_finished(name)
            return
        ob, now = self.observation, self.clock.now()
        position = int(status.get("position", run["position"]))
        image_id = f"{cam.name}_{headers.compact_time(now)}_focus{run['af'].frames:02d}"
        path = headers.image_path(self.pandir, ob.name if ob else "focus", cam.name,
                                  ob.seq_id if ob else headers.compact_time(now), image_id)
        hdr = self._sky_header(cam.name, ob.name if ob else "focus", ob.seq_id if ob else "", image_id,
                               decision_id=ob.decision_id if ob else None)
        hdr["FOCUSPOS"] = (position, f"focuser {name} [steps]")
        self.round_index += 1
        exposure_id = f"{ob.id if ob else 'focus'}-{self.round_index:04d}-{cam.name}"
        self.focus_frames[exposure_id] = name
        run["position"] = position
        self._begin_exposure(cam, exposure_id, float(run["af"].settings.exptime), "focus", path, hdr,
                             observation_id=ob.id if ob else None)

    def _focus_measured(self, name: str, fwhm, n_stars) -> None:
        run = self.focus_runs.get(name)
        if run is None or run["af"].done:
            return
        run["af"].record(run["position"], fwhm, n_stars)
        self._focus_step(name)

    def _focus_finished(self, name: str) -> None:
        run = self.focus_runs.get(name)
        if run is None:
            return
        result = run["af"].result
        target = result.position if result.ok else run["af"].start
        if result.ok:
            self.event("focus", f"{name}: best focus {result.position} (HFD {result.min_hfd:.2f} px, "
                                f"{result.frames} frames)", focuser=name, result=result.to_dict())
            from collections import deque as _deque
            self.focus_state[name] = {"night": self.night_date, "fwhm": result.min_hfd, "history": _deque(maxlen=20),
                                      "temp": self.ambient_temp}
        else:
            self.event("error", f"{name}: autofocus failed ({result.reason}); back to {target}", focuser=name,
                       result=result.to_dict())
            # Not again tonight unless the seeing or temperature says so.
            from collections import deque as _deque
            self.focus_state[name] = {"night": self.night_date, "fwhm": None, "history": _deque(maxlen=20),
                                      "temp": self.ambient_temp}
        addr = self.children[name].address
        # (A focuser being restarted is moved to its configured position by its set-up.)
        run["final"] = self._ask(addr, MoveFocuser(position=int(target)), "focus-final") if addr else "none"
        self._focusing_done()

    def _focusing_done(self) -> None:
        """Observing resumes once every run has ended and every focuser has
        arrived where its run left it (a frame must never catch it moving)."""
        if self.state != "focusing" or not self.focus_runs:
            return
        if all(r.get("final") and r["final"] not in self.expect for r in self.focus_runs.values()):
            self.focus_runs = {}
            self.goto("tracking", "focused")

    # ------------------------------------------------------------ dome, focusers, filter wheel

    def dome_shutter(self) -> str | None:
        """The shutter as last reported; None for a unit without a dome."""
        if "dome" not in self.children:
            return None
        return self.accessory_status.get("dome", {}).get("shutter", "unknown")

    def _dome_timeout(self) -> float:
        return self.config["dome"]["timeout"]

    # Open and close are always sent, even when the shutter was last seen where
    # they would move it: a dome restarted behind our back may be anywhere, and
    # a dome already there answers at once.
    def _open_dome(self) -> None:
        addr = self._address("dome")
        if "dome" not in self.children or addr is None or "dome-open" in self.expect.values():
            return
        self.expect = {k: v for k, v in self.expect.items() if v != "dome-close"}
        self._ask(addr, OpenDome(), "dome-open")

    def _close_dome(self) -> None:
        addr = self._address("dome")
        if "dome" not in self.children or addr is None or "dome-close" in self.expect.values():
            return
        self.expect = {k: v for k, v in self.expect.items() if v != "dome-open"}
        self.event("dome", "closing the dome")
        self._ask(addr, CloseDome(), "dome-close")

    def _on_target_if_open(self) -> None:
        if self.dome_shutter() in (None, "open") and "dome-open" not in self.expect.values():
            self._on_target_and_open("on target")
            return
        self.awaiting_dome = True
        self._open_dome()
        self.set_deadline(self._dome_timeout(), "the dome to open")

    def _on_target_and_open(self, note: str) -> None:
        if self.state == "calibrating":
            self._flat_exposures(self.flat_next_exptime)
        else:
            self.goto("pointing", note)

    def _parked_if_closed(self) -> None:
        if self.dome_shutter() in (None, "closed") and "dome-close" not in self.expect.values():
            self.goto("parked", "mount parked" + (", dome closed" if "dome" in self.children else ""))
            return
        dome = self.children["dome"]
        if dome.failed:
            self._fail("the dome has failed and could NOT be closed")
            return
        self._close_dome()
        self.set_deadline(self._dome_timeout(), "the dome to close")

    def _set_up_accessory(self, child: Child) -> None:
        """After every (re)initialisation: put the device where the unit needs it."""
        settings = child.settings
        if child.role == "focuser" and settings.get("position") is not None:
            if self.accessory_status[child.name].get("position") != settings["position"]:
                self._ask(child.address, MoveFocuser(position=settings["position"]), "focus")
        elif child.role == "filterwheel" and settings.get("filter") is not None:
            self._ask(child.address, SetFilter(filter=str(settings["filter"])), "filter")
        elif child.role == "dome":
            shutter = self.dome_shutter()
            if self.state == "slewing" and self.observation:
                self._open_dome()
            elif self.table.is_always_safe(self.state) or self.state == "starting":
                if shutter != "closed":
                    self._close_dome()      # a unit not observing keeps its dome closed
            elif shutter != "open":
                self.event("error", f"the dome is {shutter} while {self.state}: stopping to re-open it")
                self.goto("parking", f"dome {shutter}")

    def receiveMsg_DeviceMoved(self, msg: DeviceMoved, sender):
        purpose = self._expected(msg, "dome-open", "dome-close", "focus", "filter", "focus-run", "focus-final")
        if not purpose:
            return
        del self.expect[msg.request_id]
        if msg.status:
            self.accessory_status[msg.name] = msg.status
        if not msg.ok:
            self.event("error", f"{msg.name}: {msg.action} failed: {msg.error}", device=msg.name,
                       action=msg.action)
        else:
            self.event(msg.name, f"{msg.name}: {msg.action} done", device=msg.name, status=msg.status)
        if purpose == "focus-final":
            self._focusing_done()
            return
        if purpose == "focus-run":
            if self.state == "focusing" and msg.name in self.focus_runs:
                if msg.ok:
                    self._focus_exposure(msg.name, msg.status)
                else:
                    self.focus_runs[msg.name]["af"].abort(f"the focuser did not move: {msg.error}")
                    self._focus_finished(msg.name)
            return
        if purpose == "dome-open" and self.state in ("slewing", "calibrating"):
            if not msg.ok:
                if self.is_safe():       # not when the safety kernel closed it: the verdict decides then
                    self.retry_at = self.clock.now() + self.config["observing"]["retry_after_fault"]
                self.goto("parking", "the dome did not open")
            elif self.awaiting_dome:
                self.awaiting_dome = False
                self._on_target_and_open("on target, dome open")
        elif purpose == "dome-close" and self.state == "parking":
            if msg.ok and self.mount_status.get("parked"):
                self.goto("parked", "mount parked, dome closed")
            elif not msg.ok:
                self.set_deadline(10.0, "a dome close retry")     # _deadline_passed asks again

    # pointing: one frame from the primary camera, measured as the reference
    def _enter_pointing(self):
        primary = self.config["primary_camera"]
        cam = self.children.get(primary)
        if cam is None or not cam.ready or cam.failed:
            cams = self.cameras()
            if not cams:
                self.goto("tracking", "no camera for a pointing frame")
                return
            cam = cams[0]
        self.round_index += 1
        self._start_exposures([cam], self.config["observing"]["pointing_exptime"], "pointing")

    # tracking: make sure the mount tracks, correct the drift measured last
    def _enter_tracking(self):
        addr = self._address("mount")
        if addr is None:
            # The mount actor is being replaced: _resume_after_restart comes back
            # here once it is ready; if it never is, the deadline parks the unit.
            self.set_deadline(300.0, "the mount back to track", wall_min=COMPUTE_WALL_S)
            return
        if self.hold == "pause":
            self.event("operator", "paused: tracking, no new exposures until resumed")
            return
        wait = self._meridian_wait(self.clock.now())
        if wait is not None:
            # A German equatorial mount cannot track far past the meridian: stop the
            # set before it, wait until the field has crossed, then flip (re-slew to
            # the same field, which puts the mount on the other side of the pier) and
            # re-point. The observation, its sequence and its set count go on.
            self.flip_at = self.clock.now() + wait
            self.event("tracking", f"{self.observation.name} at the meridian: flipping in {wait:.0f} s",
                       field=self.observation.name)
            return
        due = self._focus_due()
        if due:
            self.goto("focusing", "; ".join(f"{f}: {why}" for f, why in due.items()))
            return
        d = self.last_drift
        threshold = self.config["observing"]["drift_threshold_px"]
        if d is not None and math.hypot(d[0], d[1]) > threshold:
            per_px = self.config["observing"]["guide_ms_per_px"]
            self._ask(addr, GuidePulse(ra_ms=-d[0] * per_px, dec_ms=-d[1] * per_px), "guide")
            self.event("tracking", f"tracking correction for drift {d[0]:+.1f},{d[1]:+.1f} px",
                       drift_px=list(d[:2]))
            self.last_drift = None
        if self.mount_status.get("tracking") and self.mount_status.get("state") == "tracking":
            # Tracking as last reported (after every mount command and restart): no round trip.
            self.goto("observing")
            return
        self._ask(addr, SetTracking(on=True), "tracking")
        self.set_deadline(60.0, "tracking confirmation")

    def _hour_angle(self, now) -> float:
        """The current field's hour angle in degrees, in (-180, 180]."""
        return (lst_deg(now, self.site["longitude"]) - self.observation.ra_deg + 180.0) % 360.0 - 180.0

    def _meridian_wait(self, now) -> float | None:
        """Seconds to wait before the flip this field needs, or None for no flip yet:
        the mount was sent to it east of the meridian, and the field is past the
        meridian or the next exposure would take it past."""
        ob = self.observation
        if ob is None or not ob.flip_due or not self.config["observing"]["meridian_flip"]:
            return None
        past_transit_s = self._hour_angle(now) / SIDEREAL_DEG_PER_S
        readout = max((float(c.settings.get("settings", {}).get("readout_time", 5.0)) for c in self.cameras()),
                      default=5.0)
        if past_transit_s + ob.exptime + readout < 0:
            return None                       # the next exposure ends before the meridian
        return max(0.0, self.config["observing"]["meridian_flip_margin"] - past_transit_s)

    def _tick_tracking(self, now):
        if self.flip_at is not None and now >= self.flip_at:
            self.flip_at = None
            self.observation.pointing_attempts = 0      # re-pointed on the other side of the pier
            self.goto("slewing", "meridian flip")

    def receiveMsg_DeviceStatus(self, msg: DeviceStatus, sender):
        purpose = self._expected(msg)
        if not purpose:
            return
        del self.expect[msg.request_id]
        if msg.name == "mount":
            self.mount_status = msg.status
        elif msg.name in self.accessory_status:
            self.accessory_status[msg.name] = msg.status
        if purpose == "tracking" and self.state == "tracking":
            if msg.status.get("tracking"):
                self.goto("observing")
            else:
                self.goto("parking", f"mount does not track (state {msg.status.get('state')})")

    # observing: one exposure on every camera at once
    def _enter_observing(self):
        cams = self.cameras()
        if not cams:
            self.goto("parking", "no camera available")
            return
        self.round_index += 1
        self._start_exposures(cams, self.observation.exptime, "science")

    def _start_exposures(self, cams: list[Child], exptime: float, image_type: str):
        ob = self.observation
        now = self.clock.now()
        moon = self._moon(now, ob)
        self.round, self.round_frames = {}, []
        for cam in cams:
            image_id = f"{cam.name}_{headers.compact_time(now)}"
            path = headers.image_path(self.pandir, ob.name, cam.name, ob.seq_id, image_id)
            hdr = self._sky_header(cam.name, ob.name, ob.seq_id, image_id, moon=moon, decision_id=ob.decision_id)
            if ob.dither_arcsec > 0:
                hdr["DITHRA"] = (round(ob.dither[0], 2), "dither offset east [arcsec]")
                hdr["DITHDEC"] = (round(ob.dither[1], 2), "dither offset north [arcsec]")
                hdr["DITHSET"] = (ob.set_index, "set number the dither belongs to")
            exposure_id = f"{ob.id}-{self.round_index:04d}-{cam.name}"
            self.round[cam.name] = exposure_id
            self._begin_exposure(cam, exposure_id, exptime, image_type, path, hdr, observation_id=ob.id,
                                 set_index=ob.set_index, frame_index=ob.frames,
                                 ra_deg=self.mount_status.get("ra_deg", ob.ra_deg),
                                 dec_deg=self.mount_status.get("dec_deg", ob.dec_deg))
        self._readout_deadline(cams, exptime, f"{image_type} exposures")

    def _begin_exposure(self, cam: Child, exposure_id: str, exptime: float, image_type: str, path, header: dict,
                        *, observation_id: str | None = None, set_index: int = 0, frame_index: int = 0,
                        ra_deg: float | None = None, dec_deg: float | None = None,
                        sky: bool = True) -> None:
        """Every exposure starts here: in flight and in the journal before the camera
        is asked, so a crash at any point leaves it settled at resume. ``sky``: the
        frame looks at the sky, so its record carries the pointing."""
        ra = float(self.mount_status.get("ra_deg") or 0.0) if ra_deg is None else ra_deg
        dec = float(self.mount_status.get("dec_deg") or 0.0) if dec_deg is None else dec_deg
        msg = StartExposure(exposure_id=exposure_id, exptime=exptime, path=str(path), image_type=image_type,
                            ra_deg=ra, dec_deg=dec, header=header)
        started = dict(exposure_id=exposure_id, camera=cam.name, path=str(path), observation_id=observation_id,
                       image_type=image_type, exptime=exptime, start_unix=self.clock.now(),
                       round_index=self.round_index, ra_deg=ra if sky else None, dec_deg=dec if sky else None,
                       set_index=set_index, frame_index=frame_index)
        self.in_flight_exposures[exposure_id] = started
        self._journal("exposure_started", **started)
        self._ask(cam.address, msg, "exposure")

    def _readout_deadline(self, cams: list[Child], exptime: float, what: str) -> None:
        readout = max(float(c.settings.get("settings", {}).get("readout_time", 5.0)) for c in cams)
        self.set_deadline(exptime + readout + self.config["observing"]["readout_margin"], what,
                          wall_min=EXPOSURE_WALL_S)

    def _sky_header(self, camera: str, field: str, seq_id: str, image_id: str, *, moon: dict | None = None,
                    decision_id: str | None = None) -> dict:
        """Headers of a frame of the sky: the observation, the mount, the site,
        provenance, the camera's focuser and filter, the ambient temperature."""
        hdr = headers.observation_header(
            field=field, seq_id=seq_id, image_id=image_id, mount=self.mount_status, site=self.site,
            moon=moon or {}, config_hash=self.config["config_hash"], decision_id=decision_id,
            safe=self.is_safe(), unit_name=self.config["name"])
        hdr.update(self._accessory_header(camera))
        hdr.update(self._ambient_header())
        return hdr

    def _accessory_header(self, camera: str) -> dict:
        hdr = {}
        focuser = next((f for f in self.config.get("focusers", []) if f["camera"] == camera), None)
        if focuser and "position" in self.accessory_status.get(focuser["name"], {}):
            hdr["FOCUSPOS"] = (self.accessory_status[focuser["name"]]["position"], f"focuser {focuser['name']} [steps]")
        wheel = self.accessory_status.get("filterwheel")
        if wheel and "filter" in wheel:
            hdr["FILTER"] = (str(wheel["filter"]), "filter in the beam")
        return hdr

    def _ambient_header(self) -> dict:
        if self.ambient_temp is None:
            return {}
        return {"AMBTEMP": (round(self.ambient_temp, 2), "ambient temperature [C]")}

    def _moon(self, now, ob) -> dict:
        try:
            mra, mdec = self.ephemeris.moon_radec(now)
            cos_sep = (math.sin(math.radians(mdec)) * math.sin(math.radians(ob.dec_deg)) +
                       math.cos(math.radians(mdec)) * math.cos(math.radians(ob.dec_deg)) *
                       math.cos(math.radians(mra - ob.ra_deg)))
            return {"separation_deg": math.degrees(math.acos(max(-1.0, min(1.0, cos_sep)))),
                    "illumination": float(self.ephemeris.moon_illumination(now))}
        except Exception as e:  # noqa: BLE001 - a header value must never stop an exposure
            self.log.warning("moon_failed", error=repr(e))
            return {}

    def receiveMsg_ExposureStarted(self, msg: ExposureStarted, sender):
        pass   # the exposure id in the round already says it is under way

    def receiveMsg_ExposureComplete(self, msg: ExposureComplete, sender):
        self._exposure_complete(msg)
        # Only once its record is on its way to the archive: a crash before this
        # line leaves the exposure in flight in the journal, recorded at resume.
        self._journal("exposure_done", exposure_id=msg.exposure_id, outcome="recorded")

    def _exposure_complete(self, msg: ExposureComplete):
        if msg.exposure_id in self.focus_frames:
            self.expect.pop(msg.request_id, None)
            self._record_frame(msg)                  # recorded like any frame, measured urgently
            return
        if self.pictures.pop(msg.exposure_id, None):
            self.expect.pop(msg.request_id, None)
            self.to_archive(RecordExposure(
                exposure_id=msg.exposure_id, observation_id=None, camera=msg.camera, image_type=msg.image_type,
                path=msg.path, start_unix=msg.start_unix, end_unix=msg.end_unix, exptime=msg.exptime,
                ra_deg=self.mount_status.get("ra_deg"), dec_deg=self.mount_status.get("dec_deg"),
                set_index=0, frame_index=0))
            self.event("operator", f"{msg.camera}: picture {Path(msg.path).name}", camera=msg.camera, path=msg.path)
            return
        if self.round.get(msg.camera) != msg.exposure_id:
            # Finished after we gave up on it (aborted round, deadline): the file exists, so record it.
            if self._expected(msg, "exposure"):
                self._record_frame(msg, late=True)
            return
        del self.round[msg.camera]
        self.round_frames.append(msg)
        self._record_frame(msg)
        self._round_progress()

    def _record_frame(self, msg: ExposureComplete, late: bool = False):
        self.expect.pop(msg.request_id, None)
        ob = self.observation
        self.to_archive(RecordExposure(
            exposure_id=msg.exposure_id, observation_id=ob.id if ob else None, camera=msg.camera,
            image_type=msg.image_type, path=msg.path, start_unix=msg.start_unix, end_unix=msg.end_unix,
            exptime=msg.exptime, ra_deg=self.mount_status.get("ra_deg"), dec_deg=self.mount_status.get("dec_deg"),
            set_index=ob.set_index if ob else 0, frame_index=ob.frames if ob else 0))
        if late:
            self.event("exposure", f"{msg.camera}: late frame {Path(msg.path).name} recorded",
                       camera=msg.camera, exposure_id=msg.exposure_id)
        if msg.image_type in ("focus", "flat"):
            self._analyze(msg, reference=())
        if msg.image_type == "science":
            # Measured as soon as it exists, while the next exposure runs.
            primary = msg.camera == self.config["primary_camera"]
            self._analyze(msg, reference=ob.reference_sources if ob and primary else (),
                          solve="fast" if self.config["observing"]["plate_solve"] else "")

    def receiveMsg_ExposureFailed(self, msg: ExposureFailed, sender):
        self._journal("exposure_done", exposure_id=msg.exposure_id, outcome="failed")
        focuser = self.focus_frames.pop(msg.exposure_id, None)
        if focuser:
            self.event("error", f"{msg.camera}: focus frame failed: {msg.error}", camera=msg.camera)
            self._focus_measured(focuser, None, None)
            return
        self.expect.pop(msg.request_id, None)
        self.pictures.pop(msg.exposure_id, None)
        self.event("error", f"{msg.camera}: exposure failed: {msg.error}", camera=msg.camera,
                   exposure_id=msg.exposure_id)
        if self.round.get(msg.camera) == msg.exposure_id:
            del self.round[msg.camera]
            self._round_progress()

    def receiveMsg_ExposureAborted(self, msg: ExposureAborted, sender):
        self._journal("exposure_done", exposure_id=msg.exposure_id, outcome="aborted")
        self.expect.pop(msg.request_id, None)
        self.pictures.pop(msg.exposure_id, None)
        self.event("exposure", f"{msg.camera}: exposure {msg.exposure_id} aborted", camera=msg.camera,
                   exposure_id=msg.exposure_id)
        if self.round.get(msg.camera) == msg.exposure_id:
            del self.round[msg.camera]

    def receiveMsg_CommandFailed(self, msg: CommandFailed, sender):
        relay = self.relayed.pop(msg.request_id, None)
        if relay:
            original, requester = relay
            self._reply(original, requester, ok=False, error=msg.error)
            return
        purpose = self.expect.pop(msg.request_id, None)
        self.event("error", f"{msg.source}: {msg.command} failed: {msg.error}", source=msg.source,
                   purpose=purpose)
        if purpose is None:
            return
        if purpose == "analysis":
            # The frame exists and is recorded; only its figures are lost. Do not wait for them.
            for exposure_id, m in list(self.in_flight_analysis.items()):
                if m.request_id == msg.request_id:
                    del self.in_flight_analysis[exposure_id]
                    if exposure_id == getattr(self, "_ask_purpose_for_pointing", None) and self.state == "pointing":
                        self._ask_purpose_for_pointing = None
                        self.goto("tracking", "pointing analysis failed; observing without a reference")
        elif purpose == "exposure":
            for exposure_id, e in list(self.in_flight_exposures.items()):
                child = self.children.get(e["camera"])
                if child is not None and child.address == sender:
                    self._journal("exposure_done", exposure_id=exposure_id, outcome="refused")
            focus = next((f for x, f in self.focus_frames.items() if x not in self.in_flight_exposures), None)
            if focus and self.focus_runs.get(focus) and self.state == "focusing":
                for x in [x for x, f in self.focus_frames.items() if f == focus and x not in self.in_flight_exposures]:
                    del self.focus_frames[x]
                self._focus_measured(focus, None, None)
            cam = next((n for n in self.round if self.children.get(n) and self.children[n].address == sender), None)
            if cam:
                del self.round[cam]
                self._round_progress()
        elif purpose in ("dome-close", "park") and self.state == "parking":
            self.set_deadline(10.0, f"a {purpose} retry")          # _deadline_passed asks again
        elif purpose == "dome-open" and self.state == "slewing":
            self.retry_at = self.clock.now() + self.config["observing"]["retry_after_fault"]
            self.goto("parking", "the dome did not open")
        elif purpose in ("slew", "schedule", "tracking") and not self.table.is_always_safe(self.state):
            self.retry_at = self.clock.now() + self.config["observing"]["retry_after_fault"]
            self.goto("parking", f"{msg.command} failed")

    def _round_progress(self):
        if self.round:
            return
        if self.state == "pointing":
            frames = self.round_frames
            if frames:
                f = frames[0]
                self._analyze(f, reference=(), solve="full" if self.config["observing"]["plate_solve"] else "")
                self._ask_purpose_for_pointing = f.exposure_id
                self.set_deadline(120.0, "pointing analysis",
                                  wall_min=self.config["observing"]["solve_timeout"] + COMPUTE_WALL_S)
            else:
                self.goto("tracking", "pointing frame failed; observing without a reference")
        elif self.state == "observing":
            self.goto("analyzing", f"{len(self.round_frames)} frame(s)")
        elif self.state == "calibrating":
            self._flat_round_done()

    def _analyze(self, f: ExposureComplete, reference: tuple, solve: str = ""):
        msg = AnalyzeFrame(exposure_id=f.exposure_id, camera=f.camera, path=f.path, reference_sources=reference,
                           urgent=f.image_type in ("pointing", "focus", "flat"), solve=solve)
        self.in_flight_analysis[f.exposure_id] = msg
        addr = self._address("analysis")
        if addr is not None:
            self._ask(addr, msg, "analysis")

    # analyzing: every frame went to analysis as it arrived (the figures come back
    # asynchronously, and drift feeds the next tracking step); count the frame,
    # then the next exposure or, after a full set, reschedule
    def _enter_analyzing(self):
        ob = self.observation
        if self.round_frames:
            self.empty_rounds = 0
            ob.frames += 1
            ob.frame_in_set += 1
            self.exposures_done[ob.name] = self.exposures_done.get(ob.name, 0) + 1
            self._journal("round", id=ob.id, frames=ob.frames,
                          set_index=ob.set_index + (ob.frame_in_set >= ob.exp_set_size),
                          frame_in_set=ob.frame_in_set % ob.exp_set_size, exposures_done=dict(self.exposures_done))
        else:
            # No camera delivered: a device or its link is down. Re-read the mount
            # before the next round (it may have been reset too), and after a few
            # empty rounds stop and park until the devices answer again.
            self.empty_rounds += 1
            self.mount_status = {**self.mount_status, "state": None}
            if self.empty_rounds >= EMPTY_ROUNDS_BEFORE_PARKING:
                wait = self.config["observing"]["retry_after_fault"]
                self.event("error", f"{self.empty_rounds} rounds without a frame: parking, retrying in {wait:.0f} s",
                           field=ob.name)
                self.empty_rounds = 0
                self.retry_at = self.clock.now() + wait
                self.goto("parking", "no camera delivers frames")
                return
        if self.requested_field and self.requested_field != ob.name:
            self.goto("scheduling", f"operator asked for {self.requested_field}")
        elif ob.frame_in_set >= ob.exp_set_size:
            ob.frame_in_set = 0
            ob.set_index += 1
            self.event("observation", f"{ob.name}: set {ob.set_index} complete ({ob.frames} frames)",
                       field=ob.name, frames=ob.frames)
            self.goto("scheduling", "set complete")
        else:
            self.goto("tracking")

    def receiveMsg_FrameAnalyzed(self, msg: FrameAnalyzed, sender):
        self.last_analysis_wall = time.time()
        self.expect.pop(msg.request_id, None)
        analyzed = self.in_flight_analysis.pop(msg.exposure_id, None)
        metrics = dict(msg.metrics)
        if analyzed is not None and not analyzed.urgent:      # science frames
            self._cloud_check(msg.camera, metrics, msg.path)
        flat_camera = self.flat_frames.pop(msg.exposure_id, None)
        if flat_camera is not None:
            self._flat_measured(flat_camera, metrics)
        self.to_archive(RecordMetrics(exposure_id=msg.exposure_id, metrics=metrics, drift_px=msg.drift_px))
        if "error" in msg.metrics:
            self.event("error", f"analysis of {Path(msg.path).name} failed: {msg.metrics['error']}")
        if msg.drift_px is not None:
            self.last_drift = msg.drift_px
        focuser = self.focus_frames.pop(msg.exposure_id, None)
        if focuser:
            self._focus_measured(focuser, msg.metrics.get("fwhm_px"), msg.metrics.get("n_stars"))
            return
        f = self._focuser_for(msg.camera)
        if f and f["name"] in self.focus_state and msg.metrics.get("fwhm_px") is not None:
            self.focus_state[f["name"]]["history"].append(msg.metrics["fwhm_px"])
        pointing_id = getattr(self, "_ask_purpose_for_pointing", None)
        if pointing_id == msg.exposure_id:
            self._ask_purpose_for_pointing = None
            if self.state == "pointing" and self.observation and self._correct_pointing(msg):
                return                       # re-slewing to the corrected position
            if self.observation:
                self.observation.reference_sources = msg.sources
            if self.state == "pointing":
                n = msg.metrics.get("n_stars")
                self.goto("tracking", f"pointing frame: {n} stars")

    def _cloud_check(self, camera: str, metrics: dict, path: str) -> None:
        """A science frame with far fewer stars than the camera's recent frames:
        probably cloud. Flagged with the exposure and told as an event; the
        safety kernel's sky sensor decides about parking, not this."""
        n = metrics.get("n_stars")
        if n is None or "error" in metrics:
            return
        recent = self.star_counts.setdefault(camera, deque(maxlen=8))
        fraction = self.config["observing"]["cloud_star_fraction"]
        flagged = False
        if len(recent) >= 3:
            typical = sorted(recent)[len(recent) // 2]
            flagged = typical > 0 and n < fraction * typical
            if flagged:
                self.event("cloud", f"{camera}: {n} stars in {Path(path).name} against {typical} typical: "
                                    f"cloud flag", camera=camera, n_stars=n, typical=typical)
        metrics["cloud_flag"] = flagged
        if not flagged:
            recent.append(n)

    def _correct_pointing(self, msg: FrameAnalyzed) -> bool:
        """Compare the solved centre of a pointing frame with the field; if it is
        off by more than the threshold (and attempts are left) send the mount to
        the position that puts the field in the centre. Every attempt is an event."""
        from observatory.solver import tan_deproject, tan_project   # numpy only; not at import time
        ob, obs_cfg = self.observation, self.config["observing"]
        ob.pointing_attempts += 1
        attempt, limit = ob.pointing_attempts, obs_cfg["pointing_max_attempts"]
        sol = msg.solution
        if sol is None:
            self.event("pointing", f"{ob.name}: pointing frame {attempt} not solved "
                                   f"({msg.metrics.get('solve_error', 'no solution')}); observing as pointed",
                       field=ob.name, attempt=attempt, solved=False)
            return False
        target_ra, target_dec = self._target(ob)
        xi, eta, _ = tan_project([sol["ra_deg"]], [sol["dec_deg"]], target_ra, target_dec)
        east, north = float(xi[0]) * 3600.0, float(eta[0]) * 3600.0
        off = math.hypot(east, north)
        data = dict(field=ob.name, attempt=attempt, solved=True, solved_ra=sol["ra_deg"], solved_dec=sol["dec_deg"],
                    offset_arcsec=round(off, 1), east_arcsec=round(east, 1), north_arcsec=round(north, 1),
                    method=sol["method"], path=msg.path)
        if off <= obs_cfg["pointing_threshold_arcsec"]:
            self.event("pointing", f"{ob.name}: attempt {attempt} on target, {off:.0f} arcsec off "
                                   f"(solved by {sol['method']})", **data)
            return False
        if attempt >= limit:
            self.event("pointing", f"{ob.name}: still {off:.0f} arcsec off after {attempt} attempts; "
                                   f"observing as pointed", **data)
            return False
        # The frame centre lands where the mount is sent plus its pointing error:
        # send it as far the other way, in the tangent plane at the current command.
        cra = ob.ra_deg if ob.command_ra is None else ob.command_ra
        cdec = ob.dec_deg if ob.command_dec is None else ob.command_dec
        ra, dec = tan_deproject([-east / 3600.0], [-north / 3600.0], cra, cdec)
        # Kept as the command for the undithered field: each set's dither is added to it.
        ob.command_ra, ob.command_dec = float(ra[0]) % 360.0, float(dec[0])
        self._journal("command", id=ob.id, ra_deg=ob.command_ra, dec_deg=ob.command_dec)
        self.event("pointing", f"{ob.name}: attempt {attempt} {off:.0f} arcsec off (solved by {sol['method']}); "
                               f"re-slewing to {ob.command_ra:.4f} {ob.command_dec:+.4f}",
                   corrected_ra=ob.command_ra, corrected_dec=ob.command_dec, **data)
        self.goto("slewing", f"pointing correction {attempt}: {off:.0f} arcsec off")
        return True

    # parking: abort what is exposing, park the mount
    def _enter_parking(self):
        for run in self.focus_runs.values():
            run["af"].abort("parking")
        self.focus_runs = {}
        self._abort_round()
        self._close_observation("interrupted")
        self._close_dome()
        mount = self.children.get("mount")
        if mount and mount.failed:
            if not self.failure:
                self._fail("the mount has failed and could NOT be parked")
            return
        addr = self._address("mount")
        if addr is None:
            return                        # re-sent when the mount actor is back
        self._mount_command(Park(), "park")

    def _abort_round(self):
        for cam_name in list(self.round):
            cam = self.children.get(cam_name)
            if cam and cam.address:
                self.send(cam.address, AbortExposure())
        self.round = {}

    # parked: wait for safety (ready) or the end of the night (housekeeping)
    def _enter_parked(self):
        if self.give_up and not self.failure:
            self._fail(self.give_up)
        if self.stopping:
            self._finish_stop(parked=True)

    def _tick_parked(self, now):
        if self.stopping:
            return
        if self.hold == "park" and now < self.night_end:
            return
        if now >= self.night_end:
            if self._flats_due(now) == "morning":
                if self.can_observe() and self.is_safe() and self._held_safe(now) and now >= self.retry_at:
                    self.goto("calibrating", "morning twilight flats")
            elif not self._morning_flats_ahead(now):
                self.goto("housekeeping", "night over")
        elif self.can_observe() and self.is_safe() and self._held_safe(now) and now >= self.retry_at:
            why = self.parked_for
            self.goto("ready", "safe again" if why.startswith("unsafe") or not why else f"after: {why}")

    # calibrating: twilight flats, evening and morning (observatory/calibration.py)
    def sun_limit(self) -> float:
        """The safety kernel's sun limit: the flats' high limit when flats are on
        (the roof may open in twilight), else the observing horizon."""
        cal = self.config.get("calibration") or {}
        if cal.get("flats"):
            return max(float(self.horizon), float(cal["flat_sun_high"]))
        return float(self.horizon)

    def _flat_windows(self):
        cal = self.config.get("calibration") or {}
        if not cal.get("flats"):
            return None
        from observatory.calibration import flat_window
        try:
            return flat_window(self.ephemeris, (self.night_start - 6 * 3600.0, self.night_end + 6 * 3600.0),
                               high=cal["flat_sun_high"], low=cal["flat_sun_low"])
        except (ValueError, TypeError) as e:
            self.event("error", f"no flat windows tonight: {e}")
            return None

    def _flats_due(self, now) -> str | None:
        """'evening' or 'morning' while that window is open and its flats not done."""
        if self.flat_windows is None or not self.cameras():
            return None
        which = self.flat_windows.which(now)
        if which and not self.flat_seqs.get(which, {}).get("done"):
            return which
        return None

    def _morning_flats_ahead(self, now) -> bool:
        w = self.flat_windows
        return bool(w and w.morning and now < w.morning[0] and self.cameras()
                    and not self.flat_seqs.get("morning", {}).get("done"))

    def _flat_sequence(self, which: str):
        state = self.flat_seqs.get(which)
        if state is None:
            from observatory.calibration import FlatSequence, FlatSettings
            cal = self.config["calibration"]
            settings = FlatSettings(n_flats=cal["n_flats"], target_fraction=cal["flat_target_fraction"],
                                    tolerance=cal["flat_tolerance"], min_exptime=cal["flat_min_exptime"],
                                    max_exptime=cal["flat_max_exptime"], initial_exptime=cal["flat_initial_exptime"],
                                    wait_s=cal["flat_wait"])
            from simulators.camera import DEFAULT_SETTINGS
            levels = {}
            for cam in self.cameras():
                given = cam.settings.get("settings", {})
                levels[cam.name] = (float(given.get("bias", DEFAULT_SETTINGS["bias"])),
                                    float(given.get("saturation_adu", DEFAULT_SETTINGS["saturation_adu"])))
            state = self.flat_seqs[which] = {"seq": FlatSequence(which, [c.name for c in self.cameras()], settings,
                                                                 levels), "done": False}
        return state["seq"]

    def _flat_pointing(self, now) -> tuple[float, float]:
        """The next flat's pointing: near the zenith, away from the sun, dithered
        (observatory.calibration.flat_pointing)."""
        from observatory.astro import lst_deg
        from observatory.calibration import flat_pointing
        cal = self.config["calibration"]
        ra, dec, self.flat_offset = flat_pointing(
            float(self.ephemeris.sun_az(now)), float(lst_deg(now, self.site["longitude"])),
            float(self.site["latitude"]), cal["flat_zenith_distance"], self.flat_dither, cal["flat_dither_arcmin"])
        return ra, dec

    def _enter_calibrating(self):
        now = self.clock.now()
        which = self._flats_due(now)
        if which is None:
            self.goto("parking", "no flats due")
            return
        self.flat_which = which
        seq = self._flat_sequence(which)
        self.flat_next_exptime = seq.exptime
        self.flat_wait_until, self.flat_round, self.flat_frames = None, None, {}
        self.flat_dither = 0
        self.event("calibration", f"{which} flats: {seq.settings.n_flats} per camera wanted, "
                                  f"{sum(seq.kept.values())} kept so far", which=which)
        self._flats_slew()

    def _flats_slew(self):
        self.awaiting_dome = False
        if self.dome_shutter() != "open":
            self._open_dome()             # opens while the mount slews
        ra, dec = self._flat_pointing(self.clock.now())
        self._mount_command(SlewTo(ra_deg=ra, dec_deg=dec), "slew")

    def _next_flat(self, exptime: float):
        """The next flat of the window: re-pointed and dithered first, unless
        dithering is off (then the mount tracks the same patch of sky)."""
        if self.config["calibration"]["flat_dither_arcmin"] > 0:
            self.flat_next_exptime = exptime
            self.flat_dither += 1
            self._flats_slew()            # the mount's arrival starts the exposures
        else:
            self._flat_exposures(exptime)

    def _flat_exposures(self, exptime: float):
        from observatory.calibration import sun_alt_trend
        cams = self.cameras()
        if not cams:
            self.goto("parking", "no camera for flats")
            return
        now = self.clock.now()
        sun, trend = float(self.ephemeris.sun_alt(now)), sun_alt_trend(self.ephemeris, now)
        self.round_index += 1
        self.round, self.round_frames, self.flat_levels = {}, [], {}
        self.flat_round = {"exptime": exptime, "start": now, "trend": trend}
        seq_id = f"{self.night_date}-{self.flat_which}"
        for cam in cams:
            image_id = f"{cam.name}_{headers.compact_time(now)}_flat"
            path = headers.image_path(self.pandir, "flats", cam.name, seq_id, image_id)
            hdr = self._sky_header(cam.name, "flat", seq_id, image_id)
            hdr["SUNALT"] = (round(sun, 3), "sun altitude at the exposure start [deg]")
            hdr["SUNRATE"] = (round(trend, 4), "sun altitude change [deg/min]")
            hdr["DITHRA"] = (round(self.flat_offset[0], 2), "dither offset east [arcsec]")
            hdr["DITHDEC"] = (round(self.flat_offset[1], 2), "dither offset north [arcsec]")
            exposure_id = f"flat-{seq_id}-{self.round_index:04d}-{cam.name}"
            self.round[cam.name] = exposure_id
            self.flat_frames[exposure_id] = cam.name
            self._begin_exposure(cam, exposure_id, exptime, "flat", path, hdr)
        self._readout_deadline(cams, exptime, "flat exposures")

    def _flat_measured(self, camera: str, metrics: dict) -> None:
        """A flat's level: the sky background (raw ADU) the analysis measured."""
        level = metrics.get("background") if "error" not in metrics else None
        self.flat_levels[camera] = level
        seq = self.flat_seqs.get(getattr(self, "flat_which", ""), {}).get("seq")
        if seq is not None and camera in seq.levels:
            metrics["flat_level_ok"] = seq.level_ok(camera, level)
        if self.state == "calibrating":
            self._flat_round_done()

    def _flat_round_done(self) -> None:
        """Once every frame of the round is in and measured: the next step."""
        from observatory.calibration import FlatStep
        if self.state != "calibrating" or self.flat_round is None or self.round:
            return
        if any(exposure_id in self.in_flight_analysis for exposure_id in self.flat_frames):
            self.set_deadline(120.0, "flat levels", wall_min=COMPUTE_WALL_S)
            return
        seq = self._flat_sequence(self.flat_which)
        now, r = self.clock.now(), self.flat_round
        self.flat_round, self.flat_frames = None, {}
        levels = {cam: self.flat_levels.get(cam) for cam in seq.cameras}
        step = seq.record(r["exptime"], levels, r["trend"], now - r["start"] - r["exptime"])
        shown = ", ".join(f"{c} {v:.0f}" if v is not None else f"{c} -" for c, v in levels.items())
        self.event("calibration", f"{self.flat_which} flat {r['exptime']:.2f} s: levels {shown} ADU; "
                                  f"kept {seq.kept}; next: {step.action}"
                                  + (f" {step.exptime:.2f} s" if step.action != "done" else f" ({step.reason})"),
                   which=self.flat_which, levels=levels, kept=dict(seq.kept), step=step.action)
        if step.action != "done" and self._flats_due(now) != self.flat_which:
            step = FlatStep("done", reason="the twilight window closed")
        if step.action == "done":
            self.flat_seqs[self.flat_which]["done"] = True
            self.goto("parking", f"{self.flat_which} flats done: {step.reason}")
        elif step.action == "wait":
            self.flat_next_exptime, self.flat_wait_until = step.exptime, now + step.wait_s
        else:
            self._next_flat(step.exptime)

    def _tick_calibrating(self, now):
        if self.round or self.flat_round is not None:
            return
        if self.hold in ("park", "pause"):
            self.goto("parking", f"operator {self.hold}")
        elif self.flat_which != self._flats_due(now):
            # The window closed (or the flats are done): what was kept stays kept.
            self.flat_seqs[self.flat_which]["done"] = True
            self.event("calibration", f"{self.flat_which} twilight window over: kept "
                                      f"{self.flat_seqs[self.flat_which]['seq'].kept}")
            self.goto("parking", f"{self.flat_which} flats over")
        elif self.flat_wait_until is not None and now >= self.flat_wait_until:
            self.flat_wait_until = None
            self._next_flat(self.flat_next_exptime)

    # housekeeping: the night's summary, then back to sleep
    def _enter_housekeeping(self):
        self._close_observation("interrupted")
        self.housekeeping_started_wall = time.time()
        self.calibration_queue = self._calibration_plan()
        self._tick_housekeeping(self.clock.now())

    def _calibration_plan(self) -> list:
        """Bias and darks for tonight's exposure times, taken with the dome closed
        and the mount parked, before the night's summary (observatory/calibration.py)."""
        cal = self.config.get("calibration") or {}
        if not cal.get("darks", True) or not self.cameras():
            return []
        from observatory.calibration import CalibrationPlan
        readout = max(float(c.settings.get("settings", {}).get("readout_time", 5.0)) for c in self.cameras())
        plan = CalibrationPlan.for_night(sorted(self.night_exptimes), n_bias=cal.get("n_bias", 10),
                                         n_darks=cal.get("n_darks", 5))
        plan = plan.trimmed(cal.get("budget", 3600.0), readout)
        frames = list(plan.frames())
        if frames:
            self.event("calibration", f"bias and darks: {len(frames)} frames per camera "
                                      f"({plan.duration(readout):.0f} s)", frames=len(frames))
        return frames

    def _start_calibration(self, image_type: str, exptime: float) -> None:
        now = self.clock.now()
        self.round, self.round_frames = {}, []
        self.round_index += 1
        for cam in self.cameras():
            image_id = f"{cam.name}_{headers.compact_time(now)}_{image_type}"
            path = headers.image_path(self.pandir, "calibration", cam.name, self.night_date, image_id)
            hdr = {"OBJECT": (image_type, "calibration frame"), "IMAGEID": (image_id, ""),
                   "CFGHASH": (self.config["config_hash"], ""), "NIGHT": (self.night_date, "")}
            hdr.update(self._accessory_header(cam.name))
            exposure_id = f"cal-{self.night_date}-{self.round_index:04d}-{cam.name}"
            self.round[cam.name] = exposure_id
            self._begin_exposure(cam, exposure_id, exptime, image_type, path, hdr, sky=False)
        self._readout_deadline(self.cameras(), exptime, "calibration frames")

    def _tick_housekeeping(self, now):
        if "summary" in self.expect.values():
            return
        if self.calibration_queue or self.round:
            if not self.round and not self.stopping:
                image_type, exptime = self.calibration_queue.pop(0)
                self._start_calibration(image_type, exptime)
            elif self.stopping:
                self.calibration_queue = []
            return
        # The summary includes every frame's figures: let analysis finish first.
        # On a slow computer the analysis may be many frames behind at dawn: wait as
        # long as it makes progress, and at most a minute without a result.
        if self.in_flight_analysis and \
                time.time() - max(self.housekeeping_started_wall, self.last_analysis_wall) < 60:
            return
        stats = {"dark_seconds": self.dark_seconds, "safe_seconds": self.safe_seconds,
                 "restarts": dict(self.night_restarts), "unsafe_periods": self.unsafe_periods}
        end = self.clock.now()
        self._ask(self.children["archive"].address,
                  WriteNightSummary(night=self.night_date, start_unix=self.night_window_start, end_unix=end,
                                    stats=stats), "summary")
        self.set_deadline(120.0, "night summary", wall_min=2 * COMPUTE_WALL_S)

    def receiveMsg_NightSummaryWritten(self, msg: NightSummaryWritten, sender):
        if not self._expected(msg, "summary"):
            return
        del self.expect[msg.request_id]
        self.nights_done += 1
        self.event("night", f"night {msg.night} summary written", path=msg.path)
        self.send(self.owner, NightComplete(night=msg.night, summary_path=msg.path, summary=msg.summary,
                                            nights_done=self.nights_done))
        self._new_night(self.clock.now())
        if self.state == "housekeeping":
            self.goto("sleeping", "night done")

    def _new_night(self, now):
        """Bookkeeping for the night that contains ``now`` or comes next."""
        start, end = self.ephemeris.dark_interval(now, self.horizon)
        self.night_start, self.night_end = start, end
        self.night_window_start = now
        self.night_date = self.ephemeris.night_date(start)
        self.dark_seconds = self.safe_seconds = 0.0
        self.unsafe_periods = 0
        self.night_restarts = {}
        self.exposures_done = {}
        self.night_exptimes: set[float] = set()
        self.last_integrated = now
        self.flat_seqs: dict[str, dict] = {}      # 'evening'/'morning' -> {"seq": FlatSequence, "done"}
        self.flat_dither, self.flat_offset = 0, (0.0, 0.0)    # dither step of the next flat; its offset (E, N) arcsec
        self.flat_windows = self._flat_windows()
        if getattr(self, "journal", None) is not None:
            from observatory.journal import JournalState
            try:
                self.journal.restart(JournalState(night=self.night_date, last_round_index=self.round_index), now)
            except OSError as e:        # a full disk: the old journal goes on (replay reads the night from it)
                self.event("error", f"the night journal could not be started afresh: {e}", error=str(e))

    # ------------------------------------------------------------ safety

    def receiveMsg_SafetyVerdict(self, msg: SafetyVerdict, sender):
        previous = self.verdict
        if previous is not None and msg.time_unix < previous.time_unix:
            return                       # overtaken by a newer one (a replaced safety actor's late mail)
        self.verdict = msg
        if msg.ambient_temp_c is not None:
            self.ambient_temp = msg.ambient_temp_c
        if not msg.weather_safe:
            self.last_unsafe_sim = msg.time_unix
        if previous is None or previous.safe != msg.safe:
            text = "safe" if msg.safe else "UNSAFE: " + ", ".join(msg.reasons)
            self.event("safety", text, safe=msg.safe, reasons=list(msg.reasons), sun_alt=round(msg.sun_alt_deg, 2))
            if not msg.safe and previous is not None and previous.safe:
                self.unsafe_periods += 1
        if not msg.safe and self.state != "starting" and not self.table.is_always_safe(self.state):
            self.goto("parking", "unsafe: " + ", ".join(msg.reasons))

    # ------------------------------------------------------------ the tick

    def on_tick(self, tick: Tick):
        if tick.kind == "respawn":
            name, count = tick.token
            child = self.children.get(name)
            if child and not child.failed and not self.stopping and child.restart_count == count:
                self._spawn(child)
            return
        if tick.kind != "tick":
            return
        now = self.clock.now()
        wall = time.time()
        stalled = wall - getattr(self, "last_tick_wall", wall)
        self.last_tick_wall = wall
        if stalled > 2.0:
            # Ticks come every quarter second at most: a long gap means the computer
            # (or this process) stalled, and the clock went on without us.
            self.event("error", f"the unit stalled for {stalled:.1f} wall s ({stalled * self.clock.speed:.0f} "
                                f"simulated s): nothing was watched or commanded meanwhile",
                       stalled_wall_s=round(stalled, 2))
            for child in self.children.values():
                child.last_heartbeat_reply = wall      # we were not listening either: no verdict on them
        self._integrate(now)
        self._check_init_timeouts()
        if self.deadline and now > self.deadline[0] and time.time() > self.deadline[1]:
            what = self.deadline[2]
            self.deadline = None
            self._deadline_passed(what)
        self._check_owner()
        self._check_heartbeats()
        if self.verdict_stale() and not self.table.is_always_safe(self.state):
            self.event("error", "safety verdicts stopped coming: parking")
            self.goto("parking", "safety silent")
        elif self.state in DARK_STATES and not self.night_start <= now < self.night_end:
            self.goto("parking", "night over" if now >= self.night_end else "not dark yet")
        handler = getattr(self, f"_tick_{self.state}", None)
        if handler and not self.failure:
            handler(now)
        self._check_progress(now)
        self.write_status()
        self.wake_in_wall(min(max(self.clock.wall_seconds(5.0), 0.01), 0.25), "tick")

    def _check_progress(self, now: float) -> None:
        """The backstop for a wait nobody will end: every step of the night sets a
        deadline, starts exposures or focus runs, or is held by an operator; a
        night state with none of these for STUCK_SIM_S (and STUCK_WALL_S wall) has
        lost track of the device it waited for. Park, and retry later."""
        busy = bool(self.state not in DARK_STATES or self.failure or self.stopping or self.deadline is not None
                    or self.round or self.flip_at is not None or self.hold or self.focus_runs or self.pictures)
        idle_s = self.stuck_watch.observe(busy, (self.state, self.state_since), now, time.time())
        if idle_s is None:
            return
        wait = self.config["observing"]["retry_after_fault"]
        self.event("error", f"nothing under way in state {self.state} for {idle_s:.0f} s: parking, "
                            f"retrying in {wait:.0f} s", state=self.state)
        self.retry_at = now + wait
        self.goto("parking", f"stuck in {self.state}")

    def _check_heartbeats(self):
        """A blocked actor answers nothing, not even an exit request, and Thespian
        notices nothing: kill a child silent for too long by pid, so that it is
        restarted through the normal path (ChildActorExited)."""
        sup = self.config["supervision"]
        now = time.time()
        if now - getattr(self, "last_heartbeat_sent", 0.0) < sup["heartbeat_interval"]:
            return
        self.last_heartbeat_sent = now
        for child in self.children.values():
            if not child.ready or child.failed or not child.pid:
                continue
            silent = now - child.last_heartbeat_reply
            if child.host and silent > sup.get("remote_heartbeat_timeout", 6.0):
                # A pid on another computer cannot be killed from here, and its host may be gone.
                self._lose(child, f"no heartbeat for {silent:.1f} s")
                continue
            if silent > sup["heartbeat_timeout"]:
                self.event("error", f"{child.name} hung (no heartbeat for {silent:.1f} s): killing pid {child.pid}",
                           child=child.name, pid=child.pid)
                child.ready = False
                child.init_sent_wall = now          # dying, not initialising: no init timeout meanwhile
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                continue
            beat = Heartbeat()
            if child.role == "archive":
                self.heartbeats_sent[beat.request_id] = now
            self.send(child.address, beat)

    def receiveMsg_HeartbeatReply(self, msg: HeartbeatReply, sender):
        child = self.children.get(msg.name)
        if child and child.epoch == msg.epoch:      # a reply from a replaced incarnation counts for nothing
            child.last_heartbeat_reply = time.time()
            sent = self.heartbeats_sent.pop(msg.request_id, None)
            if sent is not None:
                self._archive_caught_up(sent)
                self.heartbeats_sent = {k: t for k, t in self.heartbeats_sent.items() if t > sent}

    def _check_owner(self):
        """run_unit.py owns the actor system. Thespian's admin outlives it on purpose,
        so if it dies without stopping us, park and take the whole system down."""
        if not self.owner_pid or time.time() - self.last_owner_check < 1.0:
            return
        self.last_owner_check = time.time()
        from observatory.processes import pid_alive
        if pid_alive(self.owner_pid):
            return
        if self.orphaned_since is None:
            self.orphaned_since = time.time()
            self.event("error", f"run_unit.py (pid {self.owner_pid}) is gone: parking and shutting down")
            self.stopping = (self.myAddress, "orphaned")
            self._close_observation("interrupted")
            if self.state not in ("parking", "parked"):
                self.goto("parking", "service process gone")
        if self.state == "parked" or time.time() - self.orphaned_since > 120:
            # Thespian's admin put itself, its logger and every actor in one process
            # group of their own: end that group, gently first.
            self.event("unit", "ending the actor system (its owner is gone)")
            self.write_status(force=True)
            for pid in self.config.get("simulator_pids", []):
                try:
                    os.kill(pid, signal.SIGTERM)       # the simulated hardware goes with the unit
                except ProcessLookupError:
                    pass
            group = os.getpgrp()
            if group != self.owner_pgid:
                os.killpg(group, signal.SIGTERM)
                time.sleep(3)
                os.killpg(group, signal.SIGKILL)
            else:   # sharing a group with others: end only the admin and ourselves
                os.kill(os.getppid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGKILL)

    def _integrate(self, now):
        dt = now - self.last_integrated
        self.last_integrated = now
        if dt <= 0 or not (self.night_start <= now <= self.night_end + dt):
            return
        self.dark_seconds += dt
        if self.is_safe():
            self.safe_seconds += dt

    def _check_init_timeouts(self):
        limit = self.config["supervision"]["init_timeout"]
        for child in self.children.values():
            if not child.ready and not child.failed and child.address and time.time() - child.init_sent_wall > limit:
                self.event("error", f"{child.name} did not initialise within {limit:.0f} s", child=child.name)
                if self.state == "starting":
                    self._fail(f"{child.name} did not initialise within {limit:.0f} s")
                    return
                self.send(child.address, _exit_request())
                self._restart(child, "initialisation timed out")

    def _deadline_passed(self, what: str):
        self.event("error", f"timed out waiting for {what} in state {self.state}", state=self.state)
        if self.state == "parking":
            self.expect = {k: v for k, v in self.expect.items() if v != "dome-close"}   # unanswered: ask again
            if self.mount_status.get("parked") and not (self._address("mount") and "park" in self.expect.values()):
                self._parked_if_closed()                    # only the dome is missing: ask it again
            else:
                self._mount_command(Park(), "park")         # parking is idempotent: ask again
                self._close_dome()
        elif self.state == "calibrating" and what == "flat exposures":
            for cam in list(self.round):
                self.event("error", f"{cam}: no flat within the deadline", camera=cam)
            self._abort_round()
            self._flat_round_done()
        elif self.state == "calibrating" and what == "flat levels":
            for exposure_id, cam in list(self.flat_frames.items()):
                self.event("error", f"{cam}: the level of flat {exposure_id} was not measured in time", camera=cam)
            self.flat_frames = {}
            self._flat_round_done()
        elif self.state in ("slewing", "calibrating") and getattr(self, "awaiting_dome", False):
            self.retry_at = self.clock.now() + self.config["observing"]["retry_after_no_target"]
            self.goto("parking", "the dome did not open in time")
        elif self.state == "pointing" and not self.round:
            self._ask_purpose_for_pointing = None
            self.goto("tracking", "no pointing analysis in time; observing without a reference")
        elif self.state in ("observing", "pointing"):
            for cam in list(self.round):
                self.event("error", f"{cam}: no frame within the deadline; dropped from this round", camera=cam)
            self._abort_round()
            self._round_progress()
        elif self.state == "housekeeping" and what == "calibration frames":
            for cam in list(self.round):
                self.event("error", f"{cam}: no calibration frame within the deadline", camera=cam)
            self._abort_round()
        elif self.state == "housekeeping":
            self.expect = {k: v for k, v in self.expect.items() if v != "summary"}
            self.nights_done += 1
            self.send(self.owner, NightComplete(night=self.night_date, summary_path="", nights_done=self.nights_done,
                                                summary={"night": self.night_date, "error": "summary timed out"}))
            self._new_night(self.clock.now())
            self.goto("sleeping", "summary timed out")
        elif not self.table.is_always_safe(self.state):
            self.retry_at = self.clock.now() + self.config["observing"]["retry_after_no_target"]
            self.goto("parking", f"timeout: {what}")

    # ------------------------------------------------------------ status and control

    def status(self) -> dict:
        ob = self.observation
        v = self.verdict
        return {
            "unit": self.config["name"],
            "state": self.state,
            "since": iso(self.state_since),
            "time": iso(self.clock.now()),
            "wall_time": iso(time.time()),
            "speed": self.clock.speed,
            "target": ob.name if ob else None,
            "observation": {"id": ob.id, "field": ob.name, "frames": ob.frames, "set": ob.set_index,
                            "min_nexp": ob.min_nexp} if ob else None,
            "safety": {"safe": v.safe, "reasons": list(v.reasons), "sun_alt_deg": round(v.sun_alt_deg, 2)}
            if v else None,
            "mount": {k: self.mount_status.get(k) for k in ("state", "ra_deg", "dec_deg", "tracking", "parked")},
            "devices": {name: dict(st) for name, st in self.accessory_status.items()},
            "cameras": {e["camera"]: {"exposing": True, "exposure_id": e["exposure_id"], "image_type": e["image_type"],
                                      "exptime": e["exptime"], "started": iso(e["start_unix"]),
                                      "elapsed_s": round(max(0.0, self.clock.now() - e["start_unix"]), 1)}
                        for e in self.in_flight_exposures.values()},
            "night": {"date": self.night_date, "dark_start": iso(self.night_start), "dark_end": iso(self.night_end),
                      "nights_done": self.nights_done},
            "last_decision": self.last_decision,
            "hold": self.hold,
            "requested_field": self.requested_field,
            "failure": self.failure,
            "supervisor": {"name": "unit", "pid": os.getpid()},
            "actors": [{"name": c.name, "role": c.role, "pid": c.pid, "ready": c.ready, "failed": c.failed,
                        "host": c.host, "lost": c.lost,
                        "incarnation": c.epoch, "restarts": c.restart_count}
                       for c in self.children.values()],
        }

    def write_status(self, force: bool = False):
        now = time.time()
        if not force and now - self.last_status_write < 0.5:
            return
        self.last_status_write = now
        path = Path(self.pandir) / "run" / "status.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".status.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.status(), indent=1, default=str))
            os.replace(tmp, path)
        except OSError as e:            # a full disk: the last status stays; the control socket still answers
            tmp.unlink(missing_ok=True)
            self.log.warning("status_not_written", error=str(e))

    # ------------------------------------------------------------ operator commands

    LIVE_SECTIONS = ("observing", "supervision", "safety", "scheduler")

    def _reply(self, msg, sender, ok: bool = True, error: str = "", **result):
        result.setdefault("state", getattr(self, "state", "not started"))
        self.send(sender, ControlReply(ok=ok, result=result, error=error, request_id=msg.request_id))

    def _refuse_unless_started(self, msg, sender) -> bool:
        if not self.started or self.failure:
            self._reply(msg, sender, ok=False, error="the unit is not running" if not self.started
                        else f"the unit has failed: {self.failure}")
            return True
        return False

    def receiveMsg_ParkUnit(self, msg: ParkUnit, sender):
        if self._refuse_unless_started(msg, sender):
            return
        self.hold = "park"
        self.event("operator", f"park requested ({msg.reason}): parking and staying parked until unpark")
        if self.state not in ("parking", "parked", "sleeping", "housekeeping", "starting"):
            self.goto("parking", f"operator park ({msg.reason})")
        self._reply(msg, sender, hold=self.hold)

    def receiveMsg_UnparkUnit(self, msg: UnparkUnit, sender):
        if self._refuse_unless_started(msg, sender):
            return
        was, self.hold = self.hold, None if self.hold == "park" else self.hold
        self.event("operator", "unpark: automatic observing resumes when dark and safe" if was == "park"
                   else "unpark: the unit was not parked by an operator")
        self._reply(msg, sender, hold=self.hold)

    def receiveMsg_PauseUnit(self, msg: PauseUnit, sender):
        if self._refuse_unless_started(msg, sender):
            return
        if self.hold == "park":
            self._reply(msg, sender, ok=False, error="parked by an operator: unpark first")
            return
        self.hold = "pause"
        self.event("operator", "pause: exposures under way finish, no new ones start")
        self._reply(msg, sender, hold=self.hold)

    def receiveMsg_ResumeUnit(self, msg: ResumeUnit, sender):
        if self._refuse_unless_started(msg, sender):
            return
        if self.hold != "pause":
            self._reply(msg, sender, ok=False, error=f"not paused (hold: {self.hold or 'none'})")
            return
        self.hold = None
        self.event("operator", "resume")
        if self.state == "tracking" and not self.round:
            self._enter_tracking()
        self._reply(msg, sender, hold=self.hold)

    def receiveMsg_ObserveField(self, msg: ObserveField, sender):
        if self._refuse_unless_started(msg, sender):
            return
        self.requested_field = msg.name
        self.event("operator", f"observe {msg.name} requested", field=msg.name)
        if self.state == "tracking" and not self.round and self.hold != "pause":
            self.goto("scheduling", f"operator asked for {msg.name}")
        self._reply(msg, sender, requested=msg.name,
                    note="chosen at the next scheduling unless a constraint vetoes it")

    def receiveMsg_TakePicture(self, msg: TakePicture, sender):
        if self._refuse_unless_started(msg, sender):
            return
        idle = self.state in ("parked", "ready", "sleeping") or (self.state == "tracking" and self.hold == "pause")
        if not idle or self.round or self.pictures:
            self._reply(msg, sender, ok=False, error=f"cameras busy (state {self.state}): pause first, or wait "
                                                     "until parked")
            return
        cams = [c for c in self.cameras() if msg.camera in (None, c.name)]
        if not cams:
            self._reply(msg, sender, ok=False, error=f"no camera {msg.camera!r} ready" if msg.camera
                        else "no camera ready")
            return
        now = self.clock.now()
        started = {}
        for cam in cams:
            image_id = f"{cam.name}_{headers.compact_time(now)}"
            path = headers.image_path(self.pandir, "manual", cam.name, headers.compact_time(now), image_id)
            hdr = {"OBJECT": ("manual", "operator picture"), "IMAGEID": (image_id, ""),
                   "CFGHASH": (self.config["config_hash"], ""), "SAFE": (self.is_safe(), "")}
            hdr.update(self._accessory_header(cam.name))
            exposure_id = f"picture-{new_request_id()}-{cam.name}"
            self.pictures[exposure_id] = cam.name
            self._begin_exposure(cam, exposure_id, msg.exptime, "science", path, hdr)
            started[cam.name] = str(path)
        self.event("operator", f"picture of {msg.exptime:g} s on {', '.join(started)}")
        self._reply(msg, sender, paths=started)

    def receiveMsg_SetConfigValue(self, msg: SetConfigValue, sender):
        if self._refuse_unless_started(msg, sender):
            return
        section, _, name = msg.key.partition(".")
        if section not in self.LIVE_SECTIONS or not name or name not in self.config.get(section, {}):
            self._reply(msg, sender, ok=False, error=f"{msg.key}: not a live setting (live: "
                                                     f"{', '.join(s + '.*' for s in self.LIVE_SECTIONS)})")
            return
        old = self.config[section][name]
        self.config[section] = {**self.config[section], name: msg.value}
        for child in self.children.values():
            if child.role == section:          # the safety and scheduler actors own their sections
                child.settings = {**child.settings, name: msg.value}
                if child.address and child.ready:
                    self.send(child.address, SetConfigValue(key=msg.key, value=msg.value))
        self.event("operator", f"config {msg.key}: {old!r} -> {msg.value!r}", key=msg.key)
        self._reply(msg, sender, key=msg.key, value=msg.value, previous=old)

    def receiveMsg_ControlReply(self, msg: ControlReply, sender):
        relay = self.relayed.pop(msg.request_id, None)
        if relay:                 # a child's answer to a command we passed on
            original, requester = relay
            self._reply(original, requester, ok=msg.ok, error=msg.error, **msg.result)

    # Fault kinds the wire simulators act out (simulators/wire.py modes).
    WIRE_FAULTS = {"timeout": "silent", "garbage": "garbage", "half": "half", "slow": "slow",
                   "disconnect": "vanish", "behave": "normal"}

    def simulation_mode(self) -> bool:
        """Every device is simulated: in-process, at the wire by a simulator run_unit.py
        started, or one of INDI's own simulator drivers (as the device reports it)."""
        c, wired = self.config, self.config.get("wire_controls", {})
        devices = [("mount", c["mount"]), ("weather", c["weather"])] + [(d["name"], d) for d in c["cameras"]]
        devices += [(d["name"], d) for d in c.get("focusers", [])]
        devices += [(n, c[n]) for n in ("dome", "filterwheel") if c.get(n)]

        def simulated(name: str, d: dict) -> bool:
            driver = d.get("driver", "simulator")
            if driver == "indi":
                child = self.children.get(name)
                return bool(child and (child.driver_exec or "").startswith("indi_simulator_"))
            return driver == "simulator" or name in wired
        return all(simulated(name, d) for name, d in devices)

    def receiveMsg_InjectFault(self, msg: InjectFault, sender):
        if self._refuse_unless_started(msg, sender):
            return
        if not self.simulation_mode():
            self._reply(msg, sender, ok=False, error="fault injection is refused outside simulation mode "
                                                     "(a device is real hardware or an INDI device)")
            return
        child = self.children.get(msg.target)
        if child is None:
            self._reply(msg, sender, ok=False, error=f"no actor {msg.target!r} (actors: {', '.join(self.children)})")
            return
        self.event("fault", f"fault injected: {msg.kind} in {msg.target} {dict(msg.params) or ''}".rstrip(),
                   target=msg.target, fault=msg.kind, params=dict(msg.params))
        wire = self.config.get("wire_controls", {}).get(msg.target)
        if msg.kind == "kill":
            if not child.pid:
                self._reply(msg, sender, ok=False, error=f"{msg.target} has no process yet")
                return
            os.kill(child.pid, signal.SIGKILL)
            self._reply(msg, sender, target=msg.target, pid=child.pid)
        elif wire and msg.kind in self.WIRE_FAULTS:
            spec = {"mode": self.WIRE_FAULTS[msg.kind], **{k: msg.params[k] for k in ("times", "delay_s")
                                                           if k in msg.params}}
            tmp = f"{wire}.{os.getpid()}.tmp"
            Path(tmp).write_text(json.dumps(spec))
            os.replace(tmp, wire)
            self._reply(msg, sender, target=msg.target, wire=spec)
        elif child.address and child.ready:
            forwarded = InjectFault(target=msg.target, kind=msg.kind, params=dict(msg.params))
            self.relayed[forwarded.request_id] = (msg, sender)
            self.send(child.address, forwarded)
        else:
            self._reply(msg, sender, ok=False, error=f"{msg.target} is not ready")

    def receiveMsg_GetUnitStatus(self, msg: GetUnitStatus, sender):
        self.send(sender, UnitStatus(status=self.status() if self.started else {"state": "not started"},
                                     request_id=msg.request_id))

    def receiveMsg_StopUnit(self, msg: StopUnit, sender):
        if not self.started:
            self.send(sender, UnitStopped(parked=False, note="never started", request_id=msg.request_id))
            return
        self.stopping = (sender, msg.request_id)
        self.event("unit", f"stop requested: {msg.reason}")
        self._close_observation("interrupted")
        mount = self.children.get("mount")
        if self.state == "parked" or not mount or not mount.ready or mount.failed:
            self._abort_round()
            self._finish_stop(parked=self.state == "parked")
        elif self.state != "parking":
            self.goto("parking", "stopping")

    def _finish_stop(self, parked: bool):
        requester, request_id = self.stopping
        if request_id == "orphaned":
            return
        self.write_status(force=True)
        self.send(requester, UnitStopped(parked=parked, note=f"stopped in state {self.state}",
                                         request_id=request_id))


def _exit_request():
    from thespian.actors import ActorExitRequest
    return ActorExitRequest()

"""The safety kernel: decides, on its own cadence and independently of the
observing sequence, whether the unit may observe, and acts on it.

- Rules (observatory/safety_rules.py) over the weather (stale readings are
  unsafe), the sun, free disk space under PANDIR, mains power (a UPS,
  drivers/ups.py) and the health of the safety-critical devices (the mount
  and the dome must answer status requests), each with its own hysteresis.
- The verdict goes to the supervisor at once when it changes, and regularly
  otherwise (so that silence is noticed); the supervisor aborts exposures
  and parks through its own path.
- While unsafe, the kernel itself tells the mount to park and the dome to
  close, expects each to confirm within a deadline, and sends again when
  not confirmed, when interrupted, or when the device is seen unsecured; it
  stops when safe.
- Every change of verdict or of its conditions, every command and every
  answer to one is a row of the ``safety_audit`` table (through the
  archive); the holds are also kept in $PANDIR/run/safety_state.json so that
  a restarted kernel does not forget that it was raining.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from actors.base import UnitActor
from drivers.ups import BatteryClock, make_ups
from messages import (CloseDome, CommandFailed, DeviceMoved, DeviceStatus, GetStatus, MountArrived, MountMoving,
                      Park, PeersChanged, ReadWeather, RecordSafetyAudit, SafetyVerdict, Tick, WeatherReading,
                      new_request_id)
from observatory.astro import Ephemeris, Site
from observatory.config import SafetyConfig
from observatory.safety_rules import SafetyInputs, SafetyKernel, SafetyLimits

SAFETY_DEFAULTS = SafetyConfig().model_dump()

# Safety-critical devices: watched for health, and secured by the kernel while unsafe.
# name -> (action, command class, settings key of its confirmation timeout)
ACTUATORS = {"mount": ("park", Park, "park_confirm_timeout"),
             "dome": ("close", CloseDome, "close_confirm_timeout")}

CONFIRM_MARGIN_S = 60.0          # simulated seconds beyond the device's own estimate (MountMoving)
RETRY_AFTER_FAILURE_WALL_S = 5.0  # a refused or interrupted command is sent again this soon
RESTORE_WINDOW_S = 3600.0        # simulated seconds: older saved holds belong to another run
STATE_FILE = "safety_state.json"


def secured(device: str, status: dict) -> bool:
    if device == "mount":
        return bool(status.get("parked"))
    return status.get("shutter") == "closed"


@dataclass
class Command:
    """A park or close the kernel sent and is waiting to see confirmed."""
    action: str
    request_ids: set = field(default_factory=set)
    attempts: int = 0
    deadline_sim: float = 0.0
    deadline_wall: float = 0.0


# Wall seconds before an unanswered question to the weather station or a device is asked again.
WEATHER_REASK_WALL_S = 1.0
HEALTH_REASK_WALL_S = 3.0

class SafetyActor(UnitActor):
    role = "safety"
    KEEPALIVE_SIM_S = 60.0
    KEEPALIVE_WALL_S = 1.0
    MIN_STALE_WALL_S = 2.0

    # -- set-up --------------------------------------------------------------

    def setup(self, msg):
        self.settings = {**SAFETY_DEFAULTS, **self.settings}
        self.ephemeris = Ephemeris(Site(self.site["name"], self.site["latitude"], self.site["longitude"],
                                        self.site["elevation"]))
        # The sun rule protects the hardware: with twilight flats on, the roof may
        # open from the flats' high limit; science waits for observe_horizon anyway.
        self.horizon = float(self.settings.get("sun_horizon", self.site["observe_horizon"]))
        self.kernel = SafetyKernel(SafetyLimits.from_settings(self.settings, self.horizon))
        self.ups = make_ups(self.settings, self.clock)
        self.battery = BatteryClock()
        self.power_info: dict = {}
        self.last_ups_read = -1e18
        self.last_reading = None
        self.new_reading_wall = 0.0
        self.last_verdict: SafetyVerdict | None = None
        self.last_assessment = None
        self.last_inputs: dict = {}
        self.last_sent_sim = -1e18
        self.last_sent_wall = 0.0
        self.health: dict[str, dict] = {}
        self.status_requests: dict[str, tuple[str, float]] = {}     # request id -> (device, wall sent)
        self.commands: dict[str, Command] = {}
        self.command_ids: dict[str, tuple[str, str]] = {}           # request id -> (device, action), unanswered
        self.audit_recent: deque = deque(maxlen=50)                 # re-sent to a replaced archive
        self.audit_retry: list = []
        self.state_path = Path(self.pandir) / "run" / STATE_FILE
        self._restore()
        self.ephemeris.sun_alt(self.clock.now())     # build the cache before the first check
        self.on_tick(Tick("check"))
        self.on_tick(Tick("health"))
        return {"horizon": self.horizon, "ups": self.settings["ups_driver"]}

    def reconfigure(self):
        self.settings = {**SAFETY_DEFAULTS, **self.settings}
        self.kernel.limits = SafetyLimits.from_settings(self.settings, self.horizon)
        self.ups = make_ups(self.settings, self.clock)
        self.last_ups_read = -1e18

    def _restore(self):
        try:
            saved = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return
        age = self.clock.now() - float(saved.get("time_unix", -1e18))
        if not 0 <= age <= RESTORE_WINDOW_S:
            return
        try:
            self.kernel.restore(saved.get("kernel", {}))
        except (KeyError, TypeError, ValueError) as e:
            self.log.warning("safety_state_unreadable", error=repr(e))
            return
        self.log.info("safety_state_restored", held=sorted(self.kernel.held), age_s=round(age, 1))

    def _persist(self, now):
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"time_unix": now, "kernel": self.kernel.to_dict()}))
            os.replace(tmp, self.state_path)
        except OSError as e:          # a full disk is itself a reason; keep deciding
            self.log.warning("safety_state_not_saved", error=repr(e))

    def device_status(self):
        v = self.last_verdict
        if not v:
            return {}
        a = self.last_assessment
        return {"safe": v.safe, "reasons": list(v.reasons), "sun_alt_deg": v.sun_alt_deg,
                "conditions": a.conditions if a else {},
                "commands": {d: {"action": c.action, "attempts": c.attempts} for d, c in self.commands.items()},
                "inputs": self.last_inputs}

    # -- peers ---------------------------------------------------------------

    def receiveMsg_PeersChanged(self, msg: PeersChanged, sender):
        super().receiveMsg_PeersChanged(msg, sender)
        for name in msg.peers:
            if name in ACTUATORS:
                # A new incarnation: judge its health afresh; what we sent the old one is lost.
                self.health.pop(name, None)
                if self.commands.pop(name, None):
                    self.log.info("safety_command_dropped", device=name, reason="device actor replaced")
            elif name == "archive":
                for rec in self.audit_recent:        # whatever the old archive did not write
                    self.send(msg.peers[name], rec)

    # -- the cadence -----------------------------------------------------------

    def on_tick(self, tick: Tick):
        if tick.kind == "check":
            weather = self.peers.get("weather")
            wall = time.time()
            # One question at a time: Thespian keeps at most 20 messages in flight per
            # process, and a weather actor that stopped answering would otherwise fill
            # them and hold up everything behind (verdicts, park commands, heartbeat
            # replies). An unanswered question is asked again after a wall second.
            if weather is not None and wall - getattr(self, "weather_asked_wall", 0.0) > WEATHER_REASK_WALL_S:
                self.weather_asked_wall = wall
                self.send(weather, ReadWeather())
            # Evaluate even without a fresh answer: a silent station becomes stale.
            self.evaluate()
            self.wake_in_sim(self.settings["check_interval"], "check",
                             max_wall=self.settings["max_check_wall_interval"])
        elif tick.kind == "health":
            self._ask_health()
            self.wake_in_wall(min(1.0, self.settings["device_timeout"] / 3.0), "health")

    def _ask_health(self):
        wall = time.time()
        for name in ACTUATORS:
            addr = self.peers.get(name)
            if addr is None:
                continue
            h = self.health.setdefault(name, {"asked_since": None, "status": None, "error": "",
                                              "status_valid_after": 0.0})
            if any(n == name and wall - sent < HEALTH_REASK_WALL_S for n, sent in self.status_requests.values()):
                continue                              # still waiting for its last answer (see on_tick)
            req = GetStatus()
            self.status_requests[req.request_id] = (name, wall)
            if h["asked_since"] is None:
                h["asked_since"] = wall
            self.send(addr, req)
        for rid, (_, sent) in list(self.status_requests.items()):
            if wall - sent > 120.0:
                del self.status_requests[rid]
        archive = self.peers.get("archive")
        if self.audit_retry and archive is not None:
            retry, self.audit_retry = self.audit_retry, []
            for rec in retry:
                self.send(archive, rec)

    # -- inputs ----------------------------------------------------------------

    def receiveMsg_WeatherReading(self, msg: WeatherReading, sender):
        self.weather_asked_wall = 0.0                 # answered: the next check may ask again
        previous = (self.last_reading or {}).get("timestamp")
        if msg.reading.get("timestamp") is not None and msg.reading.get("timestamp") != previous:
            self.new_reading_wall = time.time()        # the station is alive: a reading it had not sent before
        self.last_reading = msg.reading
        self.evaluate()

    def receiveMsg_DeviceStatus(self, msg: DeviceStatus, sender):
        asked = self.status_requests.pop(msg.request_id, None)
        if asked is None:
            return
        name, sent_wall = asked
        h = self.health.get(name)
        if h is None:
            return
        h["asked_since"], h["error"] = None, ""
        if sent_wall >= h["status_valid_after"]:      # not older than a confirmation we had since
            h["status"] = dict(msg.status)

    def receiveMsg_CommandFailed(self, msg: CommandFailed, sender):
        asked = self.status_requests.pop(msg.request_id, None)
        if asked is not None:
            # The actor is alive but its device is not answering: the silence goes on.
            h = self.health.get(asked[0])
            if h is not None:
                h["error"] = msg.error
            return
        if msg.command == "RecordSafetyAudit":
            rec = next((r for r in self.audit_recent if r.request_id == msg.request_id), None)
            if rec is not None:
                self.audit_retry.append(rec)      # e.g. sent before the archive had initialised
            return
        if msg.request_id in self.command_ids:
            device, action = self.command_ids.pop(msg.request_id)
            self._answer_failed(device, action, msg.request_id, f"{device} refused the {action}: {msg.error}")

    def _ups_read(self, wall) -> tuple[str | None, dict]:
        if self.ups is None:
            return None, {}
        interval = self.settings["ups_poll_interval"] if self.settings["ups_driver"] == "nut" else 0.0
        if wall - self.last_ups_read >= interval:
            self.power_info = self.ups.read()
            self.last_ups_read = wall
        return self.power_info.get("power"), self.power_info

    def _free_disk_gb(self) -> float | None:
        if self.clock.now() < getattr(self, "disk_full_until", -1.0):
            return 0.0                      # fault injection: the disk is full
        try:
            return shutil.disk_usage(self.pandir).free / 1e9
        except OSError:
            return None

    def inject_device_fault(self, kind, params):
        """'disk_full': the data disk reads as full for ``seconds`` (simulated, default 300)."""
        if kind != "disk_full":
            super().inject_device_fault(kind, params)     # raises, unless the base knows the kind
            return
        self.disk_full_until = self.clock.now() + float(params.get("seconds", 300.0))

    # -- evaluation ------------------------------------------------------------

    def evaluate(self):
        now, wall = self.clock.now(), time.time()
        reading = self.last_reading
        age = None
        if reading and reading.get("timestamp") is not None:
            try:
                age = now - float(reading["timestamp"])
            except (TypeError, ValueError):
                age = None
            # A reading's age is simulated time, but delivering it takes wall time:
            # at high speed a busy machine must not make a live station look dead,
            # nor must a busy kernel (its inbox full) judge a station dead whose new
            # readings it has only just got to.
            if age is not None and self.clock.speed > 1 and \
                    (age / self.clock.speed < self.MIN_STALE_WALL_S
                     or wall - self.new_reading_wall < self.MIN_STALE_WALL_S):
                age = min(age, self.kernel.limits.max_weather_age_s)
        power, power_info = self._ups_read(wall)
        on_battery = self.battery.update(power, now)
        devices, errors = {}, {}
        for name in ACTUATORS:
            if self.peers.get(name) is None:
                continue
            h = self.health.get(name) or {}
            asked = h.get("asked_since")
            devices[name] = wall - asked if asked is not None else 0.0
            if h.get("error"):
                errors[name] = h["error"]
        sun_alt = float(self.ephemeris.sun_alt(now))
        free = self._free_disk_gb()
        inputs = SafetyInputs(now=now, reading=reading, sun_alt_deg=sun_alt, free_disk_gb=free, power=power,
                              on_battery_s=on_battery, devices=devices, device_errors=errors, reading_age_s=age,
                              power_error=power_info.get("error", ""))
        a = self.kernel.assess(inputs)
        self.last_assessment = a
        previous = self.last_verdict
        changed = previous is None or a.safe != previous.safe or any(a.changes.values())
        ambient = (reading or {}).get("ambient_c") if age is not None and age <= self.settings["max_weather_age"] \
            else None
        verdict = SafetyVerdict(safe=a.safe, reasons=a.reasons, time_unix=now, sun_alt_deg=sun_alt,
                                weather_safe=a.weather_safe, changed=changed,
                                ambient_temp_c=float(ambient) if isinstance(ambient, (int, float)) else None)
        self.last_verdict = verdict
        self.last_inputs = self._inputs_record(inputs, power_info)
        if changed or now - self.last_sent_sim >= self.KEEPALIVE_SIM_S or \
                wall - self.last_sent_wall >= self.KEEPALIVE_WALL_S:
            if changed:
                self.log.info("safety_verdict", safe=a.safe, reasons=list(a.reasons), sun_alt=round(sun_alt, 2),
                              changes={k: v for k, v in a.changes.items() if v})
            self.send(self.supervisor, verdict)        # the supervisor first: it aborts exposures
            self.last_sent_sim, self.last_sent_wall = now, wall
        if changed:
            self._audit("verdict", message="safe" if a.safe else "unsafe",
                        changed={k: v for k, v in a.changes.items() if v}, inputs=self.last_inputs)
            self._persist(now)
        self._secure(a.safe, turned_unsafe=previous is not None and previous.safe and not a.safe)

    def _inputs_record(self, inputs: SafetyInputs, power_info: dict) -> dict:
        """What the rules looked at, as plain values for the audit trail."""
        devices = {}
        for name, silent in inputs.devices.items():
            status = (self.health.get(name) or {}).get("status") or {}
            devices[name] = {"answering": silent <= self.kernel.limits.device_timeout_s,
                             "silent_s": round(silent, 2), "error": inputs.device_errors.get(name, ""),
                             **{k: status[k] for k in ("state", "parked", "shutter") if k in status}}
        power = None
        if inputs.power is not None:
            power = {"state": inputs.power, "on_battery_s": round(inputs.on_battery_s, 1),
                     **{k: v for k, v in power_info.items() if k in ("charge_pct", "runtime_s", "status", "error")}}
        return {"weather": dict(inputs.reading) if inputs.reading else None,
                "weather_age_s": None if inputs.reading_age_s is None else round(inputs.reading_age_s, 1),
                "sun_alt_deg": round(inputs.sun_alt_deg, 2),
                "free_disk_gb": None if inputs.free_disk_gb is None else round(inputs.free_disk_gb, 3),
                "power": power, "devices": devices}

    # -- securing the unit: park and close -------------------------------------

    def _secure(self, safe: bool, turned_unsafe: bool) -> None:
        if safe:
            if self.commands:
                self.log.info("safety_securing_stopped", devices=sorted(self.commands))
                self.commands.clear()
            return
        now, wall = self.clock.now(), time.time()
        for device, (action, _, _) in ACTUATORS.items():
            if self.peers.get(device) is None:
                continue
            cmd = self.commands.get(device)
            if cmd is not None:
                if now >= cmd.deadline_sim and wall >= cmd.deadline_wall:
                    self._command(device, f"{action} not confirmed (attempt {cmd.attempts}): sending again")
                continue
            status = (self.health.get(device) or {}).get("status")
            if turned_unsafe:
                self._command(device, "the verdict turned unsafe")
            elif status is not None and not secured(device, status):
                what = status.get("state") or f"shutter {status.get('shutter')}"
                self._command(device, f"{device} seen {what} while unsafe")

    def _command(self, device: str, why: str) -> None:
        action, cls, timeout_key = ACTUATORS[device]
        now, wall = self.clock.now(), time.time()
        msg = cls()
        cmd = self.commands.get(device) or Command(action)
        cmd.request_ids.add(msg.request_id)
        cmd.attempts += 1
        timeout = float(self.settings[timeout_key])
        cmd.deadline_sim = now + timeout
        cmd.deadline_wall = wall + float(self.settings["confirm_min_wall"])
        self.commands[device] = cmd
        self.command_ids[msg.request_id] = (device, action)
        if len(self.command_ids) > 200:               # answers that never came
            for rid in list(self.command_ids)[:100]:
                del self.command_ids[rid]
        self.send(self.peers[device], msg)
        self.log.warning("safety_command", device=device, action=action, why=why, attempt=cmd.attempts)
        self._audit("command", device=device, action=action,
                    message=f"{action} sent to {device}: {why} (attempt {cmd.attempts}, confirm within "
                            f"{timeout:.0f} s)")

    def receiveMsg_MountMoving(self, msg: MountMoving, sender):
        cmd = self.commands.get("mount")
        if cmd is not None and msg.request_id in cmd.request_ids:
            # The mount's own estimate: do not re-send a park that is simply long.
            cmd.deadline_sim = max(cmd.deadline_sim, self.clock.now() + msg.expected_s + CONFIRM_MARGIN_S)

    def receiveMsg_MountArrived(self, msg: MountArrived, sender):
        if msg.request_id not in self.command_ids:
            return
        device, action = self.command_ids.pop(msg.request_id)
        if msg.action == action:
            self._answer_confirmed(device, action, msg.request_id, msg.status, "mount parked")
        else:
            self._answer_failed(device, action, msg.request_id, f"the {action} was interrupted ({msg.action}, "
                                                                 f"mount {msg.status.get('state')})")

    def receiveMsg_DeviceMoved(self, msg: DeviceMoved, sender):
        if msg.request_id not in self.command_ids:
            return
        device, action = self.command_ids.pop(msg.request_id)
        if msg.ok and msg.action == action:
            self._answer_confirmed(device, action, msg.request_id, msg.status, f"{device}: {action} done")
        else:
            self._answer_failed(device, action, msg.request_id, f"{device}: {action} failed: {msg.error}")

    def _answer_confirmed(self, device, action, request_id, status, text):
        cmd = self.commands.get(device)
        ours = cmd is not None and request_id in cmd.request_ids
        if ours:
            del self.commands[device]
        h = self.health.get(device)
        if h is not None and status:
            h["status"], h["status_valid_after"] = dict(status), time.time()
        self.log.info("safety_command_confirmed", device=device, action=action)
        self._audit("confirmed", device=device, action=action,
                    message=text + ("" if ours else " (after the kernel had stopped waiting)"))

    def _answer_failed(self, device, action, request_id, text):
        cmd = self.commands.get(device)
        if cmd is not None and request_id in cmd.request_ids:
            # Still unsafe (commands are dropped when safe): send again soon.
            cmd.deadline_sim = self.clock.now()
            cmd.deadline_wall = min(cmd.deadline_wall, time.time() + RETRY_AFTER_FAILURE_WALL_S)
        self.log.warning("safety_command_failed", device=device, action=action, error=text)
        self._audit("failed", device=device, action=action, message=text)

    # -- the audit trail -------------------------------------------------------

    def _audit(self, kind: str, *, device: str = "", action: str = "", message: str = "",
               changed: dict | None = None, inputs: dict | None = None) -> None:
        v = self.last_verdict
        rec = RecordSafetyAudit(audit_id=new_request_id(), kind=kind, time_unix=self.clock.now(),
                                wall_unix=time.time(), safe=bool(v and v.safe),
                                reasons=tuple(v.reasons) if v else (), inputs=inputs or {}, changed=changed or {},
                                device=device, action=action, message=message)
        self.audit_recent.append(rec)
        archive = self.peers.get("archive")
        if archive is not None:
            self.send(archive, rec)

"""The mount actor: owns one mount driver; reports arrival of slews and parks."""
from __future__ import annotations

import time
from pathlib import Path

from actors.base import UnitActor
from messages import (CommandFailed, DeviceStatus, GuidePulse, MountArrived, MountMoving, Park, SetTracking,
                      SlewTo, StopMount, Tick, Unpark)


def make_mount_driver(settings: dict, clock, site: dict, pandir: str):
    driver = settings.get("driver", "simulator")
    if driver == "simulator":
        from simulators.mount import SimulatedMount
        # The state file plays the part of the mount's own memory, so the
        # simulated hardware keeps its position when this actor is restarted.
        state_file = Path(pandir) / "run" / "sim" / "mount.json"
        state_file.parent.mkdir(parents=True, exist_ok=True)
        return SimulatedMount(settings.get("settings", {}), clock, site["latitude"], site["longitude"],
                              state_file=state_file)
    if driver == "indi":
        from drivers.indi import IndiMount
        return IndiMount(settings.get("settings", {}), clock, site["latitude"], site["longitude"])
    if driver == "ioptron":
        from drivers.ioptron import IOptronMount
        return IOptronMount(settings.get("settings", {}), clock, site["latitude"], site["longitude"])
    raise ValueError(f"unknown mount driver {driver!r}")


# Wall seconds the mount may fail to answer status polls during a move (a lost
# link, a driver restarted by indiserver) before the move is reported failed.
STATUS_GRACE_S = 10.0


class _Pending:
    """The move under way and everyone waiting for it. A park (the safety kernel
    and the supervisor may both ask for one) is shared: each requester is answered
    with its own request id. ``token`` names the wakeups polling this move."""

    def __init__(self, action: str, token: str, requesters: list):
        self.action, self.token, self.requesters = action, token, requesters


class MountActor(UnitActor):
    role = "mount"

    def setup(self, msg):
        self.driver = make_mount_driver(self.settings, self.clock, self.site, self.pandir)
        self.pending: _Pending | None = None
        info = self.driver.connect()
        return {"connect": info, "status": self.driver.status()}

    def device_status(self):
        return self.driver.status()

    def _start(self, action, expected_s, msg, sender):
        self.pending = _Pending(action, msg.request_id, [(msg.request_id, sender)])
        self.log.info("mount_moving", action=action, expected_s=round(expected_s, 1))
        self.send(sender, MountMoving(name=self.name, action=action, expected_s=expected_s,
                                      request_id=msg.request_id))
        self.wake_in_sim(expected_s, "arrival", msg.request_id)

    def _join(self, expected_s, msg, sender):
        """Another requester for the move under way: answered when it ends, like the first."""
        self.pending.requesters.append((msg.request_id, sender))
        self.log.info("mount_moving", action=self.pending.action, expected_s=round(expected_s, 1),
                      requesters=len(self.pending.requesters))
        self.send(sender, MountMoving(name=self.name, action=self.pending.action, expected_s=expected_s,
                                      request_id=msg.request_id))

    def _interrupt(self, status: dict | None = None) -> None:
        """The pending move will not complete (another command replaced it): tell
        every requester, so that nobody waits for an arrival that never comes."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        if status is None:
            try:
                status = self.driver.status()
            except Exception:  # noqa: BLE001 - the answer matters more than the status
                status = {}
        self.log.info("mount_interrupted", action=pending.action, requesters=len(pending.requesters))
        for request_id, requester in pending.requesters:
            self.send(requester, MountArrived(name=self.name, action=f"{pending.action}-interrupted",
                                              status=status, request_id=request_id))

    def receiveMsg_SlewTo(self, msg: SlewTo, sender):
        self.driver.check_target(msg.ra_deg, msg.dec_deg)    # a refused target leaves the mount parked
        if self.driver.status().get("parked"):
            self.driver.unpark()
        expected = self.driver.slew_to(msg.ra_deg, msg.dec_deg)   # refused while parking: the park goes on
        self._interrupt()
        self._start("slew", expected, msg, sender)

    def receiveMsg_Park(self, msg: Park, sender):
        if self.pending is not None and self.pending.action == "park":
            # Parking is idempotent: command it again (a stuck move gets a new
            # start) and answer this requester too when the mount gets there.
            self._join(self.driver.park(), msg, sender)
            return
        self._interrupt()            # a slew's requester hears 'slew-interrupted' before the park starts
        self._start("park", self.driver.park(), msg, sender)

    def _reply_status(self, msg, sender):
        self.send(sender, DeviceStatus(name=self.name, pid=self._pid(), epoch=self.epoch,
                                       status=self.driver.status(), request_id=msg.request_id))

    @staticmethod
    def _pid():
        import os
        return os.getpid()

    def receiveMsg_Unpark(self, msg: Unpark, sender):
        self.driver.unpark()
        self._reply_status(msg, sender)

    def receiveMsg_StopMount(self, msg: StopMount, sender):
        self.driver.stop()
        self._interrupt()
        self._reply_status(msg, sender)

    def receiveMsg_SetTracking(self, msg: SetTracking, sender):
        self.driver.set_tracking(msg.on)
        self._reply_status(msg, sender)

    def receiveMsg_GuidePulse(self, msg: GuidePulse, sender):
        self.driver.guide(msg.ra_ms, msg.dec_ms)
        self._reply_status(msg, sender)

    def on_tick(self, tick: Tick):
        pending = self.pending
        if tick.kind != "arrival" or pending is None or pending.token != tick.token:
            return  # a wakeup for a command that has since been superseded
        action = pending.action
        try:
            status = self.driver.status()
        except Exception as e:  # noqa: BLE001 - a lost link (INDI server gone, serial timeout)
            now = time.time()
            self.status_failing_since = getattr(self, "status_failing_since", None) or now
            if now - self.status_failing_since <= STATUS_GRACE_S:
                self.wake_in_wall(0.5, "arrival", pending.token)      # keep asking: it may come back
                return
            self.pending = self.status_failing_since = None
            self.log.error("mount_lost", action=action, error=repr(e))
            for request_id, requester in pending.requesters:
                self.send(requester, CommandFailed(source=self.name, command=action,
                                                   error=f"lost the mount during the {action}: {e}",
                                                   request_id=request_id))
            return
        self.status_failing_since = None
        arrived = status["parked"] if action == "park" else status["state"] == "tracking"
        if arrived:
            self.pending = None
            self.log.info("mount_arrived", action=action, ra=status.get("ra_deg"), dec=status.get("dec_deg"),
                          requesters=len(pending.requesters))
            for request_id, requester in pending.requesters:
                self.send(requester, MountArrived(name=self.name, action=action, status=status,
                                                  request_id=request_id))
        elif status["state"] in ("slewing", "parking", "homing"):
            self.wake_in_sim(max(status.get("slew_remaining_s", 1.0), 0.5), "arrival", pending.token)
        else:
            # Stopped by someone else: the command will never complete.
            self._interrupt(status)

    def teardown(self):
        close = getattr(getattr(self, "driver", None), "close", None)
        if close:
            close()       # release the serial port for the next incarnation

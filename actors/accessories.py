"""Dome, focuser and filter wheel actors: each owns one driver (simulated or
INDI), starts a move without waiting for it, polls the device until it stops,
then answers ``DeviceMoved``. Status requests and heartbeats are answered
while the device moves."""
from __future__ import annotations

import time

from actors.base import UnitActor
from drivers.accessory import make_accessory_driver
from messages import CloseDome, DeviceMoved, MoveFocuser, OpenDome, SetFilter, Tick

# Wall seconds a device may fail to answer status polls (a lost link, a driver
# restarted by indiserver) before the move is reported failed.
STATUS_GRACE_S = 10.0
# Wall seconds after a command during which "at rest, not at the goal" is not yet a failure.
SETTLE_GRACE_S = 2.0


class _AccessoryActor(UnitActor):
    """Common part: one move at a time; a new command replaces the one in progress.

    ``SHARE_SAME_ACTION``: a command for the move already under way (a dome told
    to close while closing: the safety kernel and the supervisor may both ask)
    joins it, and every requester is answered with its own request id.
    ``ANSWER_REPLACED``: the requesters of a move replaced by another are
    answered at once (``ok=False``) instead of never."""
    SHARE_SAME_ACTION = False
    ANSWER_REPLACED = False

    def setup(self, msg):
        self.driver = make_accessory_driver(self.role, self.name, self.settings, self.clock, self.pandir)
        self.pending = None      # (action, poll token, [(request id, requester)], done(status) -> bool | None)
        self.status_failing_since = None
        info = self.driver.connect()
        return {"connect": info, "status": self.driver.status()}

    def device_status(self):
        return self.driver.status()

    def _begin(self, action: str, start, reached, msg, sender) -> None:
        start()
        if self.SHARE_SAME_ACTION and self.pending and self.pending[0] == action:
            self.pending[2].append((msg.request_id, sender))
            self.pending_since = time.time()
            self.log.info("move_joined", action=action, requesters=len(self.pending[2]))
            return                                    # the poll under way answers everyone
        if self.ANSWER_REPLACED and self.pending:
            self._reply(False, self._status_or_empty(), f"interrupted: the {self.role} was told to {action}")
        self.pending = (action, msg.request_id, [(msg.request_id, sender)], reached)
        self.pending_since = time.time()
        self.status_failing_since = None
        self.log.info("move_started", action=action)
        self.wake_in_sim(0.5, "poll", msg.request_id, max_wall=0.1)

    def _status_or_empty(self) -> dict:
        try:
            return self.driver.status()
        except Exception:  # noqa: BLE001 - the answer matters more than the status
            return {}

    def _reply(self, ok: bool, status: dict, error: str = "") -> None:
        action, _, requesters, _ = self.pending
        self.pending = None
        self.log.info("move_finished", action=action, ok=ok, status=status, error=error,
                      requesters=len(requesters))
        for request_id, requester in requesters:
            self.send(requester, DeviceMoved(name=self.name, action=action, ok=ok, status=status, error=error,
                                             request_id=request_id))

    def on_tick(self, tick: Tick):
        if tick.kind != "poll" or not self.pending or self.pending[1] != tick.token:
            return
        try:
            status = self.driver.status()
        except Exception as e:  # noqa: BLE001 - a lost link: keep asking for a while
            now = time.time()
            self.status_failing_since = self.status_failing_since or now
            if now - self.status_failing_since > STATUS_GRACE_S:
                self._reply(False, {}, f"{type(e).__name__}: {e}")
            else:
                self.wake_in_wall(0.5, "poll", tick.token)
            return
        self.status_failing_since = None
        verdict = self.pending[3](status)
        if verdict is False and time.time() - self.pending_since < SETTLE_GRACE_S:
            verdict = None        # some devices report the move a moment after accepting it
        if verdict is None:
            self.wake_in_sim(1.0, "poll", tick.token, max_wall=0.1)
        elif verdict:
            self._reply(True, status)
        else:
            self._reply(False, status, f"stopped short of the goal: {status}")

    def teardown(self):
        driver = getattr(self, "driver", None)
        if driver:
            driver.disconnect()      # never close(): on a dome that would move the shutter


class DomeActor(_AccessoryActor):
    role = "dome"
    SHARE_SAME_ACTION = True
    ANSWER_REPLACED = True

    @staticmethod
    def _until(goal: str):
        moving = {"open": "opening", "closed": "closing"}[goal]

        def reached(status):
            shutter = status.get("shutter")
            if shutter == goal:
                return True
            if shutter in (moving, "unknown"):
                return None
            return False          # error, or moving the other way (someone else commanded it)
        return reached

    def receiveMsg_OpenDome(self, msg: OpenDome, sender):
        self._begin("open", lambda: self.driver.open_shutter(wait=False), self._until("open"), msg, sender)

    def receiveMsg_CloseDome(self, msg: CloseDome, sender):
        self._begin("close", lambda: self.driver.close_shutter(wait=False), self._until("closed"), msg, sender)


class FocuserActor(_AccessoryActor):
    role = "focuser"

    def receiveMsg_MoveFocuser(self, msg: MoveFocuser, sender):
        target = int(msg.position)

        def reached(status):
            if status.get("moving"):
                return None
            return abs(int(status.get("position", -10 ** 9)) - target) <= 1
        self._begin("focus", lambda: self.driver.move_to(target, wait=False), reached, msg, sender)


class FilterWheelActor(_AccessoryActor):
    role = "filterwheel"

    def receiveMsg_SetFilter(self, msg: SetFilter, sender):
        slot = {}

        def start():
            slot["n"] = self.driver.set_filter(msg.filter, wait=False)

        def reached(status):
            if status.get("moving"):
                return None
            return status.get("slot") == slot["n"]
        self._begin("filter", start, reached, msg, sender)

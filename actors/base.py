"""What every actor of the unit shares: initialisation, logging, status,
wakeups, and turning a handler's exception into a reply instead of Thespian's
retry-then-PoisonMessage."""
from __future__ import annotations

import os
import traceback
from datetime import timedelta

from thespian.actors import ActorExitRequest, ActorTypeDispatcher, WakeupMessage

from messages import (CommandFailed, DeviceStatus, GetStatus, Heartbeat, HeartbeatReply, Initialize,
                      InitializationFailed, Initialized, Message, PeersChanged, Tick)
from observatory import logs
from observatory.clock import SimClock
from observatory.processes import set_parent_death_signal


class UnitActor(ActorTypeDispatcher):
    role = "actor"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        set_parent_death_signal()
        self.name = self.role
        self.log = None
        self.clock: SimClock | None = None
        self.epoch = 0
        self.pandir = None
        self.site: dict = {}
        self.settings: dict = {}
        self.peers: dict = {}
        self.supervisor = None

    # -- plumbing -----------------------------------------------------------

    def receiveMessage(self, message, sender):
        try:
            super().receiveMessage(message, sender)
        except Exception as exc:  # noqa: BLE001 - one bad message must not kill the device
            if self.log:
                self.log.error("handler_failed", message=type(message).__name__, error=repr(exc),
                               trace=traceback.format_exc())
            if isinstance(message, Message) and not isinstance(message, CommandFailed):
                self.send(sender, CommandFailed(source=self.name, command=type(message).__name__,
                                                error=f"{type(exc).__name__}: {exc}",
                                                request_id=message.request_id))

    def receiveMsg_Initialize(self, msg: Initialize, sender):
        self.name, self.epoch, self.supervisor = msg.name, msg.epoch, sender
        self.clock = SimClock.from_dict(msg.clock)
        self.pandir, self.site, self.settings, self.peers = msg.pandir, msg.site, msg.settings, dict(msg.peers)
        self.log = logs.configure(msg.pandir, msg.name)
        try:
            info = self.setup(msg) or {}
        except Exception as exc:  # noqa: BLE001
            self.log.error("setup_failed", error=repr(exc), trace=traceback.format_exc())
            self.send(sender, InitializationFailed(name=self.name, pid=os.getpid(), epoch=self.epoch,
                                                   error=f"{type(exc).__name__}: {exc}",
                                                   request_id=msg.request_id))
            return
        self.log.info("initialized", epoch=self.epoch, role=self.role)
        self.send(sender, Initialized(name=self.name, pid=os.getpid(), epoch=self.epoch, info=info,
                                      request_id=msg.request_id))

    def receiveMsg_PeersChanged(self, msg: PeersChanged, sender):
        self.peers.update(msg.peers)

    def receiveMsg_GetStatus(self, msg: GetStatus, sender):
        self.send(sender, DeviceStatus(name=self.name, pid=os.getpid(), epoch=self.epoch,
                                       status=self.device_status(), request_id=msg.request_id))

    def receiveMsg_Heartbeat(self, msg: Heartbeat, sender):
        self.send(sender, HeartbeatReply(name=self.name, pid=os.getpid(), epoch=self.epoch,
                                         request_id=msg.request_id))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender):
        if isinstance(msg.payload, Tick):
            self.on_tick(msg.payload)

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender):
        try:
            self.teardown()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass

    def receiveUnrecognizedMessage(self, msg, sender):
        if self.log:
            self.log.warning("unrecognized_message", type=type(msg).__name__)

    # -- helpers for subclasses ---------------------------------------------

    def wake_in_wall(self, seconds: float, kind: str, token=None) -> None:
        self.wakeupAfter(timedelta(seconds=max(0.001, seconds)), payload=Tick(kind, token))

    def wake_in_sim(self, sim_seconds: float, kind: str, token=None, *, min_wall: float = 0.002,
                    max_wall: float = 0.5) -> None:
        """Wake after ``sim_seconds`` of simulated time, but never later than ``max_wall``
        wall seconds (so slow clocks still poll often enough)."""
        wall = min(max(self.clock.wall_seconds(sim_seconds), min_wall), max_wall)
        self.wake_in_wall(wall, kind, token)

    # -- for subclasses to override -----------------------------------------

    def setup(self, msg: Initialize) -> dict:
        return {}

    def device_status(self) -> dict:
        return {}

    def on_tick(self, tick: Tick) -> None:
        pass

    def teardown(self) -> None:
        pass

"""What every actor of the unit shares: initialisation, logging, status,
wakeups, and turning a handler's exception into a reply instead of Thespian's
retry-then-PoisonMessage."""
from __future__ import annotations

import os
import time
import traceback
from datetime import timedelta

from thespian.actors import ActorExitRequest, ActorTypeDispatcher, WakeupMessage

from messages import (CommandFailed, ControlReply, DeviceStatus, GetStatus, Heartbeat, HeartbeatReply, Initialize,
                      InitializationFailed, Initialized, InjectFault, Message, PeersChanged, SetConfigValue, Tick)
from observatory import logs
from observatory.clock import SimClock
from observatory.processes import set_parent_death_signal


class UnitActor(ActorTypeDispatcher):
    role = "actor"

    @classmethod
    def actorSystemCapabilityCheck(cls, capabilities, requirements):
        """Thespian asks this (on the class) before placing an actor on an actor
        system, with that system's capabilities and the ``targetActorRequirements``
        given to ``createActor``: ``{"panoptes-host": "camhost1"}`` places the actor
        only on the member host of that name; no requirement, only on the leader
        (observatory/hosts.py, docs/multihost.md)."""
        from observatory.hosts import placement_accepts
        return placement_accepts(capabilities, requirements)

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
        self.fault_raise_next = False     # fault injection (simulation only): see receiveMsg_InjectFault
        self.fault_slow: tuple[float, float] | None = None     # (delay s, until wall time)

    # -- plumbing -----------------------------------------------------------

    def receiveMessage(self, message, sender):
        try:
            if self.fault_slow and isinstance(message, Message) and not isinstance(message, InjectFault):
                delay, until = self.fault_slow
                if time.time() < until:
                    time.sleep(delay)
                else:
                    self.fault_slow = None
            if self.fault_raise_next and isinstance(message, Message) and \
                    not isinstance(message, (Heartbeat, InjectFault, GetStatus)):
                self.fault_raise_next = False
                raise RuntimeError(f"injected fault in the {type(message).__name__} handler")
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

    def receiveMsg_SetConfigValue(self, msg: SetConfigValue, sender):
        """A live change of one of this actor's settings (validated before it was sent)."""
        name = msg.key.split(".", 1)[-1]
        self.settings = {**self.settings, name: msg.value}
        self.reconfigure()
        self.log.info("reconfigured", key=msg.key, value=msg.value)
        self.send(sender, ControlReply(ok=True, result={"key": msg.key, "value": msg.value},
                                       request_id=msg.request_id))

    def receiveMsg_InjectFault(self, msg: InjectFault, sender):
        """Simulation only (the supervisor refuses otherwise): misbehave on purpose."""
        p = msg.params
        self.log.warning("fault_injected", kind=msg.kind, params=p)
        if msg.kind == "raise":
            self.fault_raise_next = True
        elif msg.kind == "slow":
            self.fault_slow = (float(p.get("seconds", 2.0)), time.time() + float(p.get("duration", 60.0)))
        elif msg.kind not in ("exit", "hang"):
            self.inject_device_fault(msg.kind, p)     # raises if this device cannot do it
        self.send(sender, ControlReply(ok=True, result={"target": self.name, "kind": msg.kind},
                                       request_id=msg.request_id))
        if msg.kind in ("exit", "hang"):
            # Later, from a wakeup: the reply must leave this process first.
            self.wake_in_wall(0.2, f"fault-{msg.kind}", float(p.get("seconds", 3600.0)))

    def inject_device_fault(self, kind: str, params: dict) -> None:
        """Faults of the device behind the actor. 'driver_death': its INDI driver
        process is killed (drivers.indi_devices.IndiDevice.kill_driver)."""
        kill = getattr(getattr(self, "driver", None), "kill_driver", None)
        if kind == "driver_death" and kill is not None:
            pid = kill()
            self.log.warning("fault_driver_killed", driver_pid=pid)
            return
        raise ValueError(f"{self.name} cannot simulate a {kind!r} fault")

    def receiveMsg_GetStatus(self, msg: GetStatus, sender):
        self.send(sender, DeviceStatus(name=self.name, pid=os.getpid(), epoch=self.epoch,
                                       status=self.device_status(), request_id=msg.request_id))

    def receiveMsg_Heartbeat(self, msg: Heartbeat, sender):
        self.send(sender, HeartbeatReply(name=self.name, pid=os.getpid(), epoch=self.epoch,
                                         request_id=msg.request_id))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender):
        if isinstance(msg.payload, Tick):
            if msg.payload.kind == "fault-exit":
                os._exit(3)
            elif msg.payload.kind == "fault-hang":
                time.sleep(msg.payload.token)
            else:
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

    def reconfigure(self) -> None:
        """Called after a live settings change; actors that derive state from settings rebuild it."""

    def on_tick(self, tick: Tick) -> None:
        pass

    def teardown(self) -> None:
        pass

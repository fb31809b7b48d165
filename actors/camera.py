"""A camera actor: owns one camera driver; exposures run inside the driver
while this actor polls, so status and aborts are answered at once."""
from __future__ import annotations

from actors.base import UnitActor
from messages import (AbortExposure, ExposureAborted, ExposureComplete, ExposureFailed,
                      ExposureStarted, StartExposure, Tick)


def make_camera_driver(name: str, settings: dict, clock):
    driver = settings.get("driver", "simulator")
    if driver == "simulator":
        from simulators.camera import SimulatedCamera
        return SimulatedCamera(name, settings.get("settings", {}), clock)
    if driver == "indi":
        from drivers.indi import IndiCamera
        return IndiCamera(settings.get("settings", {}), clock, name=name)
    raise ValueError(f"unknown camera driver {driver!r}")


class CameraActor(UnitActor):
    role = "camera"

    def setup(self, msg):
        self.driver = make_camera_driver(self.name, self.settings, self.clock)
        self.current = None            # (StartExposure, requester)
        return {"connect": self.driver.connect()}

    def device_status(self):
        status = dict(self.driver.status())
        status["exposure_id"] = self.current[0].exposure_id if self.current else None
        return status

    def receiveMsg_StartExposure(self, msg: StartExposure, sender):
        if self.current and self.current[0].exposure_id == msg.exposure_id:
            return  # a repeated request for the exposure already running
        self.driver.start_exposure(msg.exptime, msg.path, dict(msg.header), msg.ra_deg, msg.dec_deg,
                                   image_type=msg.image_type)
        self.current = (msg, sender)
        start = self.driver.status().get("start_unix") or self.clock.now()
        self.log.info("exposure_started", exposure_id=msg.exposure_id, exptime=msg.exptime, image_type=msg.image_type)
        self.send(sender, ExposureStarted(camera=self.name, exposure_id=msg.exposure_id, start_unix=start,
                                          request_id=msg.request_id))
        readout = float(self.settings.get("settings", {}).get("readout_time", 5.0))
        self.wake_in_sim(msg.exptime + readout, "poll", msg.exposure_id)

    def receiveMsg_AbortExposure(self, msg: AbortExposure, sender):
        if not self.current:
            return
        start_msg, requester = self.current
        if not self.driver.abort():
            # Too late: the file is being written. It completes normally and is
            # reported as a frame, so that every file on disk has its record.
            self.log.info("abort_too_late", exposure_id=start_msg.exposure_id)
            return
        self.driver.collect()
        self.current = None
        self.log.info("exposure_aborted", exposure_id=start_msg.exposure_id)
        self.send(requester, ExposureAborted(camera=self.name, exposure_id=start_msg.exposure_id,
                                             request_id=start_msg.request_id))

    def on_tick(self, tick: Tick):
        if tick.kind == "cloud-clears":
            if self.clock.now() >= self.cloud_until:
                self.driver.transparency = 1.0
            else:
                self.wake_in_sim(self.cloud_until - self.clock.now(), "cloud-clears")
            return
        if tick.kind != "poll" or not self.current or self.current[0].exposure_id != tick.token:
            return
        start_msg, requester = self.current
        result = self.driver.collect()
        if result is None:
            self.wake_in_sim(0.5, "poll", tick.token, min_wall=0.002, max_wall=0.05)
            return
        self.current = None
        if "error" in result:
            self.log.error("exposure_failed", exposure_id=start_msg.exposure_id, error=result["error"])
            self.send(requester, ExposureFailed(camera=self.name, exposure_id=start_msg.exposure_id,
                                                error=result["error"], request_id=start_msg.request_id))
        elif result.get("aborted"):
            self.send(requester, ExposureAborted(camera=self.name, exposure_id=start_msg.exposure_id,
                                                 request_id=start_msg.request_id))
        else:
            self.log.info("exposure_complete", exposure_id=start_msg.exposure_id, path=result["path"])
            self.send(requester, ExposureComplete(
                camera=self.name, exposure_id=start_msg.exposure_id, path=result["path"],
                image_type=start_msg.image_type, start_unix=result["start_unix"],
                end_unix=result["end_unix"], exptime=result["exptime"], request_id=start_msg.request_id))

    READOUT_FAULTS = {"error": "error", "hang_readout": "hang"}

    def inject_device_fault(self, kind, params):
        """'error': the next readout fails; 'hang_readout': the next readout never ends;
        'cloud': stars dimmed to ``transparency`` (default 0.05) for ``seconds`` (simulated camera)."""
        if kind == "cloud" and hasattr(self.driver, "transparency"):
            self.driver.transparency = float(params.get("transparency", 0.05))
            self.cloud_until = self.clock.now() + float(params.get("seconds", 600.0))
            self.wake_in_sim(float(params.get("seconds", 600.0)), "cloud-clears")
            return
        inject = getattr(self.driver, "inject_fault", None)
        if inject is None or kind not in self.READOUT_FAULTS:
            super().inject_device_fault(kind, params)     # raises, unless the base knows the kind
            return
        inject(self.READOUT_FAULTS[kind])

    def teardown(self):
        driver = getattr(self, "driver", None)
        if driver:
            driver.abort()
            driver.close()

"""The weather station actor: answers with the latest reading, which carries
its own timestamp so that consumers can tell a stale station.

With the simulator, the timeline file is re-read when it changes, so an
operator (or a test) can change the weather of a running simulation; a broken
edit keeps the last good timeline and is logged."""
from __future__ import annotations

import os

from actors.base import UnitActor
from messages import ReadWeather, WeatherReading
from observatory.clock import parse_iso


class WeatherActor(UnitActor):
    role = "weather"

    def setup(self, msg):
        self.driver_name = self.settings.get("driver", "simulator")
        if self.driver_name != "simulator":
            raise ValueError(f"unknown weather driver {self.driver_name!r}")
        from simulators.weather import SimulatedWeatherStation
        start = self.settings.get("timeline_start_unix", self.clock.start_unix)
        self.timeline_start = parse_iso(start) if isinstance(start, str) else float(start)
        self.timeline_path = self.settings.get("timeline")
        self.timeline_mtime = None
        self.driver = SimulatedWeatherStation(self._load_timeline(), self.clock,
                                              sample_interval_s=self.settings.get("sample_interval", 30.0))
        return {"reading": self.driver.read()}

    def _load_timeline(self):
        from simulators.weather import WeatherTimeline
        if not self.timeline_path:
            return WeatherTimeline.from_list([], self.timeline_start)
        self.timeline_mtime = os.stat(self.timeline_path).st_mtime_ns
        return WeatherTimeline.load(self.timeline_path, self.timeline_start)

    def _reload_if_changed(self):
        from simulators.weather import TimelineError
        if not self.timeline_path:
            return
        try:
            if os.stat(self.timeline_path).st_mtime_ns == self.timeline_mtime:
                return
            self.driver.timeline = self._load_timeline()
            self.log.info("weather_timeline_reloaded", path=self.timeline_path)
        except (OSError, TimelineError) as e:
            self.timeline_mtime = None if isinstance(e, OSError) else self.timeline_mtime
            self.log.error("weather_timeline_invalid", error=str(e), note="keeping the last good timeline")

    def device_status(self):
        return self.driver.read() or {}

    def receiveMsg_ReadWeather(self, msg: ReadWeather, sender):
        self._reload_if_changed()
        self.send(sender, WeatherReading(name=self.name, reading=self.driver.read(), request_id=msg.request_id))

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


STATION_DRIVERS = ("cloudwatcher", "indi")     # real stations, polled by the actor


class WeatherActor(UnitActor):
    role = "weather"

    def setup(self, msg):
        self.driver_name = self.settings.get("driver", "simulator")
        if self.driver_name in STATION_DRIVERS:
            return self._setup_station()
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

    # -- a real station (drivers/cloudwatcher.py, drivers/indi.py): polled on its own cadence --

    def _setup_station(self):
        settings = dict(self.settings.get("settings") or {})
        if self.driver_name == "indi":
            from drivers.indi import IndiWeather
            self.driver = IndiWeather(settings, self.clock)
        else:
            from drivers.cloudwatcher import CloudWatcher
            self.driver = CloudWatcher(settings, self.clock)
        self.last_reading = None
        self.read_failures = 0
        self.station_info = None
        self._poll()            # a station that does not answer yet is no reason to fail
        self._schedule_poll()
        return {"connect": self.station_info, "reading": self.last_reading}

    def _schedule_poll(self):
        interval = float(self.settings.get("sample_interval", 30.0))
        self.wake_in_wall(max(self.clock.wall_seconds(interval), 0.05), "poll")

    def _poll(self):
        """Read the station; on failure keep the last good reading (it goes
        stale, and the safety rules say so), log, and try again next time."""
        from drivers.cloudwatcher import CloudWatcherError
        from drivers.indi import IndiError
        try:
            if self.station_info is None:
                self.station_info = self.driver.connect()
                self.log.info("weather_station_connected", station=self.station_info)
            self.last_reading = self.driver.read()
            if self.read_failures:
                self.log.info("weather_station_answering_again", after_failures=self.read_failures)
            self.read_failures = 0
        except (CloudWatcherError, IndiError) as e:
            self.read_failures += 1
            last = self.last_reading["timestamp"] if self.last_reading else None
            log = self.log.error if self.read_failures == 1 else self.log.warning
            if self.read_failures == 1 or self.read_failures % 20 == 0:
                log("weather_station_read_failed", error=str(e), failures=self.read_failures,
                    last_reading_unix=last)

    def on_tick(self, tick):
        if tick.kind == "poll" and self.driver_name in STATION_DRIVERS:
            self._poll()
            self._schedule_poll()

    def _current(self):
        reading = self.last_reading if self.driver_name in STATION_DRIVERS else self.driver.read()
        if self.clock.now() < getattr(self, "rain_injected_until", -1.0):
            reading = dict(reading or {}, rain=True, conditions="rain (injected fault)", timestamp=self.clock.now())
        return reading

    def inject_device_fault(self, kind, params):
        if kind != "unsafe":
            super().inject_device_fault(kind, params)     # raises, unless the base knows the kind
            return
        self.rain_injected_until = self.clock.now() + float(params.get("seconds", 600.0))

    def device_status(self):
        status = dict(self._current() or {})
        if self.driver_name in STATION_DRIVERS:
            status.update(station=self.station_info, read_failures=self.read_failures)
        return status

    def teardown(self):
        close = getattr(getattr(self, "driver", None), "close", None)
        if close is not None:
            close()

    def receiveMsg_ReadWeather(self, msg: ReadWeather, sender):
        if self.driver_name == "simulator":
            self._reload_if_changed()
        self.send(sender, WeatherReading(name=self.name, reading=self._current(), request_id=msg.request_id))

"""The weather station actor: answers with the latest reading, which carries
its own timestamp so that consumers can tell a stale station."""
from __future__ import annotations

from actors.base import UnitActor
from messages import ReadWeather, WeatherReading
from observatory.clock import parse_iso


def make_weather_driver(settings: dict, clock):
    driver = settings.get("driver", "simulator")
    if driver == "simulator":
        from simulators.weather import SimulatedWeatherStation, WeatherTimeline
        start = settings.get("timeline_start_unix", clock.start_unix)
        if isinstance(start, str):
            start = parse_iso(start)
        path = settings.get("timeline")
        timeline = (WeatherTimeline.load(path, start) if path
                    else WeatherTimeline.from_list([], start))
        return SimulatedWeatherStation(timeline, clock, sample_interval_s=settings.get("sample_interval", 30.0))
    raise ValueError(f"unknown weather driver {driver!r}")


class WeatherActor(UnitActor):
    role = "weather"

    def setup(self, msg):
        self.driver = make_weather_driver(self.settings, self.clock)
        return {"reading": self.driver.read()}

    def device_status(self):
        return self.driver.read()

    def receiveMsg_ReadWeather(self, msg: ReadWeather, sender):
        self.send(sender, WeatherReading(name=self.name, reading=self.driver.read(), request_id=msg.request_id))

"""The safety actor: evaluates weather and darkness on its own cadence,
independent of the observing sequence, and tells the supervisor at once when
the verdict changes (and regularly otherwise, so silence is noticed)."""
from __future__ import annotations

from actors.base import UnitActor
from messages import ReadWeather, SafetyVerdict, Tick, WeatherReading
from observatory.astro import Ephemeris, Site
from observatory.weather_rules import WeatherLimits, evaluate_weather


class SafetyActor(UnitActor):
    role = "safety"
    KEEPALIVE_SIM_S = 60.0
    KEEPALIVE_WALL_S = 1.0
    MIN_STALE_WALL_S = 2.0

    def setup(self, msg):
        s = self.settings
        self.ephemeris = Ephemeris(Site(self.site["name"], self.site["latitude"], self.site["longitude"],
                                        self.site["elevation"]))
        self.horizon = float(self.site["observe_horizon"])
        self.limits = WeatherLimits(max_sky_minus_ambient_c=s["max_sky_minus_ambient"], max_wind_kph=s["max_wind"],
                                    max_gust_kph=s["max_gust"], max_age_s=s["max_weather_age"])
        self.last_reading = None
        self.last_verdict = None
        self.last_sent_sim = -1e18
        self.last_sent_wall = 0.0
        self.ephemeris.sun_alt(self.clock.now())     # build the cache before the first check
        self.on_tick(Tick("check"))
        return {"horizon": self.horizon}

    def device_status(self):
        v = self.last_verdict
        return {"safe": v.safe, "reasons": list(v.reasons), "sun_alt_deg": v.sun_alt_deg} if v else {}

    def on_tick(self, tick: Tick):
        if tick.kind != "check":
            return
        weather = self.peers.get("weather")
        if weather is not None:
            self.send(weather, ReadWeather())
        # Evaluate even without a fresh answer: a silent station becomes stale.
        self.evaluate()
        self.wake_in_sim(self.settings["check_interval"], "check",
                         max_wall=self.settings["max_check_wall_interval"])

    def receiveMsg_WeatherReading(self, msg: WeatherReading, sender):
        self.last_reading = msg.reading
        self.evaluate()

    def evaluate(self):
        import time
        now = self.clock.now()
        reading = self.last_reading
        if reading and self.clock.speed > 1 and reading.get("timestamp") is not None:
            # A reading's age is simulated time, but delivering it takes wall time:
            # at high speed a busy machine must not make a live station look dead.
            wall_age = (now - reading["timestamp"]) / self.clock.speed
            if wall_age < self.MIN_STALE_WALL_S:
                reading = dict(reading, timestamp=max(reading["timestamp"], now - self.limits.max_age_s))
        weather_safe, reasons = evaluate_weather(reading, now, self.limits)
        sun_alt = float(self.ephemeris.sun_alt(now))
        reasons = list(reasons)
        if sun_alt > self.horizon:
            reasons.append(f"sun up (altitude {sun_alt:.1f} > {self.horizon:.1f} deg)")
        safe = weather_safe and sun_alt <= self.horizon
        # Changed means another verdict or another kind of reason, not new numbers.
        changed = self.last_verdict is None or safe != self.last_verdict.safe or \
            _kinds(reasons) != _kinds(self.last_verdict.reasons)
        verdict = SafetyVerdict(safe=safe, reasons=tuple(reasons), time_unix=now, sun_alt_deg=sun_alt,
                                weather_safe=weather_safe, changed=changed)
        self.last_verdict = verdict
        wall = time.time()
        if changed or now - self.last_sent_sim >= self.KEEPALIVE_SIM_S or \
                wall - self.last_sent_wall >= self.KEEPALIVE_WALL_S:
            if changed:
                self.log.info("safety_verdict", safe=safe, reasons=reasons, sun_alt=round(sun_alt, 2))
            self.send(self.supervisor, verdict)
            self.last_sent_sim, self.last_sent_wall = now, wall


def _kinds(reasons) -> tuple:
    return tuple(r.split(" ", 1)[0] for r in reasons)

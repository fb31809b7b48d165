"""Calibration frames: twilight flats (when, and how long each exposure) and
the bias and dark frames of housekeeping.

Pure logic, no actors and no devices. The caller (the supervisor) takes the
frames, measures each flat's median level, and asks for the next exposure
time.

Twilight sky model (the same as the camera simulator's, see
docs/focus_and_calibration.md): between the sun at about -2 and -12 degrees
the sky fades by a roughly constant factor per degree of solar depression,
``TWILIGHT_FACTOR_PER_DEG`` (2.75, 1.1 mag per degree). ``flat_exposure``
uses it to predict how much darker (evening) or brighter (morning) the sky
will be during the next frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = ["TWILIGHT_FACTOR_PER_DEG", "FlatExposure", "flat_exposure", "flat_level_ok",
           "FlatWindows", "flat_window", "sun_alt_trend", "FlatSettings", "FlatStep", "FlatSequence",
           "CalibrationStep", "CalibrationPlan", "flat_pointing"]

TWILIGHT_FACTOR_PER_DEG = 2.75
_DAY_S = 86400.0


# ---------------------------------------------------------------------------
# Flat exposure times


@dataclass(frozen=True)
class FlatExposure:
    """The next flat's exposure time.

    ``exptime`` is within [min_exptime, max_exptime]; ``wanted_exptime`` is
    the time the prediction asked for before clamping (``inf`` when the sky
    fades too fast to ever reach the target). ``status``:

    - 'ok': ``exptime`` should give the target level;
    - 'too_bright': the target needs less than ``min_exptime`` (evening: wait
      for the sky to darken; morning: flats are over);
    - 'too_dark': the target needs more than ``max_exptime`` (evening: flats
      are over; morning: wait);
    - 'saturated': the last frame was saturated, its level says nothing:
      ``exptime`` is a tenth of the last one (at least ``min_exptime``).

    ``predicted_adu`` is the raw median expected at ``exptime`` (NaN when
    saturated); ``rate_adu_s`` the sky signal rate the last frame measured.
    """

    exptime: float
    wanted_exptime: float
    status: str
    predicted_adu: float
    rate_adu_s: float


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def flat_exposure(previous_exptime: float, measured_median: float, target_adu: float, bias: float,
                  min_exptime: float, max_exptime: float, sun_alt_trend: float = 0.0, *,
                  overhead_s: float = 10.0, factor_per_deg: float = TWILIGHT_FACTOR_PER_DEG,
                  saturation_adu: float | None = None) -> FlatExposure:
    """The exposure time for the next twilight flat to reach ``target_adu``.

    ``measured_median`` and ``target_adu`` are raw levels as read from the
    file (bias included); ``bias`` is the bias level (ADU). The previous
    frame's mean sky rate is (median - bias) / previous_exptime.

    ``sun_alt_trend`` is how fast the sun's altitude changes, degrees per
    minute (negative in the evening, positive in the morning; about 0.2-0.25
    at mid latitudes, see ``sun_alt_trend()``). With the sky changing by
    ``factor_per_deg`` per degree, the rate is
    r(t) = r0 * exp(k t), k = ln(factor_per_deg) * trend / 60 per second:
    the previous frame's mean rate gives r0 at its start, the next frame
    starts ``overhead_s`` (readout, writing, measuring) after the previous
    one ended, and its exposure time t solves r_start (e^(k t) - 1) / k =
    target - bias. With no trend this is the plain ratio
    previous_exptime * (target - bias) / (median - bias).
    """
    previous = _positive("previous_exptime", previous_exptime)
    min_exptime, max_exptime = _positive("min_exptime", min_exptime), _positive("max_exptime", max_exptime)
    if min_exptime > max_exptime:
        raise ValueError(f"min_exptime {min_exptime} > max_exptime {max_exptime}")
    if not all(math.isfinite(v) for v in (measured_median, target_adu, bias, sun_alt_trend, overhead_s)):
        raise ValueError("flat_exposure needs finite levels, trend and overhead")
    if target_adu <= bias:
        raise ValueError(f"target level {target_adu} ADU must be above the bias {bias} ADU")
    if overhead_s < 0:
        raise ValueError(f"overhead_s must be >= 0, got {overhead_s}")
    if factor_per_deg <= 1.0:
        raise ValueError(f"factor_per_deg must be > 1, got {factor_per_deg}")

    def clamp(t: float) -> float:
        return min(max(t, min_exptime), max_exptime)

    if saturation_adu is not None and measured_median >= 0.95 * float(saturation_adu):
        exptime = clamp(previous / 10.0)
        status = "too_bright" if previous <= min_exptime else "saturated"
        return FlatExposure(exptime, math.nan, status, math.nan, math.nan)
    signal = float(measured_median) - float(bias)
    wanted_signal = float(target_adu) - float(bias)
    if signal <= 0.5:
        # No light at all (the shutter, or night): nothing to scale.
        return FlatExposure(max_exptime, math.inf, "too_dark", float(bias), 0.0)
    mean_rate = signal / previous
    k = math.log(factor_per_deg) * float(sun_alt_trend) / 60.0

    def grown(t: float) -> float:
        """(e^(k t) - 1) / k, t when k = 0: the signal of a unit starting rate."""
        return math.expm1(k * t) / k if k else t

    start_rate = mean_rate * previous / grown(previous)            # r0 at the previous start
    next_rate = start_rate * math.exp(k * (previous + float(overhead_s)))
    argument = 1.0 + k * wanted_signal / next_rate
    wanted = (math.log1p(k * wanted_signal / next_rate) / k if k else wanted_signal / next_rate) \
        if argument > 0 else math.inf
    exptime = clamp(wanted)
    status = "too_bright" if wanted < min_exptime else "too_dark" if wanted > max_exptime else "ok"
    predicted = float(bias) + next_rate * grown(exptime)
    return FlatExposure(exptime, wanted, status, predicted, mean_rate)


def flat_level_ok(measured_median: float, target_adu: float, bias: float, tolerance: float = 0.25) -> bool:
    """Whether a flat's level is close enough to the target to keep: the
    signal (median - bias) within ``tolerance`` (a fraction) of the target's."""
    wanted = float(target_adu) - float(bias)
    return wanted > 0 and abs((float(measured_median) - float(bias)) / wanted - 1.0) <= tolerance


# ---------------------------------------------------------------------------
# When


SunAlt = Callable[[object], object]


def _sun_alt_function(sun_alt) -> SunAlt:
    fn = getattr(sun_alt, "sun_alt", sun_alt)
    if not callable(fn):
        raise TypeError("expected an Ephemeris (with sun_alt) or a function unix -> sun altitude (deg)")
    return fn


def _alt_array(fn: SunAlt, times: np.ndarray) -> np.ndarray:
    try:
        alt = np.asarray(fn(times), dtype=float)
        if alt.shape == times.shape:
            return alt
    except (TypeError, ValueError):
        pass
    return np.array([float(fn(float(t))) for t in times])


def sun_alt_trend(sun_alt, unix: float, dt_s: float = 60.0) -> float:
    """How fast the sun's altitude changes at ``unix``, degrees per minute
    (centred difference over ``dt_s``); ``sun_alt`` is an Ephemeris or a
    function unix -> altitude."""
    fn = _sun_alt_function(sun_alt)
    return (float(fn(unix + dt_s / 2.0)) - float(fn(unix - dt_s / 2.0))) / dt_s * 60.0


@dataclass(frozen=True)
class FlatWindows:
    """Evening and morning (start_unix, end_unix) with the sun between
    ``low`` and ``high`` degrees, or None when the night has none."""

    evening: tuple[float, float] | None
    morning: tuple[float, float] | None
    high: float
    low: float

    def which(self, unix: float) -> str | None:
        """'evening' or 'morning' when ``unix`` lies in that window, else None."""
        for name in ("evening", "morning"):
            window = getattr(self, name)
            if window and window[0] <= unix <= window[1]:
                return name
        return None

    def to_dict(self) -> dict:
        return {"evening": list(self.evening) if self.evening else None,
                "morning": list(self.morning) if self.morning else None,
                "high": self.high, "low": self.low}


def _night_span(night, longitude_deg: float | None) -> tuple[float, float]:
    if isinstance(night, str):
        if longitude_deg is None:
            raise ValueError("a night given as a date needs the site's longitude")
        midnight = datetime.strptime(night, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
        noon = midnight + 43200.0 - float(longitude_deg) * 240.0   # local mean noon of that date
        return noon, noon + _DAY_S
    if isinstance(night, (int, float)):
        return float(night), float(night) + _DAY_S
    start, end = (float(v) for v in night)
    if not end > start:
        raise ValueError(f"night span {night} is empty")
    return start, end


def _bisect(fn: SunAlt, t0: float, t1: float, level: float, tol_s: float = 1.0) -> float:
    a0 = float(fn(t0)) - level
    while t1 - t0 > tol_s:
        mid = 0.5 * (t0 + t1)
        am = float(fn(mid)) - level
        if (am > 0) == (a0 > 0):
            t0, a0 = mid, am
        else:
            t1 = mid
    return 0.5 * (t0 + t1)


def _lowest(fn: SunAlt, t0: float, t1: float, tol_s: float = 1.0) -> float:
    """Time of the sun's lowest point in [t0, t1] (golden-section search)."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = t0, t1
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = float(fn(c)), float(fn(d))
    while b - a > tol_s:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = float(fn(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = float(fn(d))
    return 0.5 * (a + b)


def flat_window(sun_alt, night, *, high: float = -3.0, low: float = -10.0, step_s: float = 60.0,
                longitude_deg: float | None = None) -> FlatWindows:
    """The evening and morning twilight windows for flats in one night.

    ``sun_alt``: an ``observatory.astro.Ephemeris`` or any function unix ->
    sun altitude (degrees; scalar, or array if it can). ``night``: the span
    to search, as (start_unix, end_unix), a unix time (the next 24 h), or a
    'YYYY-MM-DD' night date (local mean noon of that date to the next; needs
    ``longitude_deg`` unless ``sun_alt`` is an Ephemeris). The evening window
    is the first stretch of the span with the sun setting from ``high`` down
    to ``low``; the morning window the last with it rising from ``low`` to
    ``high``. Where the sun never gets down to ``low`` (high-latitude
    summer) the windows meet at its lowest point; a stretch the span cuts
    is cut too. Boundaries are found on a ``step_s`` grid, then to a second.
    """
    if not high > low:
        raise ValueError(f"high {high} must be above low {low}")
    fn = _sun_alt_function(sun_alt)
    if longitude_deg is None and hasattr(sun_alt, "site"):
        longitude_deg = sun_alt.site.longitude_deg
    start, end = _night_span(night, longitude_deg)
    n = max(2, int(math.ceil((end - start) / step_s)) + 1)
    times = np.linspace(start, end, n)
    alt = _alt_array(fn, times)
    in_band = (alt >= low) & (alt <= high)
    # Runs of grid points inside the band.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], in_band.astype(np.int8), [0]])))
    runs = list(zip(edges[::2], edges[1::2] - 1))
    evening: tuple[float, float] | None = None
    morning: tuple[float, float] | None = None

    def boundary(i_out: int, i_in: int) -> float:
        """Refined time where the altitude crosses the band edge between two grid points."""
        a_out = alt[i_out]
        level = high if a_out > high else low
        lo_t, hi_t = sorted((times[i_out], times[i_in]))
        return _bisect(fn, lo_t, hi_t, level)

    for i0, i1 in runs:
        t_start = boundary(i0 - 1, i0) if i0 > 0 else float(times[0])
        t_end = boundary(i1 + 1, i1) if i1 < n - 1 else float(times[-1])
        segment = alt[i0:i1 + 1]
        turn = int(np.argmin(segment)) + i0
        falls = alt[i1] < alt[i0] if i1 > i0 else (i1 + 1 < n and alt[i1 + 1] < alt[i1])
        entered_high = i0 == 0 or alt[i0 - 1] > high
        left_high = i1 == n - 1 or alt[i1 + 1] > high
        if entered_high and left_high and i0 < turn < i1 and alt[turn] > low:
            # The sun dips into the band and comes back up without reaching low.
            t_turn = _lowest(fn, float(times[max(turn - 1, 0)]), float(times[min(turn + 1, n - 1)]))
            parts = [("evening", t_start, t_turn), ("morning", t_turn, t_end)]
        else:
            parts = [("evening" if falls else "morning", t_start, t_end)]
        for name, a, b in parts:
            if name == "evening" and evening is None:
                evening = (a, b)
            elif name == "morning":
                morning = (a, b)
    if evening and morning and morning[1] <= evening[0]:
        morning = None      # a morning before the evening belongs to the previous night
    return FlatWindows(evening, morning, float(high), float(low))


# ---------------------------------------------------------------------------
# A window's flats, frame by frame


# No camera is exposed beyond this fraction of its range (bias to saturation).
SAFE_FRACTION = 0.9


@dataclass(frozen=True)
class FlatSettings:
    """What one twilight window's flats aim for (config ``calibration``).

    ``target_fraction`` places the target level between the bias and the
    saturation level; ``tolerance`` is how far (a fraction of the target's
    signal) a kept flat may be from it; ``max_failures`` rounds in a row
    without a usable level end the window."""

    n_flats: int = 5
    target_fraction: float = 0.45
    tolerance: float = 0.25
    min_exptime: float = 0.5
    max_exptime: float = 60.0
    initial_exptime: float = 1.0
    wait_s: float = 60.0
    max_failures: int = 3


@dataclass(frozen=True)
class FlatStep:
    """What to do after a flat round: 'expose' ``exptime`` now, 'wait'
    ``wait_s`` and then expose ``exptime``, or 'done' (``reason`` says why)."""

    action: str
    exptime: float = 0.0
    wait_s: float = 0.0
    reason: str = ""


class FlatSequence:
    """The flats of one twilight window on a set of cameras exposing together.

    ``which`` is 'evening' (the sky darkens: too bright means wait, too dark
    means over) or 'morning' (the reverse). Each round gives every camera
    the same exposure time; ``record`` takes the raw median level of each
    camera's frame (None when it failed), counts the frames whose level is
    within the tolerance of the target, and says what comes next. The next
    exposure time aims at the camera with the fewest flats kept so far
    (cameras differ in sensitivity: they take turns), capped so that no
    camera goes beyond 90 % of its range.
    """

    def __init__(self, which: str, cameras: Iterable[str], settings: FlatSettings,
                 levels: dict[str, tuple[float, float]]):
        """``levels``: camera -> (bias ADU, saturation ADU)."""
        if which not in ("evening", "morning"):
            raise ValueError(f"which must be 'evening' or 'morning', got {which!r}")
        self.which, self.settings = which, settings
        self.cameras = list(cameras)
        if not self.cameras:
            raise ValueError("flats need at least one camera")
        self.levels = {}
        for cam in self.cameras:
            bias, saturation = levels.get(cam, (0.0, 15000.0))
            if not saturation > bias:
                raise ValueError(f"{cam}: saturation {saturation} ADU must be above the bias {bias} ADU")
            self.levels[cam] = (float(bias), float(saturation))
        self.kept = {cam: 0 for cam in self.cameras}
        self.taken = 0
        self.failures = 0
        self.exptime = min(max(settings.initial_exptime, settings.min_exptime), settings.max_exptime)
        self.done_reason = ""

    def target(self, camera: str) -> float:
        bias, saturation = self.levels[camera]
        return bias + self.settings.target_fraction * (saturation - bias)

    def level_ok(self, camera: str, level: float | None) -> bool:
        return level is not None and math.isfinite(level) and \
            flat_level_ok(level, self.target(camera), self.levels[camera][0], self.settings.tolerance)

    @property
    def done(self) -> bool:
        return bool(self.done_reason)

    def _finish(self, reason: str) -> FlatStep:
        self.done_reason = reason
        return FlatStep("done", reason=reason)

    def record(self, exptime: float, levels: dict[str, float | None], sun_trend_deg_per_min: float,
               overhead_s: float) -> FlatStep:
        """One round's levels (camera -> raw median ADU or None); the next step."""
        self.taken += 1
        for cam, level in levels.items():
            if cam in self.kept and self.level_ok(cam, level):
                self.kept[cam] += 1
        if all(n >= self.settings.n_flats for n in self.kept.values()):
            return self._finish(f"{self.settings.n_flats} flats on every camera")
        usable = {c: v for c, v in levels.items() if c in self.levels and v is not None and math.isfinite(v)}
        if not usable:
            self.failures += 1
            if self.failures >= self.settings.max_failures:
                return self._finish(f"{self.failures} rounds without a usable frame")
            return FlatStep("expose", exptime=self.exptime)
        self.failures = 0
        s = self.settings
        plans = {}
        for cam, level in usable.items():
            bias, saturation = self.levels[cam]
            plans[cam] = flat_exposure(exptime, level, self.target(cam), bias, s.min_exptime, s.max_exptime,
                                       sun_trend_deg_per_min, overhead_s=max(0.0, overhead_s),
                                       saturation_adu=saturation)
        # The camera with the fewest flats kept sets the time (cameras differ in
        # sensitivity, so they take turns), capped so that no camera saturates.
        needy = min(plans, key=lambda c: (self.kept[c] >= s.n_flats, self.kept[c], c))
        nxt = plans[needy]
        exptime_next = nxt.exptime
        for cam, plan in plans.items():
            bias, saturation = self.levels[cam]
            if plan.status == "saturated":
                cap = plan.exptime
            elif math.isfinite(plan.wanted_exptime):
                cap = plan.wanted_exptime * SAFE_FRACTION * (saturation - bias) / (self.target(cam) - bias)
            else:
                continue
            exptime_next = min(exptime_next, max(cap, s.min_exptime))
        self.exptime = exptime_next
        evening = self.which == "evening"
        if nxt.status == "too_bright":
            if not evening:
                return self._finish("the sky is too bright for the shortest exposure")
            return FlatStep("wait", exptime=s.min_exptime, wait_s=s.wait_s)
        if nxt.status == "too_dark":
            if evening:
                return self._finish("the sky is too dark for the longest exposure")
            return FlatStep("wait", exptime=s.max_exptime, wait_s=s.wait_s)
        return FlatStep("expose", exptime=exptime_next)

    def to_dict(self) -> dict:
        return {"which": self.which, "taken": self.taken, "kept": dict(self.kept),
                "exptime": self.exptime, "done": self.done_reason}


# ---------------------------------------------------------------------------
# Bias and darks


@dataclass(frozen=True)
class CalibrationStep:
    image_type: str     # 'bias' or 'dark'
    exptime: float
    count: int

    def seconds(self, readout_s: float) -> float:
        return self.count * (self.exptime + readout_s)


@dataclass(frozen=True)
class CalibrationPlan:
    """Bias and dark frames for housekeeping.

    ``steps`` hold (image_type, exptime, count); ``frames()`` lists every
    frame in the order to take them: the bias frames first, then the darks
    taking their exposure times in turn (so that an interrupted run still
    has some darks of every exposure time).
    """

    steps: tuple[CalibrationStep, ...]

    @classmethod
    def for_night(cls, science_exptimes: Iterable[float], *, n_bias: int = 20, n_darks: int = 10,
                  max_dark_exptimes: int = 4, extra_exptimes: Sequence[float] = (),
                  decimals: int = 3) -> "CalibrationPlan":
        """Bias and darks matching the night's exposures.

        ``science_exptimes``: the exposure times of the night's frames (one
        per frame, repeats welcome: the most used times come first and are
        kept when there are more than ``max_dark_exptimes``). Times are
        rounded to ``decimals``; zero and negative times are ignored.
        ``extra_exptimes`` are always added (e.g. the pointing exposure).
        """
        for name, value in (("n_bias", n_bias), ("n_darks", n_darks), ("max_dark_exptimes", max_dark_exptimes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        usage: dict[float, int] = {}
        for t in science_exptimes:
            if t is None or not math.isfinite(float(t)) or float(t) <= 0:
                continue
            key = round(float(t), decimals)
            usage[key] = usage.get(key, 0) + 1
        chosen = sorted(usage, key=lambda t: (-usage[t], -t))[:max_dark_exptimes]
        for t in extra_exptimes:
            key = round(float(t), decimals)
            if key > 0 and key not in chosen:
                chosen.append(key)
        steps = []
        if n_bias:
            steps.append(CalibrationStep("bias", 0.0, n_bias))
        if n_darks:
            steps.extend(CalibrationStep("dark", t, n_darks) for t in chosen)
        return cls(tuple(steps))

    def frames(self) -> list[tuple[str, float]]:
        """(image_type, exptime) of every frame, in order."""
        out = [(s.image_type, s.exptime) for s in self.steps if s.image_type == "bias" for _ in range(s.count)]
        darks = [s for s in self.steps if s.image_type != "bias"]
        for i in range(max((s.count for s in darks), default=0)):
            out.extend((s.image_type, s.exptime) for s in darks if i < s.count)
        return out

    def duration(self, readout_s: float) -> float:
        """Seconds the plan takes with ``readout_s`` per frame (one camera)."""
        return sum(s.seconds(readout_s) for s in self.steps)

    def trimmed(self, budget_s: float, readout_s: float, min_count: int = 3) -> "CalibrationPlan":
        """The plan cut to fit ``budget_s``: counts lowered in proportion
        (the costliest first, not below ``min_count``), then the longest
        darks dropped if it still does not fit."""
        counts = [s.count for s in self.steps]
        steps = list(self.steps)

        def total() -> float:
            return sum(c * (s.exptime + readout_s) for s, c in zip(steps, counts))

        while total() > budget_s:
            # The step furthest above its share (relative to its original count) loses one frame.
            candidates = [i for i, c in enumerate(counts) if c > min(min_count, steps[i].count)]
            if not candidates:
                break
            i = max(candidates, key=lambda j: (counts[j] / steps[j].count, steps[j].exptime))
            counts[i] -= 1
        kept = [CalibrationStep(s.image_type, s.exptime, c) for s, c in zip(steps, counts) if c > 0]
        while kept and sum(s.seconds(readout_s) for s in kept) > budget_s:
            longest = max(range(len(kept)), key=lambda j: kept[j].exptime)
            kept.pop(longest)
        return CalibrationPlan(tuple(kept))

    def __len__(self) -> int:
        return sum(s.count for s in self.steps)

    def to_dict(self) -> dict:
        return {"steps": [{"image_type": s.image_type, "exptime": s.exptime, "count": s.count}
                          for s in self.steps], "frames": len(self)}


def flat_pointing(sun_az_deg: float, lst_deg: float, latitude_deg: float, zenith_distance_deg: float = 13.0,
                  dither_index: int = 0, dither_arcmin: float = 0.0) -> tuple[float, float, tuple[float, float]]:
    """Where a twilight flat points: (RA, Dec, (east, north) dither offset in arcsec).

    ``zenith_distance_deg`` from the zenith in the azimuth opposite the sun,
    where the twilight sky is flattest (Chromey & Hasselbacher 1996, PASP 108,
    944: the gradient is least about 13 degrees from the zenith, away from the
    sun). Successive flats step through the dice-9 dither pattern so that stars
    fall on different pixels and a median combination rejects them; re-pointing
    at the same altitude and azimuth moves the stars as well, with the sky's
    rotation."""
    from observatory.astro import dither_offset, hadec_from_altaz
    from observatory.solver import tan_deproject
    ha, dec = hadec_from_altaz(90.0 - zenith_distance_deg, (sun_az_deg + 180.0) % 360.0, latitude_deg)
    ra = (lst_deg - ha) % 360.0
    dec = max(-85.0, min(85.0, dec))          # clear of the pole, where RA offsets mean nothing
    east, north = dither_offset(dither_index, dither_arcmin * 60.0)
    if east or north:
        ras, decs = tan_deproject([east / 3600.0], [north / 3600.0], ra, dec)
        ra, dec = float(ras[0]) % 360.0, float(decs[0])
    return ra, dec, (east, north)

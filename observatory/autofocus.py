"""Autofocus: sweep planning, V-curve fitting, a small sweep state machine and
the refocus rule.

Pure logic, no actors and no devices: the caller (the supervisor) moves the
focuser, exposes, measures each frame with ``observatory.imaging.measure_frame``
and feeds the star size back. Positions are focuser steps (integers); star
sizes are the half-flux diameter in pixels (HFD; ``FrameMetrics.fwhm_px`` is
twice the half-flux radius, which is the HFD, corrected for the pixel).

The V-curve model: a star's image is the in-focus image (seeing and optics,
HFD ``a``) blurred by the defocus disc whose diameter grows linearly with the
distance from best focus ``c``; added in quadrature,

    HFD(x) = sqrt(a^2 + b^2 (x - c)^2)

a hyperbola with asymptotes of slope +-b. HFD^2 is then a parabola in x, so
the fit is a weighted linear least-squares fit of HFD^2 (weights making the
residuals relative, since the scatter of HFD grows with HFD), after
outliers are found against a least-trimmed-residuals start that they cannot
drag. ``model="parabola"`` fits HFD itself with a parabola instead
(a classic choice for narrow sweeps near focus).

Typical use, once per focus run::

    af = Autofocus(start=focuser_position, limits=(0, max_position), settings=AutofocusSettings())
    while (pos := af.next_position()) is not None:
        move the focuser to pos; expose a 'focus' frame with FOCUSPOS = pos; measure it
        af.record(pos, metrics.fwhm_px, metrics.n_stars)
    if af.result.ok: move to af.result.position  else: move back to af.start
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["AutofocusSettings", "FocusFit", "AutofocusResult", "Autofocus",
           "plan_sweep", "fit_focus", "needs_refocus"]

# Smallest relative scatter assumed when rejecting outliers: a perfect
# fit must not make every point an outlier.
_MIN_REL_SCALE = 0.03
_MODELS = ("hyperbola", "parabola")


# ---------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class AutofocusSettings:
    """Autofocus and refocus settings (all optional).

    Sweeps: ``coarse_half_width`` steps each side of the start, in
    ``coarse_steps`` positions; then ``fine_steps`` positions within
    ``fine_half_width`` of the coarse minimum (None: 1.5 coarse spacings).
    A sweep whose minimum lies at or beyond its edge is extended that way up
    to ``max_extensions`` times per phase; ``max_frames`` bounds the run.
    Frames with fewer than ``min_stars`` stars, or no HFD, count as missing.

    Fit acceptance (``fit_focus``): at least ``min_points`` points kept, at
    least ``min_side`` on each side of the minimum (``coarse_min_side`` in
    the coarse sweep, whose minimum the fine sweep checks), relative RMS residual at
    most ``max_rel_rms``, and the V at least ``min_depth`` deep (the model
    HFD at the sweep end farthest from focus over the minimum HFD).

    Refocus (``needs_refocus``): when the median FWHM of the last
    ``refocus_window`` frames (at least ``refocus_min_frames``) is more than
    ``refocus_fwhm_fraction`` above the FWHM at the last focus, or the
    ambient temperature moved by ``refocus_temp_c`` degrees C or more.

    ``exptime`` is the focus frames' exposure time (for the caller).
    """

    coarse_half_width: int = 1000
    coarse_steps: int = 9
    fine_half_width: int | None = None
    fine_steps: int = 7
    max_extensions: int = 3
    max_frames: int = 40
    min_stars: int = 3
    model: str = "hyperbola"
    min_points: int = 5
    min_side: int = 2
    coarse_min_side: int = 1
    max_rel_rms: float = 0.15
    min_depth: float = 1.15
    clip_sigma: float = 3.0
    exptime: float = 30.0
    refocus_fwhm_fraction: float = 0.25
    refocus_temp_c: float = 2.0
    refocus_window: int = 5
    refocus_min_frames: int = 3

    def __post_init__(self):
        for name in ("coarse_half_width", "coarse_steps", "fine_steps", "max_frames",
                     "min_points", "refocus_window", "refocus_min_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"autofocus setting {name} must be a whole number >= 1, got {value!r}")
        for name in ("max_extensions", "min_stars", "min_side", "coarse_min_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"autofocus setting {name} must be a whole number >= 0, got {value!r}")
        if self.fine_half_width is not None and (
                isinstance(self.fine_half_width, bool) or not isinstance(self.fine_half_width, int)
                or self.fine_half_width < 1):
            raise ValueError(f"autofocus setting fine_half_width must be null or a whole number >= 1, "
                             f"got {self.fine_half_width!r}")
        if self.coarse_steps < 3 or self.fine_steps < 3:
            raise ValueError("autofocus sweeps need at least 3 positions")
        for name in ("max_rel_rms", "min_depth", "clip_sigma", "exptime",
                     "refocus_fwhm_fraction", "refocus_temp_c"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ValueError(f"autofocus setting {name} must be a number > 0, got {value!r}")
        if self.min_depth < 1.0:
            raise ValueError(f"autofocus setting min_depth must be >= 1, got {self.min_depth}")
        if self.model not in _MODELS:
            raise ValueError(f"autofocus setting model must be one of {list(_MODELS)}, got {self.model!r}")

    @classmethod
    def from_mapping(cls, mapping: Mapping | None) -> "AutofocusSettings":
        """From a configuration mapping; unknown keys are a ValueError."""
        mapping = dict(mapping or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"unknown autofocus setting(s) {unknown}; known: {sorted(known)}")
        return cls(**mapping)

    @property
    def coarse_spacing(self) -> float:
        return 2.0 * self.coarse_half_width / (self.coarse_steps - 1)

    @property
    def fine_width(self) -> int:
        if self.fine_half_width is not None:
            return self.fine_half_width
        return max(1, int(round(1.5 * self.coarse_spacing)))


# ---------------------------------------------------------------------------
# Sweeps


def plan_sweep(center: float, half_width: float, steps: int,
               limits: tuple[int, int] | Sequence[int]) -> list[int]:
    """``steps`` evenly spaced focuser positions over center +- half_width, ascending.

    A sweep that would cross a focuser limit is slid back inside, keeping
    its width (so a start near a limit still gets a full sweep); one wider
    than the focuser's range covers the whole range. Positions are rounded
    to whole steps; duplicates (a sweep narrower than its number of
    positions) are dropped.
    """
    lo_limit, hi_limit = int(limits[0]), int(limits[1])
    if hi_limit < lo_limit:
        raise ValueError(f"focuser limits {limits} are reversed")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"a sweep needs a whole number of positions >= 1, got {steps!r}")
    if not (math.isfinite(center) and math.isfinite(half_width)) or half_width < 0:
        raise ValueError(f"bad sweep centre {center} or half width {half_width}")
    steps = int(steps)
    center = min(max(float(center), lo_limit), hi_limit)
    if steps == 1 or half_width == 0:
        return [int(round(center))]
    if 2.0 * half_width >= hi_limit - lo_limit:
        lo, hi = float(lo_limit), float(hi_limit)
    else:
        lo, hi = center - half_width, center + half_width
        if lo < lo_limit:
            lo, hi = float(lo_limit), lo_limit + 2.0 * half_width
        elif hi > hi_limit:
            lo, hi = hi_limit - 2.0 * half_width, float(hi_limit)
    positions = np.rint(np.linspace(lo, hi, steps)).astype(int)
    positions = np.clip(positions, lo_limit, hi_limit)
    return sorted({int(p) for p in positions})


# ---------------------------------------------------------------------------
# Fitting


@dataclass(frozen=True)
class FocusFit:
    """A V-curve fit.

    ``ok`` False means do not trust ``best_position``; ``reason`` says why,
    and ``direction`` is -1 or +1 when the minimum lies at or beyond the low
    or high end of the points (extend the sweep that way), else 0.
    ``rel_rms`` (the goodness) is the RMS of HFD_measured / HFD_model - 1
    over the points kept; ``position_error`` is the 1-sigma uncertainty of
    ``best_position`` (steps) from the fit's covariance; ``slope`` is the
    asymptotic HFD change per step (b); ``rejected`` lists the positions
    dropped as outliers.
    """

    ok: bool
    best_position: float
    min_hfd: float
    reason: str = ""
    direction: int = 0
    rel_rms: float = math.nan
    position_error: float = math.nan
    slope: float = math.nan
    depth: float = math.nan
    n_used: int = 0
    rejected: tuple[float, ...] = ()
    model: str = "hyperbola"

    def to_dict(self) -> dict:
        def clean(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v
        return {f.name: (list(getattr(self, f.name)) if f.name == "rejected" else clean(getattr(self, f.name)))
                for f in fields(self)}


def _finite_pairs(positions, hfds) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray([math.nan if p is None else p for p in positions], dtype=float)
    h = np.asarray([math.nan if v is None else v for v in hfds], dtype=float)
    if x.shape != h.shape or x.ndim != 1:
        raise ValueError(f"positions and HFDs must be two sequences of one length, "
                         f"got {x.shape} and {h.shape}")
    good = np.isfinite(x) & np.isfinite(h) & (h > 0)
    return x[good], h[good]


def _poly_fit(u: np.ndarray, h: np.ndarray, model: str):
    """Weighted quadratic fit; returns (coefficients [A, B, C], covariance, predicted HFD)."""
    design = np.stack([u * u, u, np.ones_like(u)], axis=1)
    if model == "hyperbola":
        target, sd = h * h, h * h          # relative residuals in HFD^2
    else:
        target, sd = h, h                  # relative residuals in HFD
    sw = 1.0 / sd
    coef, *_ = np.linalg.lstsq(design * sw[:, None], target * sw, rcond=None)
    y = design @ coef
    predicted = np.sqrt(np.maximum(y, 1e-12)) if model == "hyperbola" else np.maximum(y, 1e-6)
    dof = max(len(u) - 3, 1)
    chi2 = float(np.sum(((target - y) * sw) ** 2)) / dof
    try:
        cov = np.linalg.inv((design * sw[:, None]).T @ (design * sw[:, None])) * chi2
    except np.linalg.LinAlgError:
        cov = np.full((3, 3), np.nan)
    return coef, cov, predicted


def _predict(coef: np.ndarray, u: np.ndarray, model: str) -> np.ndarray:
    """Model HFD at ``u`` for one (3,) or many (m, 3) coefficient sets; NaN where undefined."""
    coef = np.atleast_2d(coef)
    y = coef[:, 0:1] * u * u + coef[:, 1:2] * u + coef[:, 2:3]
    with np.errstate(invalid="ignore"):
        out = np.sqrt(y) if model == "hyperbola" else y
    return np.where(y > 0, out, np.nan)


def _abs_rel_resid(h: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(h / predicted - 1.0)
    return np.where(np.isfinite(r), r, np.inf)


def _robust_inliers(u: np.ndarray, h: np.ndarray, model: str, max_rejections: int,
                    clip_sigma: float, max_triples: int = 3000) -> np.ndarray:
    """Which points are not outliers, as a boolean mask.

    Start (least trimmed residuals): the quadratic through every triple of
    points (a seeded random sample of ``max_triples`` when there are more)
    is scored by the (n - max_rejections)-th smallest relative residual over
    all points; the best one's clear outliers are dropped. Then refit the
    rest and re-classify every point against the refit until stable; never
    more than ``max_rejections`` dropped.
    """
    n = len(u)
    need = n - max_rejections
    triples = np.array(list(itertools.combinations(range(n), 3)), dtype=int) \
        if math.comb(n, 3) <= max_triples else \
        np.sort(np.random.default_rng(0).random((max_triples, n)).argsort(axis=1)[:, :3], axis=1)
    design = np.stack([u[triples] ** 2, u[triples], np.ones(triples.shape)], axis=2)   # (m, 3, 3)
    solvable = np.abs(np.linalg.det(design)) > 1e-12
    target = h * h if model == "hyperbola" else h
    if not np.any(solvable):
        return np.ones(n, dtype=bool)
    coefs = np.linalg.solve(design[solvable], target[triples[solvable]][..., None])[..., 0]
    residuals = _abs_rel_resid(h[None, :], _predict(coefs, u, model))            # (m, n)
    quantile = np.partition(residuals, need - 1, axis=1)[:, need - 1]
    r = residuals[int(np.argmin(quantile))]

    def classify(r: np.ndarray, reference: np.ndarray) -> np.ndarray:
        spread = max(1.4826 * float(np.median(r[reference])), _MIN_REL_SCALE)
        keep = r <= clip_sigma * spread
        if keep.sum() < need:
            keep = r <= np.sort(r)[need - 1]
        return keep

    keep = classify(r, r <= np.sort(r)[need - 1])
    for _ in range(5):
        coef, _, _ = _poly_fit(u[keep], h[keep], model)
        r = _abs_rel_resid(h, _predict(coef, u, model)[0])
        new = classify(r, keep)
        if np.array_equal(new, keep):
            break
        keep = new
    return keep


def fit_focus(positions: Iterable[float], hfds: Iterable[float], *, model: str = "hyperbola",
              min_points: int = 5, min_side: int = 2, max_rel_rms: float = 0.15,
              min_depth: float = 1.15, clip_sigma: float = 3.0) -> FocusFit:
    """Fit a V-curve to (position, HFD) points and say whether its minimum can be trusted.

    Missing points (None, NaN, HFD <= 0) are ignored. Outliers (at most a
    third of the points, and never below ``min_points``) are those more
    than ``clip_sigma`` robust standard deviations (1.4826 x the median
    absolute relative residual, at least 3%) off a fit that the outliers
    themselves cannot drag: see ``_robust_inliers``.

    ``ok`` is False (``reason`` says which) when there are fewer than
    ``min_points`` points; when the points show no minimum (HFD only falls
    or only rises: ``direction`` points downhill); when the minimum lies
    beyond the points or has fewer than ``min_side`` points on one side
    (``direction`` points that way: extend the sweep); when the relative
    RMS residual exceeds ``max_rel_rms``; or when the V is shallower than
    ``min_depth`` (the sweep is too narrow for the noise, or all of it is
    far from focus where the curve is a straight line).
    """
    if model not in _MODELS:
        raise ValueError(f"model must be one of {list(_MODELS)}, got {model!r}")
    x, h = _finite_pairs(list(positions), list(hfds))
    n_total = len(x)
    if n_total < max(min_points, 3):
        return FocusFit(False, math.nan, math.nan, f"only {n_total} usable point(s), need {max(min_points, 3)}",
                        n_used=n_total, model=model)
    order = np.argsort(x)
    x, h = x[order], h[order]
    center, scale = float(np.mean(x)), float(np.ptp(x)) / 2.0 or 1.0
    u_all = (x - center) / scale
    max_rejections = max(0, min(n_total // 3, n_total - max(min_points, 3)))
    keep = (_robust_inliers(u_all, h, model, max_rejections, clip_sigma) if max_rejections
            else np.ones(n_total, dtype=bool))
    coef, cov, predicted = _poly_fit(u_all[keep], h[keep], model)
    resid = h[keep] / predicted - 1.0
    xs, hs = x[keep], h[keep]
    rejected = tuple(float(p) for p in x[~keep])
    rel_rms = float(np.sqrt(np.mean(resid ** 2)))
    a_coef, b_coef, c_coef = (float(v) for v in coef)
    common = dict(rel_rms=rel_rms, n_used=int(keep.sum()), rejected=rejected, model=model)

    if not a_coef > 0:
        # No minimum: which way is downhill?
        slope = np.polyfit(xs, hs, 1)[0]
        direction = 1 if slope < 0 else -1
        where = "high" if direction > 0 else "low"
        return FocusFit(False, math.nan, float(hs.min()),
                        f"no V-curve: HFD falls towards the {where} end", direction, **common)

    vertex_u = -b_coef / (2.0 * a_coef)
    best = center + vertex_u * scale
    floor = c_coef - b_coef * b_coef / (4.0 * a_coef)
    if model == "hyperbola":
        min_hfd = math.sqrt(floor) if floor > 0 else float(hs.min())
        slope = math.sqrt(a_coef) / scale
    else:
        min_hfd = floor if floor > 0 else float(hs.min())
        slope = math.nan
    grad = np.array([b_coef / (2.0 * a_coef ** 2), -1.0 / (2.0 * a_coef), 0.0])
    var = float(grad @ cov @ grad)
    position_error = math.sqrt(var) * scale if var >= 0 and math.isfinite(var) else math.nan
    far = max(abs(float(xs[0]) - best), abs(float(xs[-1]) - best))
    u_far = (best + far - center) / scale
    far_model = a_coef * u_far ** 2 + b_coef * u_far + c_coef
    far_hfd = math.sqrt(max(far_model, 0.0)) if model == "hyperbola" else far_model
    depth = far_hfd / min_hfd if min_hfd > 0 else math.nan
    common.update(position_error=position_error, slope=slope, depth=depth)

    below, above = int(np.sum(xs < best)), int(np.sum(xs > best))
    if best < xs[0] or best > xs[-1] or below < min_side or above < min_side:
        direction = -1 if below < above else 1
        where = "low" if direction < 0 else "high"
        beyond = best < xs[0] or best > xs[-1]
        reason = (f"minimum {best:.0f} lies beyond the {where} end ({xs[0]:.0f}-{xs[-1]:.0f})" if beyond
                  else f"minimum {best:.0f} at the {where} edge: {min(below, above)} point(s) on that side, "
                       f"need {min_side}")
        return FocusFit(False, best, min_hfd, reason, direction, **common)
    if rel_rms > max_rel_rms:
        return FocusFit(False, best, min_hfd, f"poor fit: relative RMS residual {rel_rms:.2f} > {max_rel_rms}",
                        **common)
    if not depth >= min_depth:
        return FocusFit(False, best, min_hfd, f"V-curve too shallow: depth {depth:.2f} < {min_depth} "
                        "(widen the sweep)", **common)
    return FocusFit(True, best, min_hfd, "", 0, **common)


# ---------------------------------------------------------------------------
# The state machine


@dataclass(frozen=True)
class AutofocusResult:
    """How a focus run ended: ``ok`` with ``position`` (whole steps) and the
    fitted ``min_hfd``; or not ok with ``reason`` (then move back to the start)."""

    ok: bool
    position: int | None
    min_hfd: float
    reason: str
    fit: FocusFit | None
    frames: int

    def to_dict(self) -> dict:
        return {"ok": self.ok, "position": self.position,
                "min_hfd": None if not math.isfinite(self.min_hfd) else self.min_hfd,
                "reason": self.reason, "frames": self.frames,
                "fit": self.fit.to_dict() if self.fit else None}


@dataclass
class _Sweep:
    phase: str
    center: float
    half_width: int
    planned: list[int]
    extensions: int = 0


class Autofocus:
    """A focus run: a coarse sweep around the start, then a fine sweep around
    the coarse minimum, each extended while its minimum lies at an edge.

    ``next_position()`` says where to expose next (the same answer until
    ``record`` is called; None once finished); ``record(position, hfd,
    n_stars)`` gives the measurement of that frame. Positions within a sweep
    ascend. ``phase`` is 'coarse', 'fine', 'done' or 'failed'; ``result``
    is set once finished; ``abort(reason)`` ends the run as failed.

    The coarse fit uses every coarse frame (all extensions together); the
    fine fit uses the fine frames and, if they do not fit, every frame.
    """

    def __init__(self, start: int, limits: tuple[int, int] | Sequence[int],
                 settings: AutofocusSettings | Mapping | None = None):
        if not isinstance(settings, AutofocusSettings):
            settings = AutofocusSettings.from_mapping(settings)
        self.settings = settings
        self.limits = (int(limits[0]), int(limits[1]))
        if not self.limits[0] <= start <= self.limits[1]:
            raise ValueError(f"start position {start} is outside the focuser limits {self.limits}")
        self.start = int(start)
        self.measurements: list[tuple[int, float, str]] = []   # (position, hfd or NaN, phase)
        self.fits: list[FocusFit] = []
        self.result: AutofocusResult | None = None
        self._sweep = self._new_sweep("coarse", self.start, settings.coarse_half_width)
        self._queue = list(self._sweep.planned)

    # -- public ---------------------------------------------------------------

    @property
    def phase(self) -> str:
        if self.result is not None:
            return "done" if self.result.ok else "failed"
        return self._sweep.phase

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def frames(self) -> int:
        return len(self.measurements)

    def next_position(self) -> int | None:
        if self.result is not None:
            return None
        return self._queue[0]

    def record(self, position: int, hfd: float | None, n_stars: int | None = None) -> int | None:
        """The measured HFD (px) of the frame taken at ``position`` (None or
        NaN when nothing could be measured). Returns the next position, as
        ``next_position``."""
        if self.result is not None:
            raise RuntimeError(f"autofocus already finished ({self.phase})")
        value = math.nan if hfd is None else float(hfd)
        if n_stars is not None and n_stars < self.settings.min_stars:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            value = math.nan
        self.measurements.append((int(position), value, self._sweep.phase))
        if self._queue and self._queue[0] == int(position):
            self._queue.pop(0)
        elif int(position) in self._queue:
            self._queue.remove(int(position))
        else:
            self._queue.pop(0)       # the focuser stopped a little off: take it as that frame
        if not self._queue:
            self._sweep_finished()
        elif self.frames >= self.settings.max_frames:
            self._fail(f"{self.frames} frames taken, the most allowed (max_frames)")
        return self.next_position()

    def abort(self, reason: str) -> AutofocusResult:
        if self.result is None:
            self._fail(f"aborted: {reason}")
        return self.result

    # -- internals --------------------------------------------------------------

    def _new_sweep(self, phase: str, center: float, half_width: int, extensions: int = 0) -> _Sweep:
        steps = self.settings.coarse_steps if phase == "coarse" else self.settings.fine_steps
        planned = plan_sweep(center, half_width, steps, self.limits)
        return _Sweep(phase, center, half_width, planned, extensions)

    def _points(self, phases: tuple[str, ...]) -> tuple[list[int], list[float]]:
        rows = [(p, h) for p, h, ph in self.measurements if ph in phases]
        return [p for p, _ in rows], [h for _, h in rows]

    def _fit(self, phases: tuple[str, ...]) -> FocusFit:
        s = self.settings
        positions, hfds = self._points(phases)
        min_side = s.coarse_min_side if phases == ("coarse",) else s.min_side
        fit = fit_focus(positions, hfds, model=s.model, min_points=s.min_points, min_side=min_side,
                        max_rel_rms=s.max_rel_rms, min_depth=s.min_depth, clip_sigma=s.clip_sigma)
        self.fits.append(fit)
        return fit

    def _fail(self, reason: str, fit: FocusFit | None = None) -> None:
        self.result = AutofocusResult(False, None, math.nan, reason, fit, self.frames)
        self._queue = []

    def _sweep_finished(self) -> None:
        sweep = self._sweep
        if sweep.phase == "coarse":
            fit = self._fit(("coarse",))
            if fit.ok:
                self._start(self._new_sweep("fine", fit.best_position, self.settings.fine_width))
                return
        else:
            fit = self._fit(("fine",))
            if fit.ok:
                self._finish(fit)
                return
            if fit.direction == 0:
                # The fine sweep alone is too noisy or too shallow: try everything.
                combined = self._fit(("coarse", "fine"))
                if combined.ok:
                    self._finish(combined)
                    return
        if fit.direction != 0:
            self._extend(fit)
            return
        if sweep.phase == "coarse" and fit.n_used < max(self.settings.min_points, 3):
            self._too_few_points(fit)
            return
        if sweep.phase == "coarse" and "shallow" in fit.reason and sweep.extensions < self.settings.max_extensions:
            # Too narrow for the noise, or far from focus on a straight flank: widen it.
            self._start(self._new_sweep("coarse", sweep.center, 2 * sweep.half_width, sweep.extensions + 1))
            return
        self._fail(f"{sweep.phase} sweep: {fit.reason}", fit)

    def _too_few_points(self, fit: FocusFit) -> None:
        """Stars are measurable only near focus: with a few usable frames,
        sweep again around the best of them at half the width; with none,
        at twice the width (up to the whole range)."""
        sweep = self._sweep
        if sweep.extensions >= self.settings.max_extensions:
            self._fail(f"coarse sweep: {fit.reason} after {sweep.extensions} re-sweep(s)", fit)
            return
        usable = [(h, p) for p, h, ph in self.measurements if ph == "coarse" and math.isfinite(h)]
        if usable:
            center, half_width = min(usable)[1], max(1, sweep.half_width // 2)
        else:
            lo, hi = self.limits
            if 2 * sweep.half_width >= hi - lo:
                self._fail("no stars measured anywhere in the focuser's range", fit)
                return
            center, half_width = sweep.center, 2 * sweep.half_width
        self._start(self._new_sweep("coarse", center, half_width, sweep.extensions + 1))

    def _extend(self, fit: FocusFit) -> None:
        sweep, s = self._sweep, self.settings
        if sweep.extensions >= s.max_extensions:
            self._fail(f"{sweep.phase} sweep: {fit.reason}; still at an edge after {sweep.extensions} "
                       f"extension(s)", fit)
            return
        done = sorted({p for p, _, ph in self.measurements if ph == sweep.phase})
        edge = done[-1] if fit.direction > 0 else done[0]
        limit = self.limits[1] if fit.direction > 0 else self.limits[0]
        if edge == limit:
            self._fail(f"best focus lies beyond the focuser's {'upper' if fit.direction > 0 else 'lower'} "
                       f"limit {limit} ({fit.reason})", fit)
            return
        w, d = sweep.half_width, fit.direction
        steps = s.coarse_steps if sweep.phase == "coarse" else s.fine_steps
        spacing = 2.0 * w / (steps - 1)
        beyond = (fit.best_position - edge) * d if math.isfinite(fit.best_position) else math.nan
        if beyond > w:
            # The fit puts the minimum well out: a whole sweep centred on it
            # (at most 3 half widths beyond the edge).
            new = self._new_sweep(sweep.phase, edge + d * min(beyond, 3.0 * w), w, sweep.extensions + 1)
        else:
            # Near the edge (or unknown): carry the sweep on at the same spacing.
            count = max(3, steps // 2 + 1)
            if math.isfinite(beyond):
                count = max(count, int(math.ceil(beyond / spacing)) + 2)
            lo, hi = self.limits
            planned = sorted({int(round(min(max(edge + d * k * spacing, lo), hi))) for k in range(1, count + 1)})
            new = _Sweep(sweep.phase, edge + d * count * spacing / 2.0, w, planned, sweep.extensions + 1)
        self._start(new)

    def _start(self, sweep: _Sweep) -> None:
        # A position this phase has measured already is not taken again.
        done = {p for p, _, ph in self.measurements if ph == sweep.phase}
        sweep.planned = [p for p in sweep.planned if p not in done]
        if not sweep.planned:
            self._fail(f"the next {sweep.phase} sweep has no new position (focuser range exhausted)")
            return
        if self.frames + len(sweep.planned) > self.settings.max_frames:
            self._fail(f"the next {sweep.phase} sweep would exceed max_frames "
                       f"({self.frames} + {len(sweep.planned)} > {self.settings.max_frames})")
            return
        self._sweep = sweep
        self._queue = list(sweep.planned)

    def _finish(self, fit: FocusFit) -> None:
        lo, hi = self.limits
        position = int(round(min(max(fit.best_position, lo), hi)))
        self.result = AutofocusResult(True, position, fit.min_hfd, "", fit, self.frames)
        self._queue = []


# ---------------------------------------------------------------------------
# When to refocus


def needs_refocus(fwhm_history: Iterable[float | None], temp_now: float | None,
                  temp_at_focus: float | None, fwhm_at_focus: float | None,
                  settings: AutofocusSettings | Mapping | None = None) -> str | None:
    """Why the camera should be refocused now, or None.

    ``fwhm_history``: the FWHM (px) of the recent science frames, oldest
    first (missing values ignored); the median of the last
    ``refocus_window`` must exceed ``fwhm_at_focus`` by more than
    ``refocus_fwhm_fraction``, with at least ``refocus_min_frames`` frames.
    Temperature: ``temp_now`` and ``temp_at_focus`` (degrees C) differing by
    ``refocus_temp_c`` or more. Unknown values (None) skip their test; with
    neither a temperature nor a FWHM from a focus run: 'not focused yet'.
    """
    if not isinstance(settings, AutofocusSettings):
        settings = AutofocusSettings.from_mapping(settings)

    def known(v) -> bool:
        return v is not None and isinstance(v, (int, float)) and math.isfinite(v)

    if not known(temp_at_focus) and not known(fwhm_at_focus):
        return "not focused yet"
    if known(temp_now) and known(temp_at_focus):
        change = float(temp_now) - float(temp_at_focus)
        if abs(change) >= settings.refocus_temp_c:
            return (f"temperature changed by {change:+.1f} C since the last focus "
                    f"(limit {settings.refocus_temp_c} C)")
    if known(fwhm_at_focus) and fwhm_at_focus > 0:
        recent = [float(v) for v in fwhm_history if known(v) and v > 0][-settings.refocus_window:]
        if len(recent) >= settings.refocus_min_frames:
            median = float(np.median(recent))
            worse = median / float(fwhm_at_focus) - 1.0
            if worse > settings.refocus_fwhm_fraction:
                return (f"FWHM {median:.2f} px is {100 * worse:.0f}% above {fwhm_at_focus:.2f} px at "
                        f"the last focus (limit {100 * settings.refocus_fwhm_fraction:.0f}%)")
    return None

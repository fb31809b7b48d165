"""Fields file and the greedy "dispatch" scheduler (pure; no actor code).

The fields file is the POCS format, read unchanged (see conf/fields.yaml)::

    - field: {name: "M42", position: "05h35m17.3s -05d23m28s"}
      observation: {priority: 75, exptime: 30, min_nexp: 10, exp_set_size: 5}

with one optional addition: ``observation: {constraints: {time_windows:
[[start_iso, end_iso], ...]}}`` (UTC when no zone is given) limits a field to
sets that fit inside one of those windows. POCS's own list form of
``constraints`` is accepted and ignored, as before.

``Scheduler.decide`` evaluates every field at once with numpy, so a decision
costs well under a millisecond per field once the night's ephemeris is cached
(POCS takes about 0.15 s for 6 fields and 0.8 s for 53).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field as dataclass_field
from datetime import date, datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import yaml

from observatory.astro import Ephemeris, angular_separation_deg, lst_deg, precess_from_j2000
from observatory.clock import iso, parse_iso


# --------------------------------------------------------------------------
# Observations and the fields file
# --------------------------------------------------------------------------

class FieldsError(ValueError):
    """A fields file (or list) that cannot be used.

    Every problem found is listed, one a line, each naming the file and the
    entry, numbered from 1 as a person counts the list, with the field name
    when it is known: ``conf/fields.yaml: entry 3 (WASP-33): exp_set_size 7
    does not divide min_nexp 60``.
    """

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


@dataclass(frozen=True)
class Observation:
    name: str
    ra_deg: float  # ICRS
    dec_deg: float
    priority: float = 100.0
    exptime: float = 120.0  # seconds
    min_nexp: int = 60
    exp_set_size: int = 10
    tags: tuple[str, ...] = ()
    filter_name: str | None = None
    #: dither step, arcsec: each set after the first is offset by it (dice-9 pattern); 0 = none
    dither_arcsec: float = 0.0
    #: ((start_unix, end_unix), ...): when set, a set must fit inside one of them.
    time_windows: tuple[tuple[float, float], ...] = ()

    def __post_init__(self):
        problems = _value_problems(self.priority, self.exptime, self.min_nexp, self.exp_set_size)
        windows = tuple((float(a), float(b)) for a, b in self.time_windows)
        object.__setattr__(self, "time_windows", windows)
        for a, b in windows:
            if not (math.isfinite(a) and math.isfinite(b) and a < b):
                problems.append(f"time window [{a}, {b}] must have start < end")
        if problems:
            raise ValueError(f"observation {self.name!r}: " + "; ".join(problems))

    @property
    def set_duration(self) -> float:
        """Seconds of exposure in one set (readout and slews not included)."""
        return self.exptime * self.exp_set_size

    @property
    def minimum_duration(self) -> float:
        return self.exptime * self.min_nexp

    @property
    def field_name(self) -> str:
        """POCS's path-safe form of the name: 'HD 189733' -> 'Hd189733'."""
        return field_name(self.name)


def field_name(name: str) -> str:
    return name.title().replace(" ", "").replace("-", "")


def _value_problems(priority, exptime, min_nexp, exp_set_size) -> list[str]:
    problems = []
    if not priority > 0:
        problems.append(f"priority must be > 0, got {priority:g}")
    if not exptime > 0:
        problems.append(f"exptime must be > 0 seconds, got {exptime:g}")
    sizes_ok = True
    for key, value in (("min_nexp", min_nexp), ("exp_set_size", exp_set_size)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            problems.append(f"{key} must be an integer >= 1, got {value!r}")
            sizes_ok = False
    if sizes_ok and min_nexp % exp_set_size:
        problems.append(f"exp_set_size {exp_set_size} does not divide min_nexp {min_nexp}")
    return problems


def load_fields(path: str | Path) -> list[Observation]:
    """Read a POCS fields file; raise FieldsError naming every problem found."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise FieldsError(source, [f"cannot read: {exc.strerror or exc}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FieldsError(source, [f"not valid YAML: {' '.join(str(exc).split())}"]) from exc
    return parse_fields(data, source)


def parse_fields(data: Any, source: str = "<fields>") -> list[Observation]:
    """Observations from an already-parsed fields list (the YAML document)."""
    if data is None:
        raise FieldsError(source, ["the file is empty; expected a list of fields"])
    if not isinstance(data, list):
        raise FieldsError(source, [f"expected a list of fields, got a {_type_name(data)}"])
    if not data:
        raise FieldsError(source, ["the list of fields is empty"])

    problems: list[str] = []
    observations: list[Observation] = []
    seen: dict[str, tuple[int, str]] = {}  # field_name -> (entry number, name)
    for number, entry in enumerate(data, start=1):
        entry_problems, obs = _parse_entry(entry)
        label = f"entry {number}" + (f" ({obs['name']})" if obs.get("name") else "")
        problems.extend(f"{label}: {p}" for p in entry_problems)
        name = obs.get("name")
        if name:
            key = field_name(name)
            if key in seen:
                first_number, first_name = seen[key]
                if first_name == name:
                    problems.append(f"{label}: name duplicates entry {first_number}")
                else:
                    problems.append(f"{label}: name duplicates entry {first_number} ({first_name}) once "
                                    f"case, spaces and dashes are ignored (POCS's form for directories)")
            else:
                seen[key] = (number, name)
        if not entry_problems:
            observations.append(Observation(**obs))
    if problems:
        raise FieldsError(source, problems)
    return observations


_OBSERVATION_DEFAULTS = {"priority": 100.0, "exptime": 120.0, "min_nexp": 60, "exp_set_size": 10}


def _parse_entry(entry: Any) -> tuple[list[str], dict]:
    """(problems, Observation keyword arguments) for one list entry."""
    if not isinstance(entry, Mapping):
        return [f"expected a mapping with 'field' and 'observation', got a {_type_name(entry)}"], {}
    fld = entry.get("field")
    if not isinstance(fld, Mapping):
        what = "missing 'field'" if fld is None else f"'field' must be a mapping, got a {_type_name(fld)}"
        return [what], {}

    problems: list[str] = []
    out: dict[str, Any] = {}
    name = fld.get("name")
    if name is not None and (isinstance(name, bool) or not isinstance(name, (str, int, float))):
        problems.append(f"field name must be text, got a {_type_name(name)}")
    elif name is None or not str(name).strip():
        problems.append("field has no name")
    else:
        out["name"] = str(name).strip()

    position = fld.get("position")
    if position is None:
        problems.append("field has no position")
    else:
        try:
            out["ra_deg"], out["dec_deg"] = parse_position(position, fld.get("frame"), fld.get("equinox"))
        except ValueError as exc:
            problems.append(f"cannot parse position {position!r}: {exc}")

    obs = entry.get("observation")
    if obs is None:
        obs = {}
    elif not isinstance(obs, Mapping):
        problems.append(f"'observation' must be a mapping, got a {_type_name(obs)}")
        obs = {}

    values = dict(_OBSERVATION_DEFAULTS)
    value_types_ok = True
    for key in ("priority", "exptime"):
        if obs.get(key) is not None:
            try:
                values[key] = _number(obs[key], seconds=key == "exptime")
            except ValueError:
                problems.append(f"{key} must be a number, got {obs[key]!r}")
                value_types_ok = False
    for key in ("min_nexp", "exp_set_size"):
        if obs.get(key) is not None:
            values[key] = _integer(obs[key])
    if value_types_ok:
        problems.extend(_value_problems(**values))
    out.update(values)

    tags = obs.get("tags")
    if tags is None:
        out["tags"] = ()
    elif isinstance(tags, str):
        out["tags"] = (tags,)
    elif isinstance(tags, list) and all(isinstance(t, (str, int, float)) for t in tags):
        out["tags"] = tuple(str(t) for t in tags)
    else:
        problems.append(f"tags must be a list of words, got {tags!r}")
    if obs.get("filter_name") is not None:
        out["filter_name"] = str(obs["filter_name"])
    if obs.get("dither_arcsec") is not None:
        try:
            out["dither_arcsec"] = _number(obs["dither_arcsec"])
            if not 0 <= out["dither_arcsec"] <= 3600:
                problems.append(f"dither_arcsec must be within 0-3600, got {obs['dither_arcsec']!r}")
        except ValueError:
            problems.append(f"dither_arcsec must be a number, got {obs['dither_arcsec']!r}")
    constraints = obs.get("constraints")
    # POCS writes constraints as a list of named constraints; only the mapping
    # form carries time windows (a list is accepted and ignored, as before).
    if isinstance(constraints, Mapping) and constraints.get("time_windows") is not None:
        window_problems, windows = _parse_time_windows(constraints["time_windows"])
        problems.extend(window_problems)
        if not window_problems:
            out["time_windows"] = windows
    elif constraints is not None and not isinstance(constraints, (Mapping, list)):
        problems.append(f"constraints must be a mapping, got a {_type_name(constraints)}")
    return problems, out


def _parse_time_windows(value: Any) -> tuple[list[str], tuple[tuple[float, float], ...]]:
    """(problems, windows) from ``[[start_iso, end_iso], ...]`` (naive times are UTC)."""
    if not isinstance(value, list) or not value:
        return [f"time_windows must be a non-empty list of [start, end] pairs, got {value!r}"], ()
    problems: list[str] = []
    windows = []
    for k, pair in enumerate(value, start=1):
        if not isinstance(pair, list) or len(pair) != 2:
            problems.append(f"time window {k} must be a [start, end] pair of ISO times, got {pair!r}")
            continue
        try:
            start, end = (_unix_time(x) for x in pair)
        except ValueError as exc:
            problems.append(f"time window {k}: {exc}")
            continue
        if not start < end:
            problems.append(f"time window {k}: start {iso(start)[:19]} is not before end {iso(end)[:19]}")
            continue
        windows.append((start, end))
    return problems, tuple(windows)


def _unix_time(value: Any) -> float:
    """Unix seconds from an ISO string or a YAML timestamp (naive means UTC)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()
    if isinstance(value, str):
        try:
            return parse_iso(value)
        except ValueError:
            pass
    raise ValueError(f"cannot read {value!r} as an ISO time (e.g. 2026-11-24T06:00:00)")


_UNIT_MARKS = re.compile(r"[hdms°'\"]|deg|rad", re.IGNORECASE)


def parse_position(position: Any, frame: str | None = None, equinox: str | None = None) -> tuple[float, float]:
    """ICRS (RA, Dec) in degrees from anything SkyCoord parses.

    Besides strings with units ("05h35m17.3s -05d23m28s"), bare numbers are
    read as degrees ("83.82 -5.39", or a [ra, dec] list) and bare
    sexagesimal as hours and degrees ("05:35:17.3 -05:23:28"), the usual
    conventions. ``equinox`` other than J2000 means FK5 of that equinox.
    """
    from astropy.coordinates import SkyCoord  # deferred: astropy import is slow
    import astropy.units as u

    kwargs: dict[str, Any] = {"frame": (frame or "icrs").lower()}
    if equinox is not None:
        if kwargs["frame"] == "icrs" and str(equinox).upper() not in ("J2000", "J2000.0"):
            kwargs["frame"] = "fk5"
        if kwargs["frame"] != "icrs":
            kwargs["equinox"] = str(equinox)
    try:
        if isinstance(position, (list, tuple)):
            if len(position) != 2 or not all(_is_number(x) for x in position):
                raise ValueError("a list position must be two numbers [ra_deg, dec_deg]")
            coord = SkyCoord(float(position[0]) * u.deg, float(position[1]) * u.deg, **kwargs)
        elif isinstance(position, str):
            text = position.replace(",", " ").strip()
            if _UNIT_MARKS.search(text):
                coord = SkyCoord(text, **kwargs)
            elif ":" in text:
                coord = SkyCoord(text, unit=(u.hourangle, u.deg), **kwargs)
            else:
                coord = SkyCoord(text, unit=(u.deg, u.deg), **kwargs)
        else:
            raise ValueError(f"expected text or [ra, dec], got a {_type_name(position)}")
        icrs = coord.icrs
    except ValueError:
        raise
    except Exception as exc:  # astropy raises a variety of types for bad input
        raise ValueError(str(exc)) from exc
    ra, dec = float(icrs.ra.deg), float(icrs.dec.deg)
    if not (math.isfinite(ra) and math.isfinite(dec)):
        raise ValueError("not a finite position")
    return ra, dec


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _number(value: Any, seconds: bool = False) -> float:
    """A float from a YAML number, a numeric string, a fraction ("1/2") or, for
    times, a quantity ("2 min")."""
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            pass
        if seconds:
            import astropy.units as u
            try:
                return float(u.Quantity(value).to_value(u.s))
            except Exception:
                pass
    raise ValueError(value)


def _integer(value: Any) -> Any:
    """An int where the YAML value is a whole number; the value unchanged otherwise
    (so that the problem message shows what was written)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


# --------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------

#: Veto names, in the order they are reported.
VETOES = ("sun_up", "below_horizon", "moon", "time_window", "meridian", "done", "night_ends")
_ROW = {name: k for k, name in enumerate(VETOES)}

MERIDIAN_POLICIES = ("penalise", "veto", "ignore")
#: Sidereal rate of hour angle, degrees per second.
_HA_RATE_DEG_S = 360.0 / 86164.0905


@dataclass(frozen=True)
class Candidate:
    name: str
    merit: float  # 0 when vetoed
    altitude_deg: float
    vetoes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # explanations that are not vetoes (meridian flip, obstruction)

    def to_dict(self) -> dict:
        return {"name": self.name, "merit": self.merit, "altitude_deg": self.altitude_deg,
                "vetoes": list(self.vetoes), "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        return cls(d["name"], float(d["merit"]), float(d["altitude_deg"]), tuple(d.get("vetoes", ())),
                   tuple(d.get("notes", ())))


@dataclass(frozen=True)
class Decision:
    time_unix: float
    winner: str | None
    reason: str
    candidates: tuple[Candidate, ...] = dataclass_field(default=())

    def to_dict(self) -> dict:
        return {"time_unix": self.time_unix, "time": iso(self.time_unix), "winner": self.winner,
                "reason": self.reason, "candidates": [c.to_dict() for c in self.candidates]}

    @classmethod
    def from_dict(cls, d: dict) -> "Decision":
        return cls(float(d["time_unix"]), d.get("winner"), d.get("reason", ""),
                   tuple(Candidate.from_dict(c) for c in d.get("candidates", ())))

    def candidate(self, name: str) -> Candidate | None:
        return next((c for c in self.candidates if c.name == name), None)


def _altaz_from_ha(ha_deg, dec_deg, sin_lat: float, cos_lat: float):
    """Altitude and azimuth (degrees, azimuth from North through East in [0, 360))."""
    ha = np.radians(ha_deg)
    dec = np.radians(dec_deg)
    sin_dec, cos_dec, cos_ha = np.sin(dec), np.cos(dec), np.cos(ha)
    alt = np.degrees(np.arcsin(np.clip(sin_lat * sin_dec + cos_lat * cos_dec * cos_ha, -1.0, 1.0)))
    az = np.degrees(np.arctan2(-cos_dec * np.sin(ha), cos_lat * sin_dec - sin_lat * cos_dec * cos_ha))
    return alt, np.mod(az, 360.0)


def _horizon_table(horizon) -> tuple[np.ndarray, np.ndarray] | None:
    """(azimuths, altitudes) sorted in [0, 360) for ``np.interp(..., period=360)``."""
    if horizon is None:
        return None
    points = np.asarray(horizon, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"horizon must be a list of (azimuth_deg, altitude_deg) points, got {horizon!r}")
    if not np.isfinite(points).all():
        raise ValueError("horizon points must be finite numbers")
    if (np.abs(points[:, 1]) > 90).any():
        raise ValueError("horizon altitudes must be within [-90, 90] degrees")
    az = np.mod(points[:, 0], 360.0)
    if len(np.unique(az)) != len(az):
        raise ValueError("horizon azimuths must be distinct (modulo 360)")
    order = np.argsort(az)
    return az[order], points[order, 1]


class Scheduler:
    """Greedy dispatch: at each call, the best field observable right now.

    A field is vetoed when

    * ``sun_up``: the sun is above ``observe_horizon_deg``;
    * ``below_horizon``: it is below the altitude limit now, or will be at
      the end of one exposure set (``exptime * exp_set_size +
      set_overhead_s`` from now). The limit is ``min_altitude_deg`` or, where
      higher, the ``horizon`` line: (azimuth, altitude) points for trees,
      buildings and domes, linearly interpolated in azimuth (wrapping at 360);
    * ``moon``: it is closer than ``moon_separation_deg`` to the moon
      (whatever the moon's altitude, as POCS);
    * ``time_window``: the observation has time windows and the set does not
      fit inside any of them (start <= now and now + set time <= end);
    * ``meridian`` (only with ``meridian_policy='veto'``): the set would cross
      the meridian (hour angle from negative to >= 0), which a German
      equatorial mount cannot track through without a flip;
    * ``done``: ``exposures_done[name] >= min_nexp``;
    * ``night_ends``: the set would not finish before the dark time ends.

    Merit = priority * sin(altitude), i.e. priority / airmass: a field at 30
    degrees counts half as much as the same field at the zenith, so a field
    is preferred while it is high and the plan follows the sky through the
    night. With ``meridian_policy='penalise'`` (the default) the merit of a
    field whose set would cross the meridian is multiplied by
    ``meridian_penalty`` and the candidate carries the note "crosses meridian
    in N min: flip needed"; ``'ignore'`` leaves it alone. The current field is
    kept while unvetoed and its merit is at least ``(1 - hysteresis)`` times
    the best, which avoids a slew for a marginal gain.

    ``set_overhead_s`` covers what a set costs beyond its exposures: slew,
    plate solve and the readouts (about 120 s for a PANOPTES unit with ten
    exposures a set).

    Block fit (``block_fit=True``, the default): the merit is also multiplied
    by the fraction of the field's remaining block (``min_nexp`` less the
    rounds done tonight, in sets with ``set_overhead_s`` each) that fits
    before the field drops below its limit or the dark time ends (checked on
    a 15-minute grid up to 6 hours ahead; never below 0.05), so that a field
    whose whole block fits is preferred to one about to set; such a candidate
    carries a note.

    ``check_set_end=False`` checks the altitude limit at the decision time
    only (used to compare with instantaneous constraint checkers).
    """

    def __init__(self, observations: Iterable[Observation], ephemeris: Ephemeris,
                 min_altitude_deg: float = 30.0, moon_separation_deg: float = 15.0,
                 observe_horizon_deg: float = -18.0, hysteresis: float = 0.1,
                 set_overhead_s: float = 120.0, *, horizon=None,
                 meridian_policy: str = "penalise", meridian_penalty: float = 0.5,
                 check_set_end: bool = True, block_fit: bool = True):
        if not 0.0 <= hysteresis < 1.0:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
        if set_overhead_s < 0:
            raise ValueError(f"set_overhead_s must be >= 0, got {set_overhead_s}")
        if meridian_policy not in MERIDIAN_POLICIES:
            raise ValueError(f"meridian_policy must be one of {', '.join(MERIDIAN_POLICIES)}, "
                             f"got {meridian_policy!r}")
        if not 0.0 <= meridian_penalty <= 1.0:
            raise ValueError(f"meridian_penalty must be in [0, 1], got {meridian_penalty}")
        self.ephemeris = ephemeris
        self.site = ephemeris.site
        self.min_altitude_deg = float(min_altitude_deg)
        self.moon_separation_deg = float(moon_separation_deg)
        self.observe_horizon_deg = float(observe_horizon_deg)
        self.hysteresis = float(hysteresis)
        self.set_overhead_s = float(set_overhead_s)
        self.horizon = None if horizon is None else [tuple(map(float, p)) for p in horizon]
        self._horizon = _horizon_table(horizon)
        self.meridian_policy = meridian_policy
        self.meridian_penalty = float(meridian_penalty)
        self.check_set_end = bool(check_set_end)
        self.block_fit = bool(block_fit)
        self._sin_lat = math.sin(math.radians(self.site.latitude_deg))
        self._cos_lat = math.cos(math.radians(self.site.latitude_deg))
        self.set_observations(observations)

    @property
    def observations(self) -> tuple[Observation, ...]:
        return self._observations

    def observation(self, name: str) -> Observation | None:
        i = self._index.get(name)
        return None if i is None else self._observations[i]

    def set_observations(self, observations: Iterable[Observation]) -> None:
        """Replace the fields (e.g. after the fields file changed)."""
        obs = tuple(observations)
        names = [o.name for o in obs]
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate observation names: {', '.join(duplicates)}")
        self._observations = obs
        self._names = names
        self._index = {n: i for i, n in enumerate(names)}
        self._ra = np.array([o.ra_deg for o in obs], dtype=float)
        self._dec = np.array([o.dec_deg for o in obs], dtype=float)
        self._priority = np.array([o.priority for o in obs], dtype=float)
        self._set_time = np.array([o.set_duration for o in obs], dtype=float) + self.set_overhead_s
        self._min_nexp = np.array([o.min_nexp for o in obs], dtype=np.int64)
        self._exptime = np.array([o.exptime for o in obs], dtype=float)
        self._set_size = np.array([o.exp_set_size for o in obs], dtype=np.int64)
        # Time windows, flattened: window j belongs to field _win_owner[j].
        owners = [i for i, o in enumerate(obs) for _ in o.time_windows]
        self._win_owner = np.array(owners, dtype=np.int64)
        self._win_start = np.array([w[0] for o in obs for w in o.time_windows], dtype=float)
        self._win_end = np.array([w[1] for o in obs for w in o.time_windows], dtype=float)
        self._has_windows = np.array([bool(o.time_windows) for o in obs], dtype=bool)

    def horizon_deg(self, az_deg):
        """The altitude limit (degrees) at the given azimuths: max(min altitude, horizon line)."""
        az = np.asarray(az_deg, dtype=float)
        if self._horizon is None:
            return np.full(az.shape, self.min_altitude_deg)
        return np.maximum(self.min_altitude_deg, np.interp(az, *self._horizon, period=360.0))

    def _obstruction_deg(self, az):
        if self._horizon is None:
            return None
        return np.interp(az, *self._horizon, period=360.0)

    def decide(self, unix: float, current: str | None = None,
               exposures_done: Mapping[str, int] | None = None) -> Decision:
        unix = float(unix)
        n = len(self._names)
        if n == 0:
            return Decision(unix, None, "no observable field: no fields loaded", ())

        # Sun state from the same refined crossings as the night's end, so the
        # two can never disagree at the boundary.
        try:
            dark_start, dark_end = self.ephemeris.dark_interval(unix, self.observe_horizon_deg)
        except ValueError:  # e.g. summer at high latitude: no astronomical night at all
            dark_start = dark_end = math.inf
        sun_up = unix < dark_start

        # One precession to the equinox of date serves the start and the end of the set
        # (over a set it moves the positions by well under a milliarcsecond); the
        # formulas are those of observatory.astro.altaz.
        set_end = unix + self._set_time
        ra_date, dec_date = precess_from_j2000(self._ra, self._dec, unix)
        ha_now = lst_deg(unix, self.site.longitude_deg) - ra_date
        ha_end = lst_deg(set_end, self.site.longitude_deg) - ra_date
        alt_now, az_now = _altaz_from_ha(ha_now, dec_date, self._sin_lat, self._cos_lat)
        alt_end, az_end = _altaz_from_ha(ha_end, dec_date, self._sin_lat, self._cos_lat)
        moon_ra, moon_dec = self.ephemeris.moon_radec(unix)
        moon_sep = angular_separation_deg(self._ra, self._dec, moon_ra, moon_dec)
        done_count = np.zeros(n, dtype=np.int64)
        for name, count in (exposures_done or {}).items():
            i = self._index.get(name)
            if i is not None:
                done_count[i] = count

        # Altitude limit: the plain minimum, or the obstruction where it is higher.
        low_now = alt_now < self.min_altitude_deg
        low_end = (alt_end < self.min_altitude_deg) if self.check_set_end else np.zeros(n, dtype=bool)
        obstructed = np.zeros(n, dtype=bool)  # vetoed only because of the horizon line
        obstruction_now = self._obstruction_deg(az_now)
        if obstruction_now is not None:
            blocked = low_now | (alt_now < obstruction_now)
            if self.check_set_end:
                obstruction_end = self._obstruction_deg(az_end)
                blocked |= low_end | (alt_end < obstruction_end)
            obstructed = blocked & ~(low_now | low_end)
        else:
            blocked = low_now | low_end

        # Meridian: hour angle now in (-180, 180]; crossing when it reaches 0 within the set.
        ha_now = np.mod(ha_now + 180.0, 360.0) - 180.0
        to_meridian_s = -ha_now / _HA_RATE_DEG_S
        crosses = (ha_now < 0) & (to_meridian_s <= self._set_time)

        # Time windows: the set must fit in one of the field's windows.
        if self._win_owner.size:
            fits = (self._win_start <= unix) & (set_end[self._win_owner] <= self._win_end)
            in_window = np.bincount(self._win_owner, weights=fits, minlength=n) > 0
            outside = self._has_windows & ~in_window
        else:
            outside = np.zeros(n, dtype=bool)

        veto = np.zeros((len(VETOES), n), dtype=bool)
        veto[_ROW["sun_up"]] = sun_up
        veto[_ROW["below_horizon"]] = blocked
        veto[_ROW["moon"]] = moon_sep < self.moon_separation_deg
        veto[_ROW["time_window"]] = outside
        if self.meridian_policy == "veto":
            veto[_ROW["meridian"]] = crosses
        veto[_ROW["done"]] = done_count >= self._min_nexp
        veto[_ROW["night_ends"]] = (not sun_up) & (set_end > dark_end)
        vetoed = veto.any(axis=0)
        merit = self._priority * np.sin(np.radians(alt_now))
        block_fraction = None
        if self.block_fit and not sun_up:
            block_fraction = self._block_fraction(unix, ra_date, dec_date, done_count, dark_end)
            merit = merit * block_fraction
        penalised = crosses & (self.meridian_policy == "penalise")
        merit = np.where(penalised, merit * self.meridian_penalty, merit)
        merit = np.where(vetoed, 0.0, merit)

        # Notes, only for the few fields that need one.
        notes: dict[int, list[str]] = {}
        if self.meridian_policy != "ignore":
            for i in np.flatnonzero(crosses):
                notes.setdefault(int(i), []).append(
                    f"crosses meridian in {to_meridian_s[i] / 60.0:.0f} min: flip needed")
        if block_fraction is not None:
            for i in np.flatnonzero((block_fraction < 1.0) & ~vetoed):
                notes.setdefault(int(i), []).append(
                    f"only {block_fraction[i]:.0%} of the remaining block fits before it sets or the night ends")
        for i in np.flatnonzero(obstructed):
            notes.setdefault(int(i), []).append(self._obstruction_note(
                int(i), alt_now, az_now, alt_end, az_end))

        order = np.argsort(-merit, kind="stable")
        # Each field's vetoes as a bit code, so that the tuples of names are built once per
        # distinct combination rather than once per field (this loop is the hot path's tail).
        codes = (np.left_shift(1, np.arange(len(VETOES)))[:, None] * veto).sum(axis=0)
        veto_names = {c: tuple(VETOES[k] for k in range(len(VETOES)) if c >> k & 1)
                      for c in np.unique(codes).tolist()}
        names = self._names
        note_tuples = {i: tuple(v) for i, v in notes.items()}
        candidates = tuple(
            Candidate(names[i], m, a, veto_names[c], note_tuples.get(i, ()))
            for i, m, a, c in zip(order.tolist(), merit[order].tolist(), alt_now[order].tolist(),
                                  codes[order].tolist()))

        n_ok = int(n - vetoed.sum())
        if n_ok == 0:
            parts = []
            for name, c in zip(VETOES, veto.sum(axis=1)):
                if c:
                    part = f"{name} {int(c)}"
                    if name == "below_horizon" and obstructed.any():
                        part += f" ({int(obstructed.sum())} behind the obstruction)"
                    parts.append(part)
            reason = f"no observable field: {n} vetoed ({', '.join(parts)})"
            if sun_up:
                dark = f"dark from {iso(dark_start)[:19]}" if math.isfinite(dark_start) else "no dark time ahead"
                reason += f"; sun at {self.ephemeris.sun_alt(unix):.1f} deg, {dark}"
            return Decision(unix, None, reason, candidates)

        best = int(order[0])
        best_name, best_merit = self._names[best], float(merit[best])
        summary = f"best of {n_ok} candidate{'s' if n_ok != 1 else ''}"
        cur = self._index.get(current) if current is not None else None
        if cur is not None and not vetoed[cur]:
            cur_merit = float(merit[cur])
            if cur == best:
                return Decision(unix, current, f"keeping {current}, {summary} (merit {best_merit:.1f})",
                                candidates)
            if cur_merit >= (1.0 - self.hysteresis) * best_merit:
                return Decision(unix, current,
                                f"keeping {current} (merit {cur_merit:.1f}, within {self.hysteresis:.0%} "
                                f"of {best_name} {best_merit:.1f}, {summary})", candidates)
            reason = (f"{best_name} {summary} (merit {best_merit:.1f}); "
                      f"{current} merit {cur_merit:.1f} is over {self.hysteresis:.0%} lower")
        elif cur is not None:
            why = ", ".join(VETOES[k] for k in np.flatnonzero(veto[:, cur]))
            if obstructed[cur]:
                why += ": " + notes[cur][-1]
            reason = f"{best_name} {summary} (merit {best_merit:.1f}); leaving {current} ({why})"
        else:
            reason = f"{best_name} {summary} (merit {best_merit:.1f})"
            if current is not None:
                reason += f"; {current} is no longer in the fields list"
        if penalised[best]:
            reason += f"; {best_name} {notes[best][0]}"
        return Decision(unix, best_name, reason, candidates)

    # Block fit: how much of each field's remaining block (min_nexp less what is
    # done, in sets with their overhead) fits before the field goes below its
    # limit or the dark time ends, on a grid of BLOCK_STEP_S up to BLOCK_HORIZON_S.
    BLOCK_STEP_S = 900.0
    BLOCK_HORIZON_S = 6 * 3600.0

    def _block_fraction(self, unix, ra_date, dec_date, done_count, dark_end) -> np.ndarray:
        remaining = np.maximum(self._min_nexp - done_count, 0)
        sets = np.ceil(remaining / self._set_size)
        block_s = remaining * self._exptime + sets * self.set_overhead_s
        steps = np.arange(1, int(self.BLOCK_HORIZON_S / self.BLOCK_STEP_S) + 1) * self.BLOCK_STEP_S
        times = unix + steps
        ha = lst_deg(times, self.site.longitude_deg)[None, :] - ra_date[:, None]
        alt, az = _altaz_from_ha(ha, dec_date[:, None], self._sin_lat, self._cos_lat)
        limit = np.full(alt.shape, self.min_altitude_deg)
        obstruction = self._obstruction_deg(az)
        if obstruction is not None:
            limit = np.maximum(limit, obstruction)
        low = (alt < limit) | (times[None, :] > dark_end)
        # Up to the last grid point before the first one that fails (conservative).
        first_low = np.where(low.any(axis=1), low.argmax(axis=1), len(steps))
        available = np.where(first_low > 0, steps[np.maximum(first_low - 1, 0)], 0.0)
        available = np.where(first_low == len(steps), np.inf, available)
        with np.errstate(divide="ignore", invalid="ignore"):
            fraction = np.where(block_s > 0, np.minimum(available / block_s, 1.0), 1.0)
        # A set that fits is never scored to nothing: the vetoes decide what cannot be done.
        return np.maximum(fraction, 0.05)

    def _obstruction_note(self, i, alt_now, az_now, alt_end, az_end) -> str:
        """Why field i is below the horizon line although above the plain minimum."""
        limit_now = float(self.horizon_deg(az_now[i]))
        if alt_now[i] < limit_now:
            return (f"behind the obstruction: {alt_now[i]:.1f} deg high at az {az_now[i]:.0f}, "
                    f"horizon there {limit_now:.1f} deg")
        limit_end = float(self.horizon_deg(az_end[i]))
        return (f"behind the obstruction by the end of the set: {alt_end[i]:.1f} deg high at "
                f"az {az_end[i]:.0f}, horizon there {limit_end:.1f} deg")

"""The unit's configuration: one YAML file, validated at start-up.

Every tunable has its default here, in one place; docs/configuration.md lists
them. Errors name the file, the key and the problem, e.g.
``conf/unit.yaml: mount.settings.slew_rate_deg_s: must be greater than 0``.

Relative paths inside the file (fields file, weather timeline, state table)
are resolved against the directory of the configuration file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem; the message names the file, the key and the problem."""


class _Section(BaseModel):
    # strict: a YAML 'yes' must not become latitude 1.0, nor "3" a slew rate.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _text_keys(v: dict) -> dict:
    bad = [k for k in v if not isinstance(k, str)]
    if bad:
        raise ValueError(f"setting names must be text, got {bad[0]!r}")
    return v


class LocationConfig(_Section):
    name: str = "Mauna Loa Observatory"
    latitude: float = Field(19.54, ge=-90, le=90, description="degrees, north positive")
    longitude: float = Field(-155.58, ge=-180, le=360, description="degrees, east positive")
    elevation: float = Field(3400.0, ge=-500, le=9000, description="metres")
    observe_horizon: float = Field(-18.0, ge=-24, le=0,
                                   description="sun altitude below which the unit observes")
    min_altitude: float = Field(30.0, ge=0, lt=90, description="lowest field altitude to observe")


class ActorSystemConfig(_Section):
    admin_port: int = Field(19500, ge=1024, le=65535)
    bind_address: str = Field("127.0.0.1", description="the one address every actor socket listens on; "
                                                      "another than loopback needs allow_network")
    allow_network: bool = Field(False, description="allow a non-loopback bind_address (a VPN address: "
                                                   "docs/multihost.md)")

    @model_validator(mode="after")
    def _bind(self) -> "ActorSystemConfig":
        from observatory.hosts import check_bind_address
        # No test bind here: the file may be checked on another computer. run_unit.py
        # checks again, with a test bind, before it starts the actor system.
        check_bind_address(self.bind_address, self.allow_network, probe=False,
                           flag="actor_system.allow_network: true")
        return self


class HostConfig(_Section):
    """A member host: a computer running the agent (python -m observatory.member)
    that holds the devices whose ``host`` names it (docs/multihost.md)."""
    address: str = Field(description="the address the member's agent binds to (its VPN address)")
    admin_port: int = Field(19501, ge=1024, le=65535, description="the member's admin port")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        import ipaddress
        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address") from None
        if ip.version != 4 or ip.is_unspecified:
            raise ValueError(f"{v}: give the member's own IPv4 address (not 0.0.0.0)")
        return v


class _DeviceConfig(_Section):
    """A device: which driver, and the driver's own settings (checked by the driver)."""
    driver: Literal["simulator"] = "simulator"
    settings: dict = Field(default_factory=dict)
    host: str | None = Field(None, description="the member host (a key of `hosts`) that holds this device; "
                                               "None: the unit's own computer")

    @field_validator("settings")
    @classmethod
    def _settings(cls, v: dict) -> dict:
        return _text_keys(v)


class MountConfig(_DeviceConfig):
    driver: Literal["simulator", "ioptron", "indi"] = "simulator"


class CameraConfig(_DeviceConfig):
    driver: Literal["simulator", "indi"] = "simulator"
    name: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
    primary: bool = False


class DomeConfig(_DeviceConfig):
    driver: Literal["simulator", "indi"] = "simulator"
    timeout: float = Field(300.0, gt=0, description="simulated seconds for the shutter to open or close")


class FocuserConfig(_DeviceConfig):
    driver: Literal["simulator", "indi"] = "simulator"
    name: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
    camera: str = Field(description="the camera this focuser moves")
    position: int | None = Field(None, ge=0, description="focus position set at start-up (steps)")
    timeout: float = Field(300.0, gt=0, description="simulated seconds for a move")
    limits: tuple[int, int] = Field((0, 10000), description="the focuser's travel, steps (for autofocus)")
    autofocus: dict | None = Field(None, description="autofocus settings (observatory/autofocus.py); "
                                                     "null: no autofocus, {}: the defaults")

    @field_validator("limits", mode="before")
    @classmethod
    def _limits_pair(cls, v):
        return tuple(v) if isinstance(v, list) else v

    @field_validator("autofocus")
    @classmethod
    def _autofocus(cls, v):
        if v is not None:
            from observatory.autofocus import AutofocusSettings
            AutofocusSettings.from_mapping(v)
        return v

    @model_validator(mode="after")
    def _limits(self):
        lo, hi = self.limits
        if not 0 <= lo < hi:
            raise ValueError(f"limits: expected [low, high] with 0 <= low < high, got {list(self.limits)}")
        if self.position is not None and not lo <= self.position <= hi:
            raise ValueError(f"position {self.position} is outside the limits {list(self.limits)}")
        return self


class FilterWheelConfig(_DeviceConfig):
    driver: Literal["simulator", "indi"] = "simulator"
    filter: str | None = Field(None, description="filter (name or slot number) selected at start-up")
    timeout: float = Field(120.0, gt=0, description="simulated seconds for a filter change")


class WeatherConfig(_Section):
    driver: Literal["simulator", "cloudwatcher", "indi"] = "simulator"
    settings: dict = Field(default_factory=dict, description="the cloudwatcher driver's settings")
    host: str | None = Field(None, description="the member host (a key of `hosts`) that holds the station")
    timeline: str | None = "weather/default.yaml"
    sample_interval: float = Field(30.0, gt=0, description="simulated seconds between readings")

    @field_validator("settings")
    @classmethod
    def _settings(cls, v: dict) -> dict:
        return _text_keys(v)


class SafetyConfig(_Section):
    """The safety kernel (actors/safety.py, rules in observatory/safety_rules.py)."""
    check_interval: float = Field(5.0, gt=0, description="simulated seconds between evaluations")
    max_check_wall_interval: float = Field(0.25, gt=0, description="wall seconds, upper bound")
    max_weather_age: float = Field(60.0, gt=0, description="simulated seconds; an older reading is unsafe")
    max_sky_minus_ambient: float = -25.0
    max_wind: float = Field(50.0, gt=0, description="km/h")
    max_gust: float = Field(70.0, gt=0, description="km/h")
    reopen_after: float = Field(0.0, ge=0,
                                description="simulated seconds of continuous weather safety the supervisor "
                                            "waits for, on top of the kernel's clear-after periods")
    # Hysteresis: simulated seconds of good data before a condition clears.
    rain_clear_after: float = Field(600.0, ge=0, description="seconds of dry readings after rain")
    cloud_clear_after: float = Field(300.0, ge=0, description="seconds of clear-sky readings after clouds")
    wind_clear_after: float = Field(600.0, ge=0, description="seconds of readings below max_wind")
    gust_clear_after: float = Field(600.0, ge=0, description="seconds of readings without a gust above max_gust")
    stale_clear_after: float = Field(0.0, ge=0, description="after a stale, missing or incomplete reading")
    min_free_disk_gb: float = Field(1.0, ge=0, description="free space under PANDIR below this is unsafe")
    disk_clear_after: float = Field(0.0, ge=0)
    # Power: a UPS (drivers/ups.py).
    ups_driver: Literal["none", "simulator", "nut"] = "simulator"
    ups_timeline: str | None = Field(None, description="simulator: a weather timeline file with power keys "
                                                       "(absolute path)")
    ups_name: str = Field("ups@localhost", description="nut: the UPS as upsc names it")
    ups_command: str = Field("upsc", description="nut: the upsc program")
    ups_timeout: float = Field(3.0, gt=0, description="nut: wall seconds for upsc to answer")
    ups_poll_interval: float = Field(5.0, gt=0, description="wall seconds between UPS reads")
    max_on_battery_s: float = Field(0.0, ge=0, description="simulated seconds on battery before unsafe (0: at once)")
    power_clear_after: float = Field(0.0, ge=0, description="seconds back on mains before power clears")
    # Safety-critical devices (mount, dome) must answer status requests.
    device_timeout: float = Field(5.0, gt=0, description="wall seconds without a status answer: unsafe")
    device_clear_after: float = Field(0.0, ge=0)
    # Park and close commanded by the kernel itself while unsafe.
    park_confirm_timeout: float = Field(600.0, gt=0, description="simulated seconds for the mount to park")
    close_confirm_timeout: float = Field(600.0, gt=0, description="simulated seconds for the dome to close")
    confirm_min_wall: float = Field(10.0, gt=0, description="...but never less than this many wall seconds")

    @field_validator("ups_timeline")
    @classmethod
    def _absolute(cls, v):
        if v is not None and not os.path.isabs(os.path.expanduser(v)):
            raise ValueError("must be an absolute path")
        return v


class SchedulerConfig(_Section):
    fields_file: str = "fields.yaml"
    moon_separation: float = Field(15.0, ge=0, le=180)
    hysteresis: float = Field(0.1, ge=0, lt=1)
    set_overhead: float = Field(120.0, ge=0, description="seconds a set costs beyond its exposures")
    horizon: list[tuple[float, float]] | None = Field(
        None, description="obstructions: [azimuth, altitude] points, degrees; None = min_altitude only")
    meridian_policy: Literal["penalise", "veto", "ignore"] = "penalise"
    meridian_penalty: float = Field(0.5, ge=0, le=1)

    @field_validator("horizon", mode="before")
    @classmethod
    def _horizon_points(cls, v):
        # YAML has lists, not tuples: each [azimuth, altitude] pair becomes a tuple
        # (strict mode would refuse the list, but a wrong length or a text still fails).
        if isinstance(v, list):
            return [tuple(p) if isinstance(p, list) else p for p in v]
        return v

    @field_validator("horizon")
    @classmethod
    def _horizon(cls, v):
        if v is None:
            return v
        if len(v) < 2:
            raise ValueError("give at least two [azimuth, altitude] points")
        for az, alt in v:
            if not (0 <= az <= 360 and 0 <= alt < 90):
                raise ValueError(f"point [{az}, {alt}]: azimuth must be 0..360 and altitude 0..90 degrees")
        return v



class ObservingConfig(_Section):
    pointing_exptime: float = Field(30.0, gt=0)
    readout_margin: float = Field(30.0, ge=0, description="simulated seconds allowed beyond exptime+readout")
    slew_margin: float = Field(60.0, ge=0)
    drift_threshold_px: float = Field(2.0, gt=0)
    guide_ms_per_px: float = Field(100.0, gt=0)
    wake_before_dark: float = Field(1800.0, ge=0, description="leave sleeping this long before dark")
    retry_after_no_target: float = Field(600.0, gt=0)
    retry_after_fault: float = Field(300.0, gt=0, description="after rounds without a frame, park this long")
    meridian_flip: bool = Field(True, description="stop at the meridian, flip and re-point (German mount)")
    meridian_flip_margin: float = Field(120.0, ge=0, description="seconds past the meridian before flipping")
    cloud_star_fraction: float = Field(0.5, gt=0, lt=1, description="a science frame with fewer stars than "
                                                                     "this fraction of the camera's recent ones "
                                                                     "is flagged as cloudy")
    plate_solve: bool = Field(True, description="solve pointing frames (and correct the pointing) and science frames")
    pointing_threshold_arcsec: float = Field(120.0, gt=0, description="good enough: stop correcting")
    pointing_max_attempts: int = Field(3, ge=1, description="pointing frames per slew, the first included")
    solve_timeout: float = Field(60.0, gt=0, description="wall seconds solve-field may take on a pointing frame")


class RetentionConfig(_Section):
    """observatory/retention.py: nothing is ever deleted without a verified copy."""
    archive_dir: str | None = Field(None, description="where frames are copied; must exist; null: keep everything")
    min_free_gb: float = Field(5.0, ge=0, description="free space to keep on the images disk")
    max_age_days: float | None = Field(None, gt=0, description="delete (copied) frames older than this")
    verify_copy: bool = Field(True, description="compare size and SHA-256 before trusting a copy")


class ImagesConfig(_Section):
    """How frames are kept on disk under $PANDIR/images (docs/configuration.md, `images`)."""
    compress: Literal["none", "rice"] = Field("none", description="rice: each frame, once analysed, is rewritten "
                                                                  "as a lossless tile-compressed .fits.fz (fpack's "
                                                                  "format) and its record moved to it")


class CalibrationConfig(_Section):
    darks: bool = Field(True, description="bias and darks in housekeeping, for the night's exposure times")
    n_bias: int = Field(10, ge=0)
    n_darks: int = Field(5, ge=0, description="per exposure time")
    budget: float = Field(3600.0, gt=0, description="simulated seconds the calibration may take")
    flats: bool = Field(True, description="twilight flats in the evening and morning windows")
    flat_sun_high: float = Field(-3.0, ge=-12.0, le=0.0, description="flats begin (evening) or end (morning) "
                                                                     "with the sun this low [deg]")
    flat_sun_low: float = Field(-10.0, ge=-18.0, le=-1.0, description="and end (evening) or begin (morning) "
                                                                      "with the sun this low [deg]")
    n_flats: int = Field(5, ge=1, description="flats to keep per camera and window")
    flat_target_fraction: float = Field(0.45, gt=0.05, lt=0.9, description="target level, between bias (0) "
                                                                          "and saturation (1)")
    flat_tolerance: float = Field(0.25, gt=0, lt=1, description="a flat is kept within this fraction of "
                                                                "the target signal")
    flat_min_exptime: float = Field(0.5, gt=0)
    flat_max_exptime: float = Field(60.0, gt=0)
    flat_initial_exptime: float = Field(1.0, gt=0)
    flat_wait: float = Field(60.0, gt=0, description="simulated seconds to wait when the sky is out of range")
    flat_zenith_distance: float = Field(13.0, ge=0, le=45, description="flats point this far from the zenith, "
                                                                       "away from the sun [deg]")
    flat_dither_arcmin: float = Field(10.0, ge=0, le=120, description="offset between flats (dice-9 pattern), "
                                                                      "0 for none [arcmin]")

    @model_validator(mode="after")
    def _flat_limits(self):
        if self.flat_sun_low >= self.flat_sun_high:
            raise ValueError(f"flat_sun_low ({self.flat_sun_low}) must be below flat_sun_high "
                             f"({self.flat_sun_high})")
        if self.flat_min_exptime > self.flat_max_exptime:
            raise ValueError(f"flat_min_exptime ({self.flat_min_exptime}) is above flat_max_exptime "
                             f"({self.flat_max_exptime})")
        return self


class ChildSupervisionConfig(_Section):
    """Per-child overrides of the restart policy (observatory/supervision.py)."""
    restart: Literal["permanent", "transient", "temporary"] = "permanent"
    max_restarts: int | None = Field(None, ge=0)
    period_s: float | None = Field(None, gt=0)
    backoff_initial_s: float | None = Field(None, ge=0)
    backoff_max_s: float | None = Field(None, ge=0)


class SupervisionConfig(_Section):
    max_restarts: int = Field(5, ge=0)
    restart_period: float = Field(60.0, gt=0, description="wall seconds")
    init_timeout: float = Field(20.0, gt=0, description="wall seconds")
    heartbeat_interval: float = Field(2.0, gt=0, description="wall seconds between heartbeats to each actor")
    heartbeat_timeout: float = Field(10.0, gt=0, description="wall seconds of silence before a hung actor is killed")
    remote_heartbeat_timeout: float = Field(6.0, gt=0, description="wall seconds of silence before an actor on a "
                                                                    "member host is declared lost")
    backoff_initial: float = Field(0.5, ge=0, description="wall seconds before the second restart within the period; "
                                                          "doubles with each further one")
    backoff_max: float = Field(30.0, ge=0, description="longest wait between restarts")
    children: dict[str, ChildSupervisionConfig] = Field(default_factory=dict,
                                                        description="per-actor overrides, by actor name")


# Names of the unit's own actors; cameras and focusers may not take them.
RESERVED_ACTOR_NAMES = ("unit", "archive", "weather", "safety", "scheduler", "analysis", "mount", "dome",
                        "filterwheel")


class UnitConfig(_Section):
    name: str = "Generic PANOPTES Unit"
    location: LocationConfig = LocationConfig()
    actor_system: ActorSystemConfig = ActorSystemConfig()
    states: str = "states.yaml"
    mount: MountConfig = MountConfig()
    cameras: list[CameraConfig] = Field(default_factory=lambda: [
        CameraConfig(name="cam00", primary=True), CameraConfig(name="cam01")])
    dome: DomeConfig | None = None
    focusers: list[FocuserConfig] = Field(default_factory=list)
    filterwheel: FilterWheelConfig | None = None
    weather: WeatherConfig = WeatherConfig()
    safety: SafetyConfig = SafetyConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    observing: ObservingConfig = ObservingConfig()
    supervision: SupervisionConfig = SupervisionConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    retention: RetentionConfig = RetentionConfig()
    images: ImagesConfig = ImagesConfig()
    hosts: dict[str, HostConfig] = Field(default_factory=dict,
                                         description="member hosts by name (docs/multihost.md)")

    def placed_devices(self) -> list[tuple[str, str]]:
        """(configuration key, host) of every device placed on a member host."""
        out = [(key, section.host) for key, section in
               (("mount", self.mount), ("dome", self.dome), ("filterwheel", self.filterwheel),
                ("weather", self.weather)) if section is not None and section.host]
        out += [(f"cameras.{i}", c.host) for i, c in enumerate(self.cameras) if c.host]
        out += [(f"focusers.{i}", f.host) for i, f in enumerate(self.focusers) if f.host]
        return out

    @model_validator(mode="after")
    def _hosts(self) -> "UnitConfig":
        import re

        from observatory.hosts import HOST_NAME_PATTERN, is_loopback
        for name, h in self.hosts.items():
            if not re.match(HOST_NAME_PATTERN, name):
                raise ValueError(f"hosts.{name}: host names take letters, digits, '_', '.', '-' only")
            if (h.address, h.admin_port) == (self.actor_system.bind_address, self.actor_system.admin_port):
                raise ValueError(f"hosts.{name}: {h.address}:{h.admin_port} is the unit's own admin address")
            if is_loopback(self.actor_system.bind_address) and not is_loopback(h.address):
                raise ValueError(f"hosts.{name}.address: a member at {h.address} cannot reach a unit bound to "
                                 f"{self.actor_system.bind_address}: set actor_system.bind_address to the unit's "
                                 "VPN address (and allow_network: true)")
        ports = [(h.address, h.admin_port) for h in self.hosts.values()]
        if len(set(ports)) != len(ports):
            raise ValueError("hosts: two hosts share an address and admin_port")
        for key, host in self.placed_devices():
            if host not in self.hosts:
                raise ValueError(f"{key}.host: no host named {host!r} under hosts "
                                 f"(hosts: {sorted(self.hosts) or 'none'})")
        return self

    @model_validator(mode="after")
    def _cameras(self) -> "UnitConfig":
        if not self.cameras:
            raise ValueError("cameras: at least one camera is needed")
        names = [c.name for c in self.cameras]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cameras: duplicate camera names {dupes}")
        if sum(c.primary for c in self.cameras) > 1:
            raise ValueError("cameras: only one camera can be primary")
        taken = set(names) | set(RESERVED_ACTOR_NAMES)
        for i, f in enumerate(self.focusers):
            if f.name in taken:
                raise ValueError(f"focusers.{i}.name: {f.name!r} is already the name of a camera, "
                                 f"another focuser or a unit actor")
            taken.add(f.name)
            if f.camera not in names:
                raise ValueError(f"focusers.{i}.camera: no camera named {f.camera!r} (cameras: {names})")
        actors = set(taken) | {f.name for f in self.focusers}
        unknown = sorted(set(self.supervision.children) - actors - {"unit"})
        if unknown:
            raise ValueError(f"supervision.children: no actor named {unknown} (actors: {sorted(actors - {'unit'})})")
        if "unit" in self.supervision.children:
            raise ValueError("supervision.children.unit: the supervisor itself is restarted by the service manager")
        focused = [f.camera for f in self.focusers]
        dupes = sorted({n for n in focused if focused.count(n) > 1})
        if dupes:
            raise ValueError(f"focusers: more than one focuser for camera(s) {dupes}")
        return self

    @property
    def primary_camera(self) -> str:
        return next((c.name for c in self.cameras if c.primary), self.cameras[0].name)


def _format_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def _check_driver_settings(source: str, cfg: UnitConfig) -> None:
    """Each driver refuses unknown or bad settings; ask it now, before any
    process starts, rather than when its actor initialises."""
    from observatory.clock import SimClock
    clock = SimClock.starting_now()
    checks = []
    if cfg.mount.driver == "simulator":
        from simulators.mount import SimulatedMount
        checks.append(("mount.settings", lambda: SimulatedMount(
            dict(cfg.mount.settings), clock, cfg.location.latitude, cfg.location.longitude)))
    elif cfg.mount.driver == "indi":
        from drivers.indi import IndiMount
        checks.append(("mount.settings", lambda: IndiMount(
            dict(cfg.mount.settings), clock, cfg.location.latitude, cfg.location.longitude)))
    elif cfg.mount.driver == "ioptron":
        from drivers.ioptron import IOptronMount        # checks its settings without opening the port
        checks.append(("mount.settings", lambda: IOptronMount(
            dict(cfg.mount.settings), clock, cfg.location.latitude, cfg.location.longitude)))
    if cfg.weather.driver == "cloudwatcher":
        from drivers.cloudwatcher import CloudWatcher   # checks its settings without opening the port
        checks.append(("weather.settings", lambda: CloudWatcher(dict(cfg.weather.settings), clock)))
    elif cfg.weather.driver == "indi":
        from drivers.indi import IndiWeather
        checks.append(("weather.settings", lambda: IndiWeather(dict(cfg.weather.settings), clock)))
    elif cfg.weather.settings:
        raise ConfigError(f"{source}: weather.settings: the simulator driver takes no settings")
    for i, cam in enumerate(cfg.cameras):
        if cam.driver == "simulator":
            from simulators.camera import SimulatedCamera
            checks.append((f"cameras.{i}.settings", lambda cam=cam: SimulatedCamera(
                cam.name, dict(cam.settings), clock)))
        elif cam.driver == "indi":
            from drivers.indi import IndiCamera
            checks.append((f"cameras.{i}.settings", lambda cam=cam: IndiCamera(
                dict(cam.settings), clock, name=cam.name)))
    for key, section in (("dome", cfg.dome), ("filterwheel", cfg.filterwheel),
                         *((f"focusers.{i}", f) for i, f in enumerate(cfg.focusers))):
        if section is None:
            continue
        role = "focuser" if key.startswith("focusers") else key
        from drivers.accessory import make_accessory_driver, slot_for

        def make(role=role, section=section):
            driver = make_accessory_driver(role, getattr(section, "name", role),
                                           {"driver": section.driver, "settings": dict(section.settings)},
                                           clock, pandir=None)
            if section.driver == "simulator" and role == "filterwheel" and section.filter is not None:
                slot_for(section.filter, driver.names(), "filter")   # a filter the wheel has
            if section.driver == "simulator" and role == "focuser" and section.position is not None \
                    and section.position > driver.settings["max_position"]:
                raise ValueError(f"position {section.position} is beyond the focuser's "
                                 f"max_position {driver.settings['max_position']}")
            return driver
        checks.append((f"{key}.settings", make))
    for key, make in checks:
        try:
            make()
        except Exception as e:  # noqa: BLE001 - drivers raise their own error types
            raise ConfigError(f"{source}: {key}: {e}") from None


def load_config(path: str | os.PathLike) -> dict:
    """Read and validate a unit configuration file.

    Returns a plain dict (what travels to the actors) with all defaults filled
    in, file paths made absolute, plus ``config_file`` and ``config_hash``.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read configuration: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        cfg = UnitConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(str(path), e)) from None

    base = path.resolve().parent
    data = cfg.model_dump()
    _drop_unset_hosts(data)

    def resolve(p: str | None) -> str | None:
        return None if p is None else str((base / os.path.expanduser(p)).resolve())

    data["states"] = resolve(cfg.states)
    data["scheduler"]["fields_file"] = resolve(cfg.scheduler.fields_file)
    data["weather"]["timeline"] = resolve(cfg.weather.timeline)
    for key, p in (("states", data["states"]), ("scheduler.fields_file", data["scheduler"]["fields_file"]),
                   ("weather.timeline", data["weather"]["timeline"])):
        if p is not None and not Path(p).is_file():
            raise ConfigError(f"{path}: {key}: file not found: {p}")
    _check_driver_settings(str(path), cfg)
    data["primary_camera"] = cfg.primary_camera
    data["config_file"] = str(path.resolve())
    data["config_hash"] = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return data


def _drop_unset_hosts(data: dict) -> None:
    """A device's ``host`` key appears in the loaded configuration only when it is
    set (read it with ``section.get("host")``): single-computer units look as before."""
    sections = [data.get(k) for k in ("mount", "dome", "filterwheel", "weather")]
    sections += list(data.get("cameras") or []) + list(data.get("focusers") or [])
    for section in sections:
        if isinstance(section, dict) and section.get("host", "") is None:
            del section["host"]


def scheduler_kwargs(scheduler: dict, location: dict) -> dict:
    """Keyword arguments for observatory.scheduler.Scheduler from the loaded
    ``scheduler`` and ``location`` sections (plain dicts, as actors get them)."""
    scheduler = {**SchedulerConfig().model_dump(), **scheduler}
    horizon = scheduler.get("horizon")
    return dict(min_altitude_deg=location["min_altitude"], moon_separation_deg=scheduler["moon_separation"],
                observe_horizon_deg=location["observe_horizon"], hysteresis=scheduler["hysteresis"],
                set_overhead_s=scheduler["set_overhead"], horizon=[tuple(p) for p in horizon] if horizon else None,
                meridian_policy=scheduler["meridian_policy"], meridian_penalty=scheduler["meridian_penalty"])

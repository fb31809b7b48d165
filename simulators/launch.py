"""Start the wire-level simulators a simulated unit talks to, as separate
processes standing in for hardware.

A device configured with ``port: simulator`` (for example the iOptron mount)
gets its simulator started by run_unit.py on a free loopback port, sharing the
unit's clock; the device's driver is then given that port, so the same driver
code runs as against a real mount. The simulators exit with run_unit.py.
"""
from __future__ import annotations

import copy
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from observatory.clock import SimClock, iso

SIMULATE = "simulator"


@dataclass
class WireSimulator:
    device: str
    url: str
    process: subprocess.Popen

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def start_wire_simulators(config: dict, clock: SimClock, pandir: Path) -> tuple[dict, list[WireSimulator]]:
    """Returns the configuration with simulator ports filled in, and the simulators."""
    config = copy.deepcopy(config)
    started: list[WireSimulator] = []
    try:
        _start_mount(config, clock, pandir, started)
        _start_weather(config, clock, pandir, started)
    except Exception:
        for sim in started:
            sim.stop()
        raise
    config["simulator_pids"] = [sim.process.pid for sim in started]
    return config, started


def _clock_args(clock: SimClock) -> list[str]:
    return ["--speed", repr(clock.speed), "--start", iso(clock.start_unix), "--wall-origin", repr(clock.wall_origin)]


def _start_weather(config: dict, clock: SimClock, pandir: Path, started: list[WireSimulator]) -> None:
    weather = config["weather"]
    if weather["driver"] != "cloudwatcher" or weather["settings"].get("port") != SIMULATE:
        return
    args = [sys.executable, "-m", "simulators.cloudwatcher", "--port", "0", *_clock_args(clock),
            "--sample-interval", repr(weather["sample_interval"])]
    if weather.get("timeline"):
        args += ["--timeline", weather["timeline"]]
    args += ["--control", _control_file(config, pandir, "weather")]
    weather["settings"]["port"] = _start(args, started, "weather", Path(pandir) / "logs" / "sim-cloudwatcher.log")


def _start_mount(config: dict, clock: SimClock, pandir: Path, started: list[WireSimulator]) -> None:
    mount = config["mount"]
    if mount["driver"] == "ioptron" and mount["settings"].get("port") == SIMULATE:
        state = Path(pandir) / "run" / "sim" / "ioptron.json"
        state.parent.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "simulators.ioptron", "--port", "0",
                "--speed", repr(clock.speed), "--start", iso(clock.start_unix),
                "--wall-origin", repr(clock.wall_origin),
                "--lat", repr(config["location"]["latitude"]), "--lon", repr(config["location"]["longitude"]),
                "--state-file", str(state)]
        for key, flag in (("slew_rate_deg_s", "--slew-rate"), ("altitude_limit_deg", "--altitude-limit")):
            if key in mount["settings"]:
                args += [flag, repr(mount["settings"][key])]
        args += ["--control", _control_file(config, pandir, "mount")]
        mount["settings"]["port"] = _start(args, started, "mount", Path(pandir) / "logs" / "sim-ioptron.log")


def _control_file(config: dict, pandir: Path, device: str) -> str:
    """Where the supervisor writes a misbehaviour for this device's simulator (fault injection)."""
    path = Path(pandir) / "run" / "sim" / f"{device}-wire.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    config.setdefault("wire_controls", {})[device] = str(path)
    return str(path)


def _start(args: list[str], started: list[WireSimulator], device: str, log_path: Path) -> str:
    log = open(log_path, "a")
    # A session of its own, and no death signal: like real hardware, it must
    # outlive a signal to run_unit.py's process group (Ctrl-C, a service manager
    # stopping the unit) and even run_unit.py's death, until the unit has parked
    # it. run_unit.py stops it at the end; if run_unit.py dies, the supervisor
    # does, once parked (config "simulator_pids").
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
                            cwd=Path(__file__).resolve().parent.parent)
    line = proc.stdout.readline().strip()
    if not line or proc.poll() is not None:
        proc.kill()
        proc.wait()
        log.close()
        raise RuntimeError(f"the {device} simulator did not start (see {log_path})")
    # Whatever else it prints goes to its log, so a full pipe can never stall it.
    threading.Thread(target=_drain, args=(proc.stdout, log), daemon=True).start()
    started.append(WireSimulator(device, line, proc))
    return line


def _drain(stream, log) -> None:
    for line in stream:
        log.write(line)
        log.flush()

"""The real iOptron driver against the iOptron simulator over a real
pseudo-terminal (a serial line, as on a telescope), including every
misbehaviour of ``simulators.wire.WireServer`` and the recovery after each.

What a pty does that TCP does not (found and pinned down here):

- One line, one serving thread. A slow reply holds up the commands queued
  behind it, and the late reply still arrives afterwards: closing and
  reopening the device does not discard it (the simulator holds the slave
  open, as a USB adapter's buffer would), unlike a fresh TCP connection. The
  driver flushes the input before every command, so once the late replies are
  out the next command is answered correctly; a reply that arrives while a
  later command is waiting can be read as that command's answer (a serial
  line has no framing to tell them apart; the reply pattern check rejects
  most such mixes, and retries then recover).
- ``vanish`` closes the TCP side only: the pty stays open, at the same path,
  and silent (commands are still carried out, no replies). ``behave()``
  serves it again at the same path and the driver recovers by itself.
- A pty closed for real (``stop()``, the simulator process exiting: a USB
  adapter unplugged) is gone. The driver reports a link failure naming the
  port and the command, and keeps its configured path. A new pty (a replug)
  gets whatever /dev/pts number the kernel hands out, often the freed one:
  at the same path the driver recovers by itself, at another path it keeps
  failing with "cannot open the mount port ..." until it is given the new
  path (on a telescope: use a stable /dev/serial/by-id/... name).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import serial

from drivers.ioptron import IOptronMount, MountError
from observatory.clock import SimClock, parse_iso
from simulators.ioptron import IOptronSimulator
from simulators.mount import SimulatedMount

ROOT = Path(__file__).resolve().parent.parent
LAT, LON = 19.54, -155.58
SPEED = 100.0
TIMEOUT = 0.3
RETRIES = 1
SLOW_S = 0.8            # longer than both attempts together, so a slow reply fails the exchange
SLACK_S = 1.0           # loose bound on how far an exchange may overrun its timeouts


@pytest.fixture
def clock():
    return SimClock.starting_now(parse_iso("2026-11-24T10:00:00"), speed=SPEED)


@pytest.fixture
def model(clock):
    return SimulatedMount({}, clock, LAT, LON)


@pytest.fixture
def sim(model, clock):
    s = IOptronSimulator(model, clock).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def pty_path(sim):
    path = sim.open_pty()
    assert path.startswith("/dev/") and os.path.exists(path)
    return path


def make_driver(port, clock, **extra):
    return IOptronMount({"port": port, "timeout_s": TIMEOUT, "retries": RETRIES, **extra}, clock, LAT, LON)


@pytest.fixture
def mount(pty_path, clock):
    d = make_driver(pty_path, clock)
    try:
        d.connect()
        yield d
    finally:
        d.close()


def bound(attempts: int) -> float:
    return attempts * TIMEOUT + SLACK_S


def fails(call, pattern: str, attempts: int):
    """Run ``call``; it must raise exactly MountError matching ``pattern``
    within ``attempts`` timeouts (plus slack). Returns the message."""
    t0 = time.monotonic()
    with pytest.raises(MountError) as info:
        call()
    elapsed = time.monotonic() - t0
    assert info.type is MountError, f"{info.type.__name__}: {info.value}"
    message = str(info.value)
    assert re.search(pattern, message), f"{message!r} does not match {pattern!r}"
    assert elapsed < bound(attempts), f"took {elapsed:.2f} s: {message}"
    return message


# -- a clean line ---------------------------------------------------------------------------------


def test_driver_works_over_a_pty(mount, pty_path, sim, model, clock):
    assert mount.connected
    assert mount.status()["parked"]
    mount.unpark()
    assert mount.status()["state"] == "stopped"
    assert model.status()["state"] == "stopped"
    assert ":MP0#" in sim.commands_seen
    t0 = time.monotonic()
    mount.close()
    assert mount.connect()["port"] == pty_path      # close and reopen the same device
    assert time.monotonic() - t0 < 2.0


# -- misbehaviour: a query, retried -------------------------------------------------------------


QUERY_FAILURES = {
    "silent": r"^no reply to :GLS# within 0\.3 s \(2 attempts\)$",
    "garbage": r"^unexpected reply to :GLS#: b'[^0-9']+#' \(expected the pattern .+\) \(2 attempts\)$",
    "half": r"^incomplete reply to :GLS#: b'[+-]\d{5,}' after 0\.3 s \(expected a reply ending in '#'\) "
            r"\(2 attempts\)$",
    "slow": r"^no reply to :GLS# within 0\.3 s \(2 attempts\)$",
    "vanish": r"^no reply to :GLS# within 0\.3 s \(2 attempts\)$",     # the pty stays, silent
}


@pytest.mark.parametrize("mode", sorted(QUERY_FAILURES))
def test_query_misbehaviour_over_pty_then_recovery(mount, sim, pty_path, mode):
    sim.set_misbehaviour(mode, delay_s=SLOW_S)
    t0 = time.monotonic()
    fails(mount.status, QUERY_FAILURES[mode], attempts=RETRIES + 1)
    assert os.path.exists(pty_path)                  # no misbehaviour closes the pty
    sim.behave()
    if mode == "slow":
        # The late replies (to both attempts) are still to come on this line:
        # let them arrive; the driver flushes them before its next command.
        time.sleep(max(0.0, t0 + SLOW_S - time.monotonic()) + 0.2)
    t1 = time.monotonic()
    assert mount.status()["parked"]                  # same driver, same path
    mount.unpark()
    assert mount.status()["state"] == "stopped"
    assert time.monotonic() - t1 < 2.0               # no timeouts on the way
    assert mount.settings["port"] == pty_path


# -- misbehaviour: fixed-length replies and commands sent once ---------------------------------


CONNECT_FAILURES = {
    "silent": r"^no reply to :MountInfo# within 0\.3 s \(2 attempts\)$",
    "garbage": r"^unexpected reply to :MountInfo#: b'[^0-9']{4}' \(expected the pattern \\d\{4\}\) "
               r"\(2 attempts\)$",
    "half": r"^incomplete reply to :MountInfo#: b'00' after 0\.3 s \(expected 4 characters\) "
            r"\(2 attempts\)$",
}


@pytest.mark.parametrize("mode", sorted(CONNECT_FAILURES))
def test_connect_misbehaviour_over_pty_then_recovery(sim, pty_path, clock, mode):
    d = make_driver(pty_path, clock)
    try:
        sim.set_misbehaviour(mode)
        fails(d.connect, CONNECT_FAILURES[mode], attempts=RETRIES + 1)
        assert not d.connected
        sim.behave()
        assert d.connect()["model_code"] == "0040"
        assert d.connected
    finally:
        d.close()


def test_motion_command_is_sent_once_and_carried_out_without_its_reply(mount, sim, model):
    mount.unpark()
    assert model.status()["state"] == "stopped"
    sim.set_misbehaviour("silent")
    sent = len(sim.commands_seen)
    # What park() sends after its status check: the motion command, once.
    fails(lambda: mount.command(":MP1#", 1, re.compile("[01]")), r"^no reply to :MP1# within 0\.3 s$",
          attempts=1)                                                    # no retry, no "(n attempts)"
    assert sim.commands_seen[sent:] == [":MP1#"]
    assert model.status()["state"] in ("parking", "parked")              # the mount moves all the same
    sim.behave()
    assert mount.status()["state"] in ("slewing", "parking", "parked")


def test_one_bad_reply_over_pty_is_absorbed_by_the_retry(mount, sim):
    for mode in ("garbage", "half", "silent"):
        sim.set_misbehaviour(mode, times=1)
        t0 = time.monotonic()
        assert mount.status()["parked"], mode
        assert time.monotonic() - t0 < bound(2), mode
        assert sim.misbehaviour == "normal", mode


# -- the pty itself goes away --------------------------------------------------------------------


def test_closed_pty_gives_link_error_and_a_new_pty_needs_its_path(mount, sim, model, clock, pty_path):
    mount.unpark()
    sim.stop()                                       # the device is gone (unplugged)
    assert not os.path.exists(pty_path)
    path = re.escape(pty_path)
    gone = rf"(link to the mount at {path} failed during :GLS#|cannot open the mount port {path}: .*; :GLS# not sent)"
    fails(mount.status, rf"^{gone}.* \(2 attempts\)$", attempts=RETRIES + 1)
    fails(mount.status, rf"^cannot open the mount port {path}: .*; :GLS# not sent \(2 attempts\)$",
          attempts=RETRIES + 1)
    fails(lambda: mount.command(":MH#", 1), rf"^cannot open the mount port {path}: .*; :MH# not sent$",
          attempts=1)

    sim.start()                                      # plugged back in: a new pty
    new_path = sim.open_pty()
    try:
        if new_path == pty_path:                     # the kernel reused the number
            assert mount.status()["state"] == "stopped"
        else:
            fails(mount.status, rf"^cannot open the mount port {path}: ", attempts=RETRIES + 1)
        d = make_driver(new_path, clock)
        try:
            assert d.connect()["port"] == new_path
            assert d.status()["state"] == "stopped"    # the same mount, still unparked
        finally:
            d.close()
    finally:
        sim.stop()


# -- the command-line simulator ------------------------------------------------------------------


def test_cli_pty_path_opens_with_pyserial_and_answers_mountinfo(clock):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "simulators.ioptron", "--port", "0", "--pty",
                             "--speed", str(SPEED), "--start", "2026-11-24T10:00:00",
                             "--lat", str(LAT), "--lon", str(LON)],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    path = None
    watchdog = threading.Timer(10.0, proc.kill)      # a simulator that never prints is killed
    watchdog.start()
    try:
        lines = [proc.stdout.readline().strip(), proc.stdout.readline().strip()]
        watchdog.cancel()
        assert all(lines), f"simulator printed {lines!r}"
        url, path = lines
        assert url.startswith("socket://127.0.0.1:")
        assert path.startswith("/dev/") and os.path.exists(path)
        with serial.Serial(path, 9600, timeout=2.0, write_timeout=2.0) as port:
            port.reset_input_buffer()
            port.write(b":MountInfo#")
            assert port.read(4) == b"0040"
            port.write(b":GLS#")
            assert port.read_until(b"#", 64).endswith(b"#")
    finally:
        watchdog.cancel()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0                      # SIGTERM is a clean stop
    assert not os.path.exists(path)                  # and the pty went with it

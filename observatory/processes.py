"""Process-level safety nets for the actor system.

* Thespian binds every socket to 0.0.0.0 and unpickles whatever arrives:
  ``bind_thespian_to_loopback`` makes every actor socket listen on 127.0.0.1.
* Killing a parent orphans its children (which keep serial ports open):
  every actor calls ``set_parent_death_signal`` as it starts, so the kernel
  sends it SIGTERM when its parent dies. (Not at fork time for every process:
  Thespian double-forks its admin into a session of its own on purpose, and
  the intermediate parent exits at once.)

``bind_thespian_to_loopback`` must run in the process that creates the
ActorSystem, before it does.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

_PR_SET_PDEATHSIG = 1
_installed = {"loopback": False}


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent exits."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except OSError:
        return False


def bind_thespian_to_loopback() -> None:
    if _installed["loopback"]:
        return
    os.environ["THESPIAN_BASE_IPADDR"] = "127.0.0.1"
    from thespian.system.transport import IPBase

    original_init = IPBase.IPActorAddress.__init__

    def loopback_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        host, port = self.bindname[0], self.bindname[1]
        if host in ("", "0.0.0.0"):
            self.bindname = ("127.0.0.1", port)

    IPBase.IPActorAddress.__init__ = loopback_init
    _installed["loopback"] = True


def prepare_actor_host() -> None:
    bind_thespian_to_loopback()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); read its state to tell.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

"""Process-level safety nets for the actor system.

* Thespian binds every socket to 0.0.0.0 and unpickles whatever arrives:
  ``bind_thespian_to_loopback`` makes every actor socket listen on 127.0.0.1.
  A unit spread over several hosts (docs/multihost.md) binds instead to one
  configured address, its VPN address, with ``bind_thespian_to(address)``;
  observatory/hosts.py decides whether that address is allowed.
* Killing a parent orphans its children (which keep serial ports open):
  every actor calls ``set_parent_death_signal`` as it starts, so the kernel
  sends it SIGTERM when its parent dies. (Not at fork time for every process:
  Thespian double-forks its admin into a session of its own on purpose, and
  the intermediate parent exits at once.)

``bind_thespian_to_loopback`` / ``bind_thespian_to`` must run in the process
that creates the ActorSystem, before it does, and once: a process cannot move
its actor system to another address afterwards.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

_PR_SET_PDEATHSIG = 1
_installed: dict = {"address": None}


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent exits."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except OSError:
        return False


def bind_thespian_to(address: str = "127.0.0.1") -> None:
    """Make every Thespian socket of this process (and of the processes it forks:
    the admin, every actor) listen on ``address`` instead of 0.0.0.0, and
    advertise that address to the other members of a convention.

    ``address`` must be an IPv4 address of this computer (127.0.0.1, or the
    VPN address of a multi-host unit). Whether a non-loopback address is
    allowed is not decided here: see observatory.hosts.check_bind_address."""
    if _installed["address"] is not None:
        if _installed["address"] != address:
            raise RuntimeError(f"Thespian is already bound to {_installed['address']} in this process; "
                               f"cannot rebind it to {address}")
        return
    os.environ["THESPIAN_BASE_IPADDR"] = address
    from thespian.system.transport import IPBase

    original_init = IPBase.IPActorAddress.__init__

    def bound_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        host, port = self.bindname[0], self.bindname[1]
        if host in ("", "0.0.0.0"):
            self.bindname = (address, port)

    IPBase.IPActorAddress.__init__ = bound_init
    # Thespian compares addresses through a set of "this computer's" addresses,
    # filled at import from the environment it saw then; add ours in case it was
    # imported before the variable was set.
    IPBase.thisSystem.add_local_addr(address)
    _installed["address"] = address


def bind_thespian_to_loopback() -> None:
    bind_thespian_to("127.0.0.1")


def bound_address() -> str | None:
    """The address ``bind_thespian_to`` bound this process to (None: not yet)."""
    return _installed["address"]


def prepare_actor_host(bind_address: str = "127.0.0.1") -> None:
    """Call before the first ActorSystem() of the process. Loopback unless a
    (checked) network address is given."""
    bind_thespian_to(bind_address)


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

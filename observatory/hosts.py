"""A unit spread over several computers: names, placement, binding.

The unit's actor system (run_unit.py, the *leader*) is the leader of a Thespian
*convention*. A *member* host runs the agent (``python -m observatory.member``,
see docs/multihost.md): an actor system of its own whose capabilities carry
``Convention Address.IPv4`` (the leader's admin) and ``panoptes-host`` (its
name). Thespian then places actors by capability matching:

* ``createActor(CameraActor, targetActorRequirements=host_requirements("camhost1"))``
  first asks the creator's own system (``UnitActor.actorSystemCapabilityCheck``
  says no unless its ``panoptes-host`` is ``camhost1``), then the leader's admin
  forwards the request to a registered member whose capabilities match.
* An actor created without a host requirement is accepted only by the leader
  (or by a system that names no host, as in single-computer tests), never by a
  member.

The actors of a member are children of the member's admin process (Thespian
"nannies" them for their real parent); the parent still receives their
``ChildActorExited`` while the member lives. When the whole member dies,
Thespian 4.0.1 tells the parent nothing (it never records remote children),
and tells the convention's notification handlers (``ActorSystemConventionUpdate``)
only when the member misses ``CONVENTION_REGISTRATION_MISS_MAX`` registrations:
22 min 6 s by default. Hence heartbeats; see docs/multihost.md.

Binding: every Thespian socket unpickles whatever reaches it. A leader or member
listens on loopback unless the configuration (``actor_system.bind_address`` with
``actor_system.allow_network: true``) or the agent's flags (``--bind`` with
``--allow-network``) name another address, and then only on that one address:
a VPN address, never 0.0.0.0.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from datetime import timedelta

# Nothing from Thespian at import time: observatory.config imports this module,
# and light processes (console, gateway) import the configuration.

HOST_CAPABILITY = "panoptes-host"        # the host's name, e.g. "camhost1" (members, optionally the leader)
LEADER_CAPABILITY = "panoptes-leader"    # True on the unit's own actor system
UNIT_CAPABILITY = "panoptes-unit"        # the unit's name: informative, shown in convention updates
CONVENTION_CAPABILITY = "Convention Address.IPv4"

LOOPBACK = "127.0.0.1"
DEFAULT_MEMBER_PORT = 19501
HOST_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class BindRefused(ValueError):
    """A bind address that this computer may not or cannot listen on."""


# --------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------

def host_requirements(host: str | None) -> dict | None:
    """The ``targetActorRequirements`` that place an actor on ``host`` (None: on the leader)."""
    return {HOST_CAPABILITY: host} if host else None


def placement_accepts(capabilities: dict | None, requirements: dict | None) -> bool:
    """Whether an actor system with ``capabilities`` may host an actor created with
    ``requirements``. Used by ``UnitActor.actorSystemCapabilityCheck``.

    * requirement ``panoptes-host: H``: only a system whose ``panoptes-host`` is H;
    * no host requirement: the leader (``panoptes-leader``), or a system that names
      no host at all (a plain single-computer system); never a member.
    """
    capabilities = capabilities or {}
    wanted = (requirements or {}).get(HOST_CAPABILITY)
    if wanted is not None:
        return capabilities.get(HOST_CAPABILITY) == wanted
    return bool(capabilities.get(LEADER_CAPABILITY)) or capabilities.get(HOST_CAPABILITY) is None


def convention_host(update) -> str | None:
    """The member host an ``ActorSystemConventionUpdate`` is about (None: not one of ours)."""
    caps = update.remoteCapabilities or {}
    return caps.get(HOST_CAPABILITY)


# --------------------------------------------------------------------------
# Capabilities
# --------------------------------------------------------------------------

def leader_capabilities(admin_port: int, unit: str | None = None, host: str | None = None) -> dict:
    """Capabilities for the unit's own actor system (run_unit.py)."""
    caps = {"Admin Port": int(admin_port), LEADER_CAPABILITY: True}
    if unit:
        caps[UNIT_CAPABILITY] = unit
    if host:
        caps[HOST_CAPABILITY] = host
    return caps


def member_capabilities(host: str, leader: str, admin_port: int, unit: str | None = None,
                        extra: dict | None = None) -> dict:
    """Capabilities for a member host's actor system: joins the convention led by
    ``leader`` ("address:port" of the leader's admin) as ``host``."""
    lhost, lport = parse_hostport(leader, None)
    caps = {
        "Admin Port": int(admin_port),
        CONVENTION_CAPABILITY: f"{lhost}:{lport}",
        HOST_CAPABILITY: host,
        # Nobody may push actor source code to a member (loadActorSource): the
        # member runs the unit's own code, installed like on the leader.
        "AllowRemoteActorSources": "no",
    }
    if unit:
        caps[UNIT_CAPABILITY] = unit
    caps.update(extra or {})
    return caps


def parse_hostport(text: str, default_port: int | None) -> tuple[str, int]:
    """"10.8.0.1:19500" -> ("10.8.0.1", 19500); a missing port is ``default_port``."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, None
    if not host:
        raise ValueError(f"{text!r}: expected ADDRESS:PORT")
    if port is None:
        if default_port is None:
            raise ValueError(f"{text!r}: expected ADDRESS:PORT (no port given)")
        return host, int(default_port)
    try:
        value = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number") from None
    if not 1 <= value <= 65535:
        raise ValueError(f"{text!r}: port out of range")
    return host, value


# --------------------------------------------------------------------------
# Binding policy
# --------------------------------------------------------------------------

def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_bind_address(address: str, allow_network: bool, *, probe: bool = True,
                       flag: str = "actor_system.allow_network: true") -> str:
    """Return ``address`` if this process may bind Thespian to it, else raise BindRefused.

    * must be one IPv4 address (Thespian's TCP transport is IPv4 only);
    * never the wildcard 0.0.0.0 (every interface, the public one included);
    * a non-loopback address only with an explicit ``allow_network`` (``flag``
      names the setting to the operator), meant for a VPN address;
    * with ``probe``, the address must belong to this computer (a test bind)."""
    try:
        ip = ipaddress.ip_address(str(address).strip())
    except ValueError:
        raise BindRefused(f"bind address {address!r} is not an IP address") from None
    if ip.version != 4:
        raise BindRefused(f"bind address {address}: Thespian's TCP transport needs an IPv4 address")
    if ip.is_unspecified:
        raise BindRefused(f"bind address {address} would listen on every interface; give the one "
                          "address other hosts reach this one at (its VPN address)")
    if not ip.is_loopback and not allow_network:
        raise BindRefused(f"refusing to bind the actor system to {address}, a network address: "
                          "anyone who can reach a Thespian port can run code on this computer. "
                          f"Use a VPN address and set {flag} (see docs/multihost.md)")
    if probe:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((str(ip), 0))
            except OSError as e:
                raise BindRefused(f"cannot bind to {address}: {e.strerror or e} "
                                  "(is it an address of this computer? is the VPN up?)") from None
    return str(ip)


# --------------------------------------------------------------------------
# Thespian's convention timers
# --------------------------------------------------------------------------

def tune_convention(reregistration_s: int | None = None, miss_max: int | None = None) -> dict:
    """Shorten Thespian's convention timers in this process (and in the admin it
    forks later), before the ActorSystem starts. Both the leader and the members
    should use the same values.

    Thespian's defaults: a member re-registers every 7 min 22 s and is declared
    dead after 3 missed registrations (22 min 6 s); a member that starts before
    its leader retries only after a whole period. With ``reregistration_s=5`` a
    dead member is declared after about 15-20 s (``ActorSystemConventionUpdate``
    with ``remoteAdded=False``), a returning one registers within 5 s; the cost is
    two small messages per member every 5 s. Heartbeats stay the first detector.

    Returns the values in force."""
    from thespian.system.admin import convention
    if reregistration_s is not None:
        seconds = int(reregistration_s)
        if seconds < 1:
            raise ValueError("reregistration_s must be at least 1 second")
        period = timedelta(seconds=seconds)
        convention.CONVENTION_REREGISTRATION_PERIOD = period
        convention.CONVENTION_RESTART_PERIOD = min(period, convention.CONVENTION_RESTART_PERIOD)
        # The same, for any process that imports Thespian afresh (spawn start method).
        os.environ["CONVENTION_REREGISTRATION_PERIOD"] = f"{seconds // 60}:{seconds % 60}"
        os.environ["CONVENTION_RESTART_PERIOD"] = os.environ["CONVENTION_REREGISTRATION_PERIOD"]
    if miss_max is not None:
        if int(miss_max) < 1:
            raise ValueError("miss_max must be at least 1")
        convention.CONVENTION_REGISTRATION_MISS_MAX = int(miss_max)
        os.environ["CONVENTION_REGISTRATION_MISS_MAX"] = str(int(miss_max))
    return {"reregistration_s": convention.CONVENTION_REREGISTRATION_PERIOD.total_seconds(),
            "miss_max": convention.CONVENTION_REGISTRATION_MISS_MAX}


def tune_transmit_timeout(seconds: int) -> float:
    """Give up on any one message after ``seconds`` (Thespian: 5 minutes), in this
    process and the admin and actors it forks later.

    Why it matters across hosts: an actor has at most 20 messages in flight
    (Thespian's MAX_PENDING_TRANSMITS); further sends queue behind them. Messages
    to a host that stopped answering without refusing connections (frozen, cut
    off by the network, powered off) stay in flight until this timeout, so an
    actor that keeps sending to it (heartbeats, commands) stops reaching even its
    local peers after 20 of them: measured in tests/test_multihost.py. A timed
    out message is dropped silently (no DeadEnvelope)."""
    import thespian.system.transport as transport
    seconds = int(seconds)
    if seconds < 1:
        raise ValueError("the transmit timeout must be at least 1 second")
    transport.DEFAULT_MAX_TRANSMIT_PERIOD = timedelta(seconds=seconds)
    os.environ["THESPIAN_TRANSMIT_TIMEOUT_PERIOD"] = f"{seconds // 60}:{seconds % 60}"
    return transport.DEFAULT_MAX_TRANSMIT_PERIOD.total_seconds()

"""Which network addresses this worker may dial or announce (the volunteer's machine is not a port scanner).

The site and other peers hand the worker multiaddrs to dial: group members, state donors, candidates,
reachability checks. A hostile site could use them to make every worker probe its own LAN, localhost
or a cloud metadata endpoint, or resolve names with the volunteer's resolver. So by default only
public unicast IP addresses are dialled: loopback, private (RFC 1918, ULA), link-local, CGNAT,
multicast, reserved and unspecified addresses, and ``/dns``, ``/dns4``, ``/dns6``, ``/dnsaddr`` names
are refused. ``--allow-private`` (a LAN swarm, the demo, the tests on loopback) lifts that.

The same rule decides which of the daemon's own addresses are announced to the group: a volunteer's
LAN and docker addresses stay private unless ``--allow-private`` is given (explicit
``--announce-maddr`` addresses are always announced).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from hivemind.utils.multiaddr import Multiaddr

from btard_wire.limits import MAX_ADDR_CHARS

DNS_PROTOCOLS = {"dns", "dns4", "dns6", "dnsaddr"}
LAN_ADVICE = "pass --allow-private for a swarm on a LAN or on this machine"


@dataclass(frozen=True)
class AddressPolicy:
    """``allow_private``: dial and announce any IP address and DNS names too (LAN swarms, loopback tests)."""

    allow_private: bool = False

    def refusal(self, addr: object) -> str | None:
        """Why ``addr`` may not be dialled (a short sentence), or ``None`` when it may."""
        return address_refusal(addr, allow_private=self.allow_private)

    def allowed(self, addrs: Iterable[object], *, limit: int = 16) -> list[str]:
        """The dialable ones of ``addrs``, at most ``limit``, in order."""
        out = []
        for addr in addrs:
            if len(out) >= limit:
                break
            if self.refusal(addr) is None:
                out.append(str(addr))
        return out


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def address_refusal(addr: object, *, allow_private: bool) -> str | None:
    """Why ``addr`` (a multiaddr string) may not be dialled, or ``None``.

    A string that is not a multiaddr is refused (never passed to the daemon). Every IP component of
    the address is checked, so a relay address through a private relay is refused as well.
    """
    if not isinstance(addr, str) or not addr or len(addr) > MAX_ADDR_CHARS:
        return "not a multiaddr"
    try:
        items = list(Multiaddr(addr).items())
    except Exception:  # noqa: BLE001 - the parser raises several error kinds; all mean "garbage"
        return "not a multiaddr"
    if not items or items[0][0].name not in {"ip4", "ip6", *DNS_PROTOCOLS}:
        return "not an IP or DNS address"
    for proto, value in items:
        if proto.name in DNS_PROTOCOLS:
            if not allow_private:
                return f"a DNS name ({value}) is not resolved for peers; {LAN_ADVICE}"
        elif proto.name in {"ip4", "ip6"}:
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                return "not a multiaddr"
            if ip.is_unspecified or ip.is_multicast:
                return f"{ip} is not a peer's address"
            if not allow_private and not _is_public(ip):
                return f"{ip} is a private, loopback or link-local address; {LAN_ADVICE}"
    return None

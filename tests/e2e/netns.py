"""Hosts on one machine: each worker in its own network namespace on a bridge, with rate caps.

``Network`` makes a bridge with the host side at ``10.<a>.<b>.1/24`` and one namespace per host with a
veth pair into it; ``rate`` caps a host's egress with ``tc tbf`` on both ends of its veth (what leaves
the host and what reaches it). Everything it made is removed on ``close()`` (also after a failed test);
:func:`unavailable` says why the machine cannot do it (not root, no ``ip``/``tc``, no netns support).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """A sentence saying why namespaced hosts cannot be made here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"btprobe{secrets.token_hex(3)}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    name: str        # the namespace
    ip: str          # its address on the bridge
    veth_host: str   # the bridge-side end of its veth pair
    veth_ns: str     # the end inside the namespace
    rate: str | None = None

    def prefix(self) -> list[str]:
        """Command prefix that runs a program inside this host."""
        return ["ip", "netns", "exec", self.name]


@dataclass
class Network:
    hosts: list[Host] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = secrets.token_hex(2)
        self.tag = tag
        self.bridge = f"btbr{tag}"
        self.subnet = f"10.{100 + secrets.randbelow(100)}.{secrets.randbelow(250)}"
        self.gateway = f"{self.subnet}.1"
        self._made_bridge = False

    def __enter__(self) -> Network:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_host(self, rate: str | None = None) -> Host:
        i = len(self.hosts) + 1
        host = Host(name=f"bt{self.tag}h{i}", ip=f"{self.subnet}.{10 + i}", veth_host=f"bt{self.tag}v{i}",
                    veth_ns=f"bt{self.tag}n{i}")
        self.hosts.append(host)
        _run("ip", "netns", "add", host.name)
        _run("ip", "link", "add", host.veth_host, "type", "veth", "peer", "name", host.veth_ns)
        _run("ip", "link", "set", host.veth_ns, "netns", host.name)
        _run("ip", "link", "set", host.veth_host, "master", self.bridge)
        _run("ip", "link", "set", host.veth_host, "up")
        ns = host.prefix()
        _run(*ns, "ip", "addr", "add", f"{host.ip}/24", "dev", host.veth_ns)
        _run(*ns, "ip", "link", "set", host.veth_ns, "up")
        _run(*ns, "ip", "link", "set", "lo", "up")
        _run(*ns, "ip", "route", "add", "default", "via", self.gateway)
        if rate:
            self.set_rate(host, rate)
        return host

    def set_rate(self, host: Host, rate: str) -> None:
        """Cap the host's link at ``rate`` (tc syntax, e.g. ``100mbit``, ``1mbit``) in both directions."""
        burst = "64kb" if rate.endswith("mbit") and float(rate[:-4]) < 10 else "256kb"
        for prefix, dev in ((host.prefix(), host.veth_ns), ([], host.veth_host)):
            _run(*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", burst,
                 "latency", "200ms")
        host.rate = rate

    def cut(self, host: Host) -> None:
        """Take the host's link down (a cable pulled): nothing goes in or out."""
        _run("ip", "link", "set", host.veth_host, "down")

    def restore(self, host: Host) -> None:
        _run("ip", "link", "set", host.veth_host, "up")

    def close(self) -> None:
        for host in self.hosts:
            _run("ip", "link", "del", host.veth_host, check=False)
            _run("ip", "netns", "del", host.name, check=False)
        self.hosts = []
        if self._made_bridge:
            _run("ip", "link", "del", self.bridge, check=False)
            self._made_bridge = False

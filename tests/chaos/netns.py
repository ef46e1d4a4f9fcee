"""Simulated hosts on one machine: Linux network namespaces linked to the root namespace by veth pairs.

Each :class:`Host` is a network namespace with one veth pair: one end inside it, the other in the
root namespace, the two ends a /30 of their own in ``10.213.<n>.0/24`` (a private range, and a
``<n>`` no address or route of this machine uses yet). A process started in the namespace
(``ip netns exec``, see :attr:`Host.exec_prefix`) reaches the root namespace only through its veth,
at :attr:`Host.gateway`: servers and proxies that listen there are its "remote" servers. Taking the
root end down (:meth:`Host.cut`) is a network partition of that host: packets are dropped, no
connection is reset on either side, exactly like a pulled cable. Needs root (CI runs as root).

Example::

    async with HostNetwork(2) as hosts:
        proxy = await TCPProxy("127.0.0.1", 6379, listen_host=hosts[0].gateway).start()
        ...  # start a process with hosts[0].exec_prefix, pointed at hosts[0].gateway
        await hosts[0].cut()
        await hosts[0].heal()
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import shutil
import uuid
from dataclasses import dataclass
from types import TracebackType

from tests.helpers import eventually


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, or no ``ip``)."""


def netns_unavailable_reason() -> str | None:
    """Why this machine cannot run multi-host tests, or None when it can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    return None


async def _ip(*args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


@dataclass
class Host:
    """One simulated host: a network namespace and the veth pair that links it to the root namespace."""

    netns: str
    root_if: str  # the veth end in the root namespace (cut here)
    host_if: str  # the veth end inside the namespace
    gateway: str  # the root end's address: what processes in the namespace connect to
    address: str  # the namespace end's address

    @property
    def exec_prefix(self) -> list[str]:
        """Prefix a command with this to run it on the host."""
        return ["ip", "netns", "exec", self.netns]

    async def cut(self) -> None:
        """Take the link down at the root end: the host's packets are dropped, its connections hang."""
        await _ip("link", "set", self.root_if, "down")

    async def heal(self) -> None:
        """Bring the link back up and wait until it carries traffic again."""
        await _ip("link", "set", self.root_if, "up")

        async def up() -> bool:
            state = await _ip("-o", "link", "show", self.root_if)
            return "LOWER_UP" in state and ",UP" in state

        await eventually(up, timeout=10, interval=0.05)

    async def _create(self, prefix_len: int) -> None:
        await _ip("netns", "add", self.netns)
        await _ip("link", "add", self.root_if, "type", "veth", "peer", "name", self.host_if)
        await _ip("link", "set", self.host_if, "netns", self.netns)
        await _ip("addr", "add", f"{self.gateway}/{prefix_len}", "dev", self.root_if)
        await _ip("link", "set", self.root_if, "up")
        inside = ["netns", "exec", self.netns, "ip"]
        await _ip(*inside, "addr", "add", f"{self.address}/{prefix_len}", "dev", self.host_if)
        await _ip(*inside, "link", "set", self.host_if, "up")
        await _ip(*inside, "link", "set", "lo", "up")

    async def _destroy(self) -> None:
        # Deleting one end deletes the pair (and the namespace's end goes with the namespace anyway).
        await _ip("link", "del", self.root_if, check=False)
        await _ip("netns", "del", self.netns, check=False)


class HostNetwork:
    """``count`` hosts with names unique to this run; everything is deleted on exit, even on failure."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.tag = uuid.uuid4().hex[:6]
        self.hosts: list[Host] = []

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __len__(self) -> int:
        return len(self.hosts)

    async def start(self) -> HostNetwork:
        reason = netns_unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        subnet = await self._free_subnet()
        try:
            for i in range(self.count):
                base = subnet.network_address + 4 * i  # a /30 per host: .4i+1 root end, .4i+2 host end
                host = Host(
                    netns=f"hutch-{self.tag}-h{i}",
                    root_if=f"hv{self.tag}{i}r",  # interface names: at most 15 characters
                    host_if=f"hv{self.tag}{i}h",
                    gateway=str(base + 1),
                    address=str(base + 2),
                )
                self.hosts.append(host)
                await host._create(30)
        except BaseException:
            await self.close()
            raise
        return self

    @staticmethod
    async def _free_subnet() -> ipaddress.IPv4Network:
        """A ``10.213.<n>.0/24`` that overlaps no address or route of this machine."""
        taken = [
            ipaddress.ip_network(word, strict=False)
            for line in (await _ip("-o", "-4", "addr", "show")).splitlines() + (await _ip("-4", "route")).splitlines()
            for word in line.split()
            if word[:1].isdigit() and word.count(".") == 3
        ]
        candidates = list(range(256))
        random.shuffle(candidates)
        for n in candidates:
            subnet = ipaddress.ip_network(f"10.213.{n}.0/24")
            if not any(subnet.overlaps(net) for net in taken):
                return subnet
        raise RuntimeError("every 10.213.x.0/24 is in use on this machine")

    async def close(self) -> None:
        """Delete every namespace and veth this network made; idempotent."""
        hosts, self.hosts = self.hosts, []
        for host in hosts:
            await host._destroy()

    async def __aenter__(self) -> HostNetwork:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

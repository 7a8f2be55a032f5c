"""The guest's link: a tap device inside the sandbox's network namespace, NATed to its veth.

The namespace backend's plumbing is reused as it is (``network.create``: netns ``corral-<id>``,
veth pair, the sandbox address on the netns's ``eth0``, the host's ``inet corral`` table keyed on
the host-side veth). QEMU runs inside that netns with ``tap0``; every guest has the same address
(GUEST_IP, gateway GATEWAY on tap0), so a snapshot's network state fits every sandbox restored
from it. The netns's own nftables table (not the host's) translates:

    host -> sandbox address:any port   DNAT to the guest, SNAT to the gateway (the agent's one peer)
    guest -> anywhere                  SNAT to the sandbox address, out of eth0 to the host veth,
                                       where the host's egress rules apply as to any sandbox
"""

from __future__ import annotations

from pathlib import Path

from ..namespace import network
from .assets import GATEWAY, GATEWAY_MAC, GUEST_IP
from .qemu import MAC, TAP

TABLE = "corralvm"


def _ns_ruleset(sandbox_ip: str) -> str:
    return "\n".join([
        f"add table ip {TABLE}",
        f"add chain ip {TABLE} vmpre {{ type nat hook prerouting priority -100; policy accept; }}",
        f"add chain ip {TABLE} vmpost {{ type nat hook postrouting priority 100; policy accept; }}",
        f"add chain ip {TABLE} vmfwd {{ type filter hook forward priority 0; policy drop; }}",
        # SECURITY: only the guest's link and the veth forward to each other; nothing else is routed.
        f'add rule ip {TABLE} vmfwd iifname "{TAP}" oifname "eth0" accept',
        f'add rule ip {TABLE} vmfwd iifname "eth0" oifname "{TAP}" accept',
        f'add rule ip {TABLE} vmpre iifname "eth0" ip daddr {sandbox_ip} dnat to {GUEST_IP}',
        f'add rule ip {TABLE} vmpost oifname "{TAP}" snat to {GATEWAY}',
        f'add rule ip {TABLE} vmpost oifname "eth0" snat to {sandbox_ip}',
    ]) + "\n"  # fmt: skip


async def add_tap(netns: str, sandbox_ip: str | None) -> None:
    """tap0 in the netns (and, for a sandbox with an address, forwarding and NAT to its veth)."""
    await network.run(["ip", "-n", netns, "-batch", "-"], input=(
        f"tuntap add dev {TAP} mode tap\n"
        f"link set {TAP} address {GATEWAY_MAC}\n"
        f"addr add {GATEWAY}/30 dev {TAP}\n"
        f"link set {TAP} up\n"
        # No ARP: the guest's MAC is fixed (qemu.MAC), as is tap0's, which stage 1 gives the guest.
        f"neigh replace {GUEST_IP} lladdr {MAC} dev {TAP} nud permanent\n"
        "link set lo up\n"
    ))  # fmt: skip
    if sandbox_ip is None:
        return
    # The netns's own sysctl and table: the host's forwarding and `inet corral` table stay as they are.
    await network.run(
        ["nsenter", f"--net={network.NETNS_DIR / netns}", "sh", "-c",
         "echo 1 > /proc/sys/net/ipv4/ip_forward && exec nft -f -"],
        input=_ns_ruleset(sandbox_ip),
    )  # fmt: skip


async def create_bare(netns: str) -> None:
    """A netns holding only tap0 (the guest a snapshot is taken of needs no way out)."""
    await network.run(["ip", "netns", "add", netns])
    await add_tap(netns, None)


async def delete_netns(netns: str) -> None:
    if (network.NETNS_DIR / netns).exists():
        await network.run(["ip", "netns", "del", netns], check=False)


def netns_path(netns: str) -> Path:
    return network.NETNS_DIR / netns

"""Per-sandbox network: netns ``corral-<id>``, a veth pair, a /30, and the ``inet corral`` nft table.

Host side ``crl<12 hex>`` holds .1, the sandbox's ``eth0`` holds .2 and routes everything via .1.
The nft table keeps sandboxes off the host, off each other and off the metadata address, and
NATs them out only while their veth is in the ``internet_on`` set.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "corral-"
VETH_PREFIX = "crl"
TABLE = "corral"
NO_ROUTER_MARK = "corral-no-router"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
METADATA_ADDR = "169.254.169.254"


class NetworkError(RuntimeError):
    pass


async def run(argv: list[str], input: str | None = None, check: bool = True) -> str:
    # subprocess.run in a worker thread spawns with vfork; asyncio's (and uvloop's) subprocess
    # support forks the whole server instead, ~3 ms of CPU per `ip`/`nft` call at its size.
    proc = await asyncio.to_thread(
        subprocess.run,
        argv,
        input=input.encode() if input is not None else None,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
    )
    if check and proc.returncode != 0:
        raise NetworkError(
            f"{' '.join(argv[:3])} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()[-500:]}"
        )
    return proc.stdout.decode(errors="replace")


def veth_name(sandbox_id: str) -> str:
    return VETH_PREFIX + hashlib.sha256(sandbox_id.encode()).hexdigest()[:12]


def netns_name(sandbox_id: str) -> str:
    return NETNS_PREFIX + sandbox_id


def netns_path(sandbox_id: str) -> Path:
    return NETNS_DIR / netns_name(sandbox_id)


@dataclass(frozen=True)
class Addresses:
    index: int
    host: str
    sandbox: str
    prefixlen: int = 30


IPAM_DIR = Path("/run/corral-ipam")


class IpPool:
    """Hands out /30 blocks of the subnet by index (index i -> the i-th /30).

    Reservations are files ``<IPAM_DIR>/<subnet>/<index>`` created with O_EXCL and holding the
    owner (the sandbox's run dir): atomic across every backend instance and process on the
    host, and gone with /run on reboot.
    """

    def __init__(
        self, subnet: str, state_dir: Path = IPAM_DIR, route_table: Path = Path("/proc/net/route")
    ) -> None:
        self.route_table = route_table
        self.net = ipaddress.IPv4Network(subnet)
        if self.net.prefixlen > 30:
            raise ValueError(f"subnet {subnet} is smaller than a /30")
        self.size = 2 ** (30 - self.net.prefixlen)
        self.dir = state_dir / str(self.net).replace("/", "_")
        self._next = 0

    def addresses(self, index: int) -> Addresses:
        if not 0 <= index < self.size:
            raise ValueError(f"ip index {index} outside {self.net}")
        base = int(self.net.network_address) + 4 * index
        return Addresses(index, str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2)))

    def index_of(self, address: str) -> int | None:
        a = ipaddress.IPv4Address(address)
        if a not in self.net:
            return None
        return (int(a) - int(self.net.network_address)) // 4

    def _claim(self, index: int, owner: str) -> bool:
        try:
            fd = os.open(self.dir / str(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        try:
            os.write(fd, owner.encode())
        finally:
            os.close(fd)
        return True

    def routed_indices(self) -> set[int]:
        """Blocks that already have a route on the host (e.g. a veth left by older code)."""
        used: set[int] = set()
        try:
            lines = self.route_table.read_text().splitlines()[1:]
        except OSError:
            return used
        for line in lines:
            fields = line.split()
            if len(fields) < 8:
                continue
            dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
            if dest in self.net and fields[7] != "00000000":
                used.add((int(dest) - int(self.net.network_address)) // 4)
        return used

    def allocate(self, owner: str) -> Addresses:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        routed = self.routed_indices()
        for k in range(self.size):
            i = (self._next + k) % self.size
            if i not in routed and self._claim(i, owner):
                self._next = (i + 1) % self.size
                return self.addresses(i)
        raise NetworkError(f"no free address block left in {self.net}")

    def owner(self, index: int) -> str | None:
        try:
            return (self.dir / str(index)).read_text()
        except FileNotFoundError:
            return None

    def mark_used(self, index: int, owner: str) -> None:
        """Re-claim a block recorded in a handle (e.g. after a restart, or a reboot of /run)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._claim(index, owner)

    def free(self, index: int | None, owner: str) -> None:
        if index is None:
            return
        # Only our own reservation: a stale handle must not free a block someone else holds now.
        if self.owner(index) == owner:
            (self.dir / str(index)).unlink(missing_ok=True)

    def used(self) -> dict[int, str]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return {}
        return {int(n): self.owner(int(n)) or "" for n in names if n.isdigit()}


# ---- nftables ------------------------------------------------------------------------------


def ruleset(subnet: str, no_router: bool) -> str:
    """The whole ``inet corral`` table, applied idempotently (the internet_on set is kept)."""
    v = f'"{VETH_PREFIX}*"'
    lines = [
        f"add table inet {TABLE}",
        f"add set inet {TABLE} internet_on {{ type ifname; }}",
        f"add map inet {TABLE} policies {{ type ifname : verdict; }}",
        f"add map inet {TABLE} dns_redirect {{ type ifname : verdict; }}",
        f"add chain inet {TABLE} input {{ type filter hook input priority -10; policy accept; }}",
        f"add chain inet {TABLE} forward {{ type filter hook forward priority -10; policy accept; }}",
        f"add chain inet {TABLE} postrouting {{ type nat hook postrouting priority 100; policy accept; }}",
        # Before forward: a sandbox with egress rules jumps to its own chain (see set_policy).
        f"add chain inet {TABLE} egress {{ type filter hook forward priority -20; policy accept; }}",
        f"flush chain inet {TABLE} egress",
        f"add rule inet {TABLE} egress iifname {v} iifname vmap @policies",
        # A sandbox with rules by domain name has its DNS queries sent to corral's resolver (dns.py).
        f"add chain inet {TABLE} prerouting {{ type nat hook prerouting priority -100; policy accept; }}",
        f"flush chain inet {TABLE} prerouting",
        f"add rule inet {TABLE} prerouting iifname {v} iifname vmap @dns_redirect",
        f"flush chain inet {TABLE} input",
        f"flush chain inet {TABLE} forward",
        f"flush chain inet {TABLE} postrouting",
        # SECURITY: the host itself (every address it has, the control API included) is
        # unreachable from sandboxes; only answers to connections the host opened come back.
        f"add rule inet {TABLE} input iifname {v} ct state established,related accept",
        # ...except what the prerouting chain redirected: DNS queries for corral's resolver, and
        # the web traffic of sandboxes with secrets for the egress proxy.
        f"add rule inet {TABLE} input iifname {v} ct status dnat accept",
        f"add rule inet {TABLE} input iifname {v} drop",
        # SECURITY: no sandbox-to-sandbox traffic, no cloud metadata, no IPv6 out.
        f"add rule inet {TABLE} forward iifname {v} oifname {v} drop",
        f"add rule inet {TABLE} forward iifname {v} ip daddr {METADATA_ADDR} drop",
        f"add rule inet {TABLE} forward iifname {v} meta nfproto ipv6 drop",
        # SECURITY: internet only for sandboxes whose veth is in internet_on.
        f"add rule inet {TABLE} forward iifname {v} iifname != @internet_on drop",
        f"add rule inet {TABLE} forward iifname {v} ip saddr {subnet} accept",
        f"add rule inet {TABLE} forward iifname {v} drop",
        f"add rule inet {TABLE} forward oifname {v} ct state established,related accept",
        # SECURITY: nothing from outside opens connections into a sandbox.
        f"add rule inet {TABLE} forward oifname {v} drop",
    ]
    if no_router:
        # SECURITY: forwarding was off before corral; keep the host from routing anything else.
        lines.append(
            f'add rule inet {TABLE} forward iifname != {v} oifname != {v} drop comment "{NO_ROUTER_MARK}"'
        )
    lines.append(f"add rule inet {TABLE} postrouting ip saddr {subnet} oifname != {v} masquerade")
    return "\n".join(lines) + "\n"


async def init_firewall(subnet: str) -> None:
    """Install the table (idempotent), then turn on IPv4 forwarding."""
    existing = await run(["nft", "list", "table", "inet", TABLE], check=False)
    forward_was_on = IP_FORWARD.read_text().strip() == "1"
    no_router = NO_ROUTER_MARK in existing or not forward_was_on
    await run(["nft", "-f", "-"], input=ruleset(subnet, no_router))
    if not forward_was_on:
        # SECURITY: only now that the forward rules are in place.
        IP_FORWARD.write_text("1\n")


async def set_internet(veth: str, on: bool) -> None:
    # "add" then "delete" in one transaction makes the delete idempotent.
    script = f'add element inet {TABLE} internet_on {{ "{veth}" }}\n'
    if not on:
        script += f'delete element inet {TABLE} internet_on {{ "{veth}" }}\n'
    await run(["nft", "-f", "-"], input=script)


# ---- egress rules --------------------------------------------------------------------------
#
# A sandbox with allow/deny lists gets a chain p_<veth>, jumped to through the `policies` verdict
# map from the `egress` chain (which runs before `forward`), a dynamic set b_<veth> of the
# destinations it was refused (address and port) and a named counter n_<veth> of refused packets.
# Its veth is then in internet_on whatever its internet flag, and p_<veth> does the filtering:
# allowed destinations pass (to `forward`, whose SECURITY rules still apply), denied ones, and with
# internet off everything else, are counted and dropped.


def _policy_names(veth: str) -> tuple[str, str, str]:
    return f"p_{veth}", f"b_{veth}", f"n_{veth}"


def _dns_names(veth: str) -> tuple[str, str]:
    return f"d_{veth}", f"a_{veth}"  # the DNS redirect chain, the addresses allowed names resolved to


async def set_policy(
    veth: str, allow: Iterable[str], deny: Iterable[str], internet: bool, dns_port: int | None = None,
    proxy_port: int | None = None,
) -> None:
    """The sandbox's rules (IPv4 CIDRs); with ``dns_port``, its DNS goes to corral's resolver on
    that port, which lets the addresses of allowed names through (``allow_addresses``); with
    ``proxy_port``, its TCP connections to ports 80 and 443 go to the egress proxy (secrets)."""
    chain, blocked, count = _policy_names(veth)
    dns_chain, resolved = _dns_names(veth)
    allow, deny = list(allow), list(deny)
    # Two rules: remembering the destination fails (and so ends its rule) once the set holds it.
    def refuse(match: str) -> list[str]:
        return [
            f"add rule inet {TABLE} {chain} {match} update @{blocked} {{ ip daddr . th dport }}",
            f'add rule inet {TABLE} {chain} {match} counter name "{count}" drop',
        ]

    script = [
        f"add chain inet {TABLE} {chain}",
        f"flush chain inet {TABLE} {chain}",
        f"add set inet {TABLE} {blocked} {{ type ipv4_addr . inet_service; flags dynamic; counter; size 1024; }}",
        f"add counter inet {TABLE} {count}",
    ]
    if dns_port:
        script += [
            f"add set inet {TABLE} {resolved} {{ type ipv4_addr; flags timeout; }}",
            f"add rule inet {TABLE} {chain} ip daddr @{resolved} accept",
        ]
    if dns_port or proxy_port:
        script += [f"add chain inet {TABLE} {dns_chain}", f"flush chain inet {TABLE} {dns_chain}"]
        if dns_port:
            script.append(f"add rule inet {TABLE} {dns_chain} udp dport 53 redirect to :{dns_port}")
        if proxy_port:
            script.append(f"add rule inet {TABLE} {dns_chain} tcp dport {{ 80, 443 }} redirect to :{proxy_port}")
        script.append(f'add element inet {TABLE} dns_redirect {{ "{veth}" : jump {dns_chain} }}')
    if allow:
        script.append(f"add rule inet {TABLE} {chain} ip daddr {{ {', '.join(allow)} }} accept")
    if deny:
        script += refuse(f"ip daddr {{ {', '.join(deny)} }}")
    if not internet:
        script += refuse("meta nfproto ipv4")
    script.append(f'add element inet {TABLE} policies {{ "{veth}" : jump {chain} }}')
    await run(["nft", "-f", "-"], input="\n".join(script) + "\n")
    if not (dns_port or proxy_port):
        await remove_dns(veth)


async def allow_addresses(veth: str, addresses: list[tuple[str, int]], min_ttl: int = 30) -> None:
    """Let the sandbox reach these addresses (an allowed name resolved to them) for their TTL."""
    _, resolved = _dns_names(veth)
    elements = ", ".join(f"{ip} timeout {max(ttl, min_ttl)}s" for ip, ttl in addresses)
    script = f"add element inet {TABLE} {resolved} {{ {elements} }}\n"
    await run(["nft", "-f", "-"], input=script, check=False)


async def remove_dns(veth: str) -> None:
    dns_chain, resolved = _dns_names(veth)
    for cmd in (
        f'delete element inet {TABLE} dns_redirect {{ "{veth}" }}',
        f"delete chain inet {TABLE} {dns_chain}",
        f"delete set inet {TABLE} {resolved}",  # fails while p_<veth> still uses it: remove_policy retries
    ):
        await run(["nft", cmd], check=False)


async def remove_policy(veth: str) -> None:
    """Drop the sandbox's rules, set and counter (missing pieces are fine)."""
    chain, blocked, count = _policy_names(veth)
    await remove_dns(veth)
    # One object per transaction: a missing one must not keep the others.
    for cmd in (
        f'delete element inet {TABLE} policies {{ "{veth}" }}',
        f"delete chain inet {TABLE} {chain}",
        f"delete set inet {TABLE} {blocked}",
        f"delete counter inet {TABLE} {count}",
        f"delete set inet {TABLE} {_dns_names(veth)[1]}",
    ):
        await run(["nft", cmd], check=False)


async def remove_stale_policies() -> None:
    """Remove the rules, sets and counters of sandboxes whose veth no longer exists."""
    listed = await run(["nft", "list", "table", "inet", TABLE], check=False)
    veths = set(re.findall(r"\b[pbnad]_(" + VETH_PREFIX + r"[0-9a-f]{12})\b", listed))
    for veth in sorted(veths):
        if not Path(f"/sys/class/net/{veth}").exists():
            await remove_policy(veth)


async def policy_stats(veth: str) -> tuple[int, list[dict[str, int | str]]]:
    """(refused packets, the refused destinations: address, port, packets)."""
    _, blocked, count = _policy_names(veth)
    out = await run(["nft", "-j", "list", "counter", "inet", TABLE, count], check=False)
    total = 0
    for item in json.loads(out or "{}").get("nftables", []):
        if "counter" in item:
            total = int(item["counter"].get("packets", 0))
    out = await run(["nft", "-j", "list", "set", "inet", TABLE, blocked], check=False)
    destinations: list[dict[str, int | str]] = []
    for item in json.loads(out or "{}").get("nftables", []):
        for elem in (item.get("set") or {}).get("elem", []):
            value = elem.get("elem", {}) if isinstance(elem, dict) else {}
            concat = (value.get("val") or {}).get("concat") or []
            if len(concat) == 2:
                destinations.append({"address": str(concat[0]), "port": int(concat[1]),
                                     "packets": int((value.get("counter") or {}).get("packets", 0))})  # fmt: skip
    return total, destinations


def traffic_bytes(veth: str) -> tuple[int, int]:
    """(bytes out of the sandbox, bytes into it), from its host-side veth's counters."""
    stats = Path(f"/sys/class/net/{veth}/statistics")
    try:
        return int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())
    except (OSError, ValueError):
        return 0, 0


# ---- netns + veth --------------------------------------------------------------------------


async def create(sandbox_id: str, addr: Addresses) -> None:
    ns, veth = netns_name(sandbox_id), veth_name(sandbox_id)
    host = (
        f"netns add {ns}\n"
        f"link add {veth} type veth peer name eth0 netns {ns}\n"
        f"addr add {addr.host}/{addr.prefixlen} dev {veth}\n"
        f"link set {veth} up\n"
    )
    inside = (
        f"addr add {addr.sandbox}/{addr.prefixlen} dev eth0\n"
        "link set eth0 up\n"
        "link set lo up\n"
        f"route add default via {addr.host}\n"
    )
    await run(["ip", "-batch", "-"], input=host)
    await run(["ip", "-n", ns, "-batch", "-"], input=inside)


async def destroy(sandbox_id: str, veth: str | None = None) -> None:
    """Delete the veth and the netns; missing pieces are fine."""
    ns, veth = netns_name(sandbox_id), veth or veth_name(sandbox_id)
    script = ""
    if Path(f"/sys/class/net/{veth}").exists():
        script += f"link del {veth}\n"
    if netns_path(sandbox_id).exists():
        script += f"netns del {ns}\n"
    if script:
        await run(["ip", "-force", "-batch", "-"], input=script, check=False)


def list_netns_ids() -> set[str]:
    try:
        return {n[len(NETNS_PREFIX) :] for n in os.listdir(NETNS_DIR) if n.startswith(NETNS_PREFIX)}
    except FileNotFoundError:
        return set()


# ---- files bound into the sandbox ----------------------------------------------------------


def _nameservers(path: Path) -> list[str]:
    servers = []
    try:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                servers.append(parts[1])
    except OSError:
        pass
    return servers


def host_addresses() -> list[str]:
    """Every IPv4 address of the host, as /32s."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    return [f"{line.split()[3].split('/')[0]}/32" for line in out.splitlines() if len(line.split()) > 3]


def host_nameservers() -> list[str]:
    """The host's own nameservers (loopback ones too: corral's resolver runs on the host)."""
    return [s for s in _nameservers(Path("/etc/resolv.conf")) if ":" not in s]


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return True


def resolv_conf(
    sources: Iterable[Path] = (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf")),
) -> str:
    """The host's non-loopback nameservers (a sandbox cannot reach the host's own resolver)."""
    servers: list[str] = []
    for src in sources:
        servers = [s for s in _nameservers(src) if not _is_loopback(s)]
        if servers:
            break
    v4 = [s for s in servers if ":" not in s]
    return "".join(f"nameserver {s}\n" for s in (v4 or servers)[:3])


def hosts_file(sandbox_id: str) -> str:
    return f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{sandbox_id}\n"

"""What a microVM boots, made once and cached under ``<data>/microvm/``.

    kernel/<version>/vmlinux        Debian's cloud kernel, uncompressed (QEMU boots an ELF vmlinux
                                    directly, PVH); fetched with `apt-get download` + `dpkg-deb -x`,
                                    never installed on the host
    kernel/<version>/modules/*.ko   the virtio and overlay modules (=m in that kernel)
    initramfs/<key>.cpio            busybox-static, the modules, stage 1 (INIT_SCRIPT), the guest's
                                    PID 1 (guest_init.py) and the agent, precompiled; <key> hashes them all
    images/<key>.ext4               a template's root filesystem (read-only in every guest)
    disks/empty-<MiB>.ext4          an empty ext4 of each disk size: the base of sandboxes' disks

Every file is written to a temporary name and renamed into place: servers sharing the data dir
see a whole file or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import py_compile
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net", "overlay")
MODULE_PATHS = {
    "virtio_ring": "drivers/virtio/virtio_ring.ko",
    "virtio": "drivers/virtio/virtio.ko",
    "virtio_mmio": "drivers/virtio/virtio_mmio.ko",
    "virtio_blk": "drivers/block/virtio_blk.ko",
    "failover": "net/core/failover.ko",
    "net_failover": "drivers/net/net_failover.ko",
    "virtio_net": "drivers/net/virtio_net.ko",
    "overlay": "fs/overlayfs/overlay.ko",
}
BUSYBOX = Path("/bin/busybox")
LZ4_MAGIC = b"\x02\x21\x4c\x18"  # an LZ4 legacy frame: how Debian compresses the cloud kernel
GUEST_IP, GATEWAY, AGENT_PORT = "172.30.0.2", "172.30.0.1", 49982
# tap0's address on the host side (vmnet.py): both ends of the link know each other's without ARP
# (a restored guest's first packets run cold under TCG: an ARP exchange is one more round trip).
GATEWAY_MAC = "52:54:00:c0:ff:01"
APPLETS = ("sh", "mount", "umount", "mkdir", "cp", "rm", "insmod", "ip", "switch_root", "poweroff", "cat", "grep", "findfs", "echo", "sleep", "arp")

# Stage 1, in the initramfs: modules, the template's image read-only (vda) under an overlay whose
# upper dir is on the sandbox's own disk (vdb), the agent on a tmpfs at /run/corral, the network
# (every guest has the same address: the host side NATs it, see vmnet.py), then guest_init.py.
INIT_SCRIPT = f"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in {" ".join(MODULES)}; do insmod /lib/modules/$m.ko || echo "CORRAL-ERROR insmod $m"; done
fail() {{ echo "CORRAL-ERROR $*"; poweroff -f; }}
if grep -q corral.probe /proc/cmdline; then echo CORRAL-PROBE-OK; poweroff -f; fi
root=$(findfs LABEL=corral-root) || fail "no template image (LABEL=corral-root)"
disk=$(findfs LABEL=corral-disk) || fail "no sandbox disk (LABEL=corral-disk)"
mkdir -p /lower /upper /newroot
mount -t ext4 -o ro,noload $root /lower || fail "cannot mount the template image $root"
mount -t ext4 -o rw,errors=remount-ro $disk /upper || fail "cannot mount the sandbox disk $disk"
mkdir -p /upper/root /upper/work
mount -t overlay root -o lowerdir=/lower,upperdir=/upper/root,workdir=/upper/work /newroot || fail "overlay"
mount -t tmpfs -o mode=0755,size=64m run /newroot/run || fail "no /run in the template"
cp -a /corral /newroot/run/corral
# The files each sandbox's identity rewrites live on the tmpfs (no disk write at a restore).
for f in hosts hostname resolv.conf; do
  : > /newroot/run/corral/$f
  [ -L /newroot/etc/$f ] && rm -f /newroot/etc/$f
  [ -e /newroot/etc/$f ] || : > /newroot/etc/$f
  mount --bind /newroot/run/corral/$f /newroot/etc/$f || fail "bind /etc/$f"
done
[ -x /newroot/usr/bin/python3 ] || fail "the template has no /usr/bin/python3"
ip link set lo up
ip addr add {GUEST_IP}/30 dev eth0 && ip link set eth0 up && ip route add default via {GATEWAY} || fail "network"
arp -i eth0 -s {GATEWAY} {GATEWAY_MAC} || fail "network (the gateway's ARP entry)"
mkdir -p /newroot/dev /newroot/proc /newroot/sys
mount --move /dev /newroot/dev; mount --move /proc /newroot/proc; mount --move /sys /newroot/sys
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
exec switch_root /newroot /usr/bin/python3 -I -S /run/corral/init.py
"""


class AssetError(RuntimeError):
    pass


def _run(argv: list[str], cwd: Path | None = None, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    p = subprocess.run(argv, capture_output=True, cwd=cwd, input=input)
    if p.returncode != 0:
        raise AssetError(f"{' '.join(argv[:3])} failed ({p.returncode}): {p.stderr.decode(errors='replace')[-500:]}")
    return p


# ---- kernel ------------------------------------------------------------------------------------


def kernel_version_from_apt() -> str:
    """The version the cloud kernel meta package depends on now (e.g. 6.1.0-56-cloud-amd64)."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE]).stdout.decode()
    m = re.search(r"Depends: linux-image-(\S+-cloud-amd64)", out)
    if not m:
        raise AssetError(f"no kernel in `apt-cache depends {KERNEL_META_PACKAGE}` (run apt-get update)")
    return m.group(1)


def cached_kernels(root: Path) -> list[str]:
    d = root / "kernel"
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if (p / "vmlinux").is_file() and (p / "modules").is_dir())


def kernel_dir(root: Path, version: str) -> Path:
    return root / "kernel" / version


def ensure_kernel(root: Path, version: str | None = None) -> str:
    """Fetch and unpack the cloud kernel (cached per version); returns the version."""
    if version is None:
        cached = cached_kernels(root)
        try:
            version = kernel_version_from_apt()
        except (AssetError, OSError):
            if cached:
                return cached[-1]
            raise
    dest = kernel_dir(root, version)
    if (dest / "vmlinux").is_file() and (dest / "modules").is_dir():
        return version
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o777)  # apt's download user (_apt) writes there
        package = f"linux-image-{version}"
        _run(["apt-get", "download", "-q", package], cwd=work)
        debs = list(work.glob(f"{package}_*.deb"))
        if not debs:
            raise AssetError(f"apt-get download {package} left no .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), str(work / "x")])
        out = work / "out"
        (out / "modules").mkdir(parents=True)
        _extract_vmlinux(work / "x" / "boot" / f"vmlinuz-{version}", out / "vmlinux")
        mods = work / "x" / "lib" / "modules" / version / "kernel"
        for name, rel in MODULE_PATHS.items():
            shutil.copyfile(mods / rel, out / "modules" / f"{name}.ko")
        (out / "version").write_text(version + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(out, dest)
    return version


def _extract_vmlinux(bzimage: Path, out: Path) -> None:
    """The ELF inside a bzImage whose payload is LZ4 (QEMU's PVH boot wants the ELF)."""
    data = bzimage.read_bytes()
    off = data.find(LZ4_MAGIC)
    while off != -1:
        p = subprocess.run(["lz4", "-dc"], input=data[off:], capture_output=True)
        if p.stdout[:4] == b"\x7fELF":
            out.write_bytes(p.stdout)
            return
        off = data.find(LZ4_MAGIC, off + 1)
    raise AssetError(f"no LZ4-compressed ELF kernel found in {bzimage}")


# ---- initramfs ---------------------------------------------------------------------------------


def _agent_files(agent_path: Path) -> list[Path]:
    return sorted(p for p in agent_path.rglob("*.py") if "__pycache__" not in p.parts)


def initramfs_key(kernel_version: str, agent_path: Path) -> str:
    """Changes with the kernel, stage 1, the guest's init, busybox or any agent file."""
    h = hashlib.sha256()
    h.update(kernel_version.encode() + b"\0" + INIT_SCRIPT.encode() + b"\0")
    h.update(Path(__file__).with_name("guest_init.py").read_bytes())
    h.update(str(BUSYBOX.stat().st_size).encode())
    for f in _agent_files(agent_path):
        h.update(str(f.relative_to(agent_path)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def ensure_initramfs(root: Path, kernel_version: str, agent_path: Path) -> Path:
    key = initramfs_key(kernel_version, agent_path)
    out = root / "initramfs" / f"{key}.cpio"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out.parent) as tmp:
        w = Path(tmp) / "root"
        for d in ("bin", "proc", "sys", "dev", "lib/modules", "corral/bin"):
            (w / d).mkdir(parents=True)
        shutil.copy2(BUSYBOX, w / "bin" / "busybox")
        for applet in APPLETS:
            (w / "bin" / applet).symlink_to("busybox")
        shutil.copy2(BUSYBOX, w / "corral" / "bin" / "busybox")  # for guest_init's poweroff
        for name in MODULES:
            shutil.copyfile(kernel_dir(root, kernel_version) / "modules" / f"{name}.ko", w / "lib" / "modules" / f"{name}.ko")
        (w / "init").write_text(INIT_SCRIPT)
        (w / "init").chmod(0o755)
        shutil.copyfile(Path(__file__).with_name("guest_init.py"), w / "corral" / "init.py")
        agent = w / "corral" / "agent"
        for f in _agent_files(agent_path):
            dst = agent / f.relative_to(agent_path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
            # Precompiled, unchecked: python in the guest (same minor version as the host's in
            # Debian templates) skips compiling the agent at every cold boot; another version
            # ignores these files and compiles.
            py_compile.compile(
                str(dst), cfile=str(dst.parent / "__pycache__" / f"{dst.stem}.{_cache_tag()}.pyc"),
                dfile=f"/run/corral/agent/{f.relative_to(agent_path)}",
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH, doraise=True,
            )  # fmt: skip
        listing = subprocess.run(["find", "."], cwd=w, capture_output=True, check=True).stdout
        cpio = _run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=w, input=listing).stdout
        part = Path(tmp) / "initramfs.cpio"
        part.write_bytes(cpio)
        os.replace(part, out)
    return out


def _cache_tag() -> str:
    import sys

    return sys.implementation.cache_tag


# ---- disks -------------------------------------------------------------------------------------


def ensure_empty_disk(root: Path, disk_mb: int) -> Path:
    """An empty ext4 of disk_mb MiB (sparse; labelled for stage 1), the base of sandbox disks."""
    out = root / "disks" / f"empty-{disk_mb}.ext4"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".empty-", dir=out.parent)
    os.close(fd)
    try:
        # -m 0: the whole quota is the sandbox's; lazy init keeps the image sparse.
        _run(["mkfs.ext4", "-q", "-F", "-L", "corral-disk", "-m", "0", "-E",
              "lazy_itable_init=1,lazy_journal_init=1", tmp, f"{disk_mb}M"])  # fmt: skip
        os.chmod(tmp, 0o644)  # read by every sandbox's QEMU (each its own uid) as a backing file
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def image_key(lower_dirs: list[Path]) -> str:
    """Template dirs are content-addressed (a build digest, layer keys): their paths key the image."""
    return hashlib.sha256(json.dumps([str(p) for p in lower_dirs]).encode()).hexdigest()[:16]


def ensure_image(root: Path, lower_dirs: list[Path]) -> Path:
    from ...templates.export import export_lower_dirs

    out = root / "images" / f"{image_key(lower_dirs)}.ext4"
    # The root is read-only in guests: a little headroom for ext4's own metadata is enough.
    return export_lower_dirs(lower_dirs, out, headroom_mb=64, label="corral-root")

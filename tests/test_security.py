"""Every way in is refused: the host's files, other sandboxes, the control API, resource bombs, symlinks."""

from __future__ import annotations

import hashlib
import http.server
import os
import secrets
import socket
import threading
from pathlib import Path

import httpx
import pytest

from corral import CommandExitError, Sandbox
from corral import FileNotFoundError as CorralFileNotFound
from helpers import ServerProcess, assert_clean


def run(sbx: Sandbox, cmd: str, user: str = "user", timeout: float = 30):  # type: ignore[no-untyped-def]
    try:
        return sbx.commands.run(cmd, user=user, timeout=timeout)
    except CommandExitError as e:
        return e


def test_root_inside_is_unprivileged_outside(sbx: Sandbox) -> None:
    r = run(sbx, "cat /proc/self/uid_map; id -u", user="root")
    assert r.stdout.split() == ["0", "100000", "65536", "0"]
    # No new privileges, a seccomp filter: mount, unshare and module loading are refused even for root.
    for cmd in ["mount -t tmpfs none /mnt", "unshare -U true", "unshare -n true", "modprobe dummy",
                "python3 -c 'import ctypes; assert ctypes.CDLL(None).syscall(250, 0, 0, 0) == 0'"]:
        assert run(sbx, cmd, user="root").exit_code != 0, cmd
    assert run(sbx, "grep NoNewPrivs /proc/self/status").stdout.split()[-1] == "1"
    assert run(sbx, "grep Seccomp: /proc/self/status").stdout.split()[-1] == "2"


def test_host_files_are_out_of_reach(sbx: Sandbox) -> None:
    marker = Path(f"/root/corral-marker-{secrets.token_hex(4)}")
    marker.write_text("host secret")
    try:
        r = run(sbx, f"cat {marker}; ls /root; find / -xdev -name '{marker.name}' 2>/dev/null", user="root")
        assert "host secret" not in r.stdout and marker.name not in r.stdout
        with pytest.raises(CorralFileNotFound):
            sbx.files.read(str(marker), user="root")
        # The host's /proc is not there: pid 1 inside is bubblewrap's init, not the host's init.
        assert "bwrap" in run(sbx, "cat /proc/1/cmdline").stdout
    finally:
        marker.unlink()


def test_symlinks_resolve_inside_the_sandbox(sbx: Sandbox) -> None:
    run(sbx, "ln -s / /home/user/root; ln -s ../../../../../../etc /home/user/up; ln -s /tmp /home/user/tmplink")
    sandbox_hostname = run(sbx, "cat /etc/hostname").stdout
    assert sbx.files.read("/home/user/root/etc/hostname") == sandbox_hostname
    assert sbx.files.read("/home/user/up/hostname") == sandbox_hostname
    assert "root:x:0:0" in sbx.files.read("/home/user/../../etc/passwd")
    probe = f"corral-escape-{secrets.token_hex(4)}"
    sbx.files.write(f"/home/user/tmplink/{probe}", "inside")
    assert not Path(f"/tmp/{probe}").exists()
    assert run(sbx, f"cat /tmp/{probe}").stdout == "inside"
    entries = {e.name for e in sbx.files.list("/home/user/root")}
    assert "usr" in entries and "run" in entries


def test_other_sandboxes_are_out_of_reach(api: dict[str, str]) -> None:
    with Sandbox.create(**api) as a, Sandbox.create(**api) as b:
        tag = secrets.token_hex(4)
        a.files.write(f"/tmp/secret-{tag}", "a's secret")
        a.commands.run(f"sleep 1000 {tag} &>/dev/null &")
        a.commands.run("python3 -m http.server 8000 --bind 0.0.0.0 &>/dev/null &")
        a_ip = a.commands.run("hostname -I").stdout.split()[0]
        assert tag not in run(b, "ps aux").stdout
        assert run(b, f"cat /tmp/secret-{tag}").exit_code != 0
        assert run(b, f"find / -xdev -name 'secret-{tag}' 2>/dev/null").stdout == ""
        r = run(b, f"curl -s -m 3 http://{a_ip}:8000/ >/dev/null")
        assert r.exit_code != 0
        # ...while a can reach its own server.
        ok = run(a, "for i in $(seq 50); do curl -s -m 1 -o /dev/null http://127.0.0.1:8000/ && exit 0; sleep 0.1; done; exit 1")
        assert ok.exit_code == 0


def test_writes_never_reach_the_next_sandbox(api: dict[str, str]) -> None:
    with Sandbox.create(**api) as a:
        run(a, "echo changed > /etc/motd-corral; rm -f /usr/bin/git; echo x > /home/user/x", user="root")
    with Sandbox.create(**api) as b:
        assert run(b, "cat /etc/motd-corral").exit_code != 0
        assert run(b, "test -x /usr/bin/git && test ! -e /home/user/x").exit_code == 0


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"host")

    def log_message(self, *args: object) -> None:
        pass


def test_control_api_and_host_loopback_are_out_of_reach(corral_server: ServerProcess, sbx: Sandbox) -> None:
    host_server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), _Quiet)
    port = host_server.server_address[1]
    threading.Thread(target=host_server.serve_forever, daemon=True).start()
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "host"
        gateway = run(sbx, "ip route show default").stdout.split()[2]
        api_port = corral_server.port
        for addr, p in [("127.0.0.1", api_port), (gateway, api_port), ("127.0.0.1", port), (gateway, port),
                        ("169.254.169.254", 80)]:
            r = run(sbx, f"curl -s -m 2 -o /dev/null -w '%{{http_code}}' http://{addr}:{p}/health")
            assert r.exit_code != 0, (addr, p, r.stdout)
        host_ips = {a.split("/")[0] for a in os.popen("ip -o -4 addr show | awk '{print $4}'").read().split()}
        for ip in host_ips - {"127.0.0.1"}:
            r = run(sbx, f"curl -s -m 2 -o /dev/null http://{ip}:{port}/")
            assert r.exit_code != 0, ip
    finally:
        host_server.shutdown()


def test_fork_bomb_hits_the_pids_limit_only_there(corral_server: ServerProcess, api: dict[str, str]) -> None:
    with Sandbox.create(**api) as other:
        bomb = Sandbox.create(**api)
        try:
            bomb.commands.run("bomb() { bomb | bomb & }; bomb", timeout=5)
        except Exception:
            pass  # the bomb's own shell may fail to fork: that is the limit working
        assert other.commands.run("echo fine").stdout == "fine\n"
        assert httpx.get(corral_server.url + "/health").status_code == 200
        bomb.kill()
        assert_clean(corral_server.run_dir, {bomb.sandbox_id}, timeout=30)


def test_memory_bomb_is_oom_killed_only_there(api: dict[str, str]) -> None:
    with Sandbox.create(memory_mb=128, disk_mb=64, **api) as bomb, Sandbox.create(**api) as other:
        r = run(bomb, "python3 -c 'x = bytearray(1024 * 1024 * 1024); print(len(x))'", timeout=30)
        assert r.exit_code == 137  # SIGKILL from the OOM killer, inside the sandbox's own cgroup
        assert other.commands.run("echo fine").stdout == "fine\n"
        assert bomb.commands.run("echo alive").stdout == "alive\n"  # the hog died, not the sandbox


def test_disk_fill_stops_at_the_quota(api: dict[str, str]) -> None:
    with Sandbox.create(disk_mb=64, **api) as s:
        r = run(s, "dd if=/dev/zero of=/home/user/big bs=1M count=500 2>&1", timeout=60)
        assert r.exit_code != 0 and "No space left" in (r.stdout + r.stderr)
        size = int(run(s, "stat -c %s /home/user/big").stdout)
        assert size <= 64 * 1024 * 1024
        assert s.commands.run("rm /home/user/big && echo ok").stdout == "ok\n"


def test_output_flood_and_closed_stdout_do_not_hurt_the_server(corral_server: ServerProcess, sbx: Sandbox) -> None:
    r = sbx.commands.run("head -c 100000000 /dev/zero | tr '\\0' 'x'", timeout=120)
    assert len(r.stdout) == 100_000_000
    assert sbx.commands.run("exec 1>&-; exec 2>&-; sleep 0.2; true").exit_code == 0
    assert sbx.commands.run("while true; do :; done & sleep 0.1; echo busy-ok").stdout == "busy-ok\n"
    assert httpx.get(corral_server.url + "/health").status_code == 200


@pytest.mark.network
def test_pip_install_with_internet_on(api: dict[str, str]) -> None:
    # A real download (six is already installed in the template, so `pip install six` would not
    # fetch anything), over TLS checked with the host's CA certificates.
    with Sandbox.create(internet=True, **api) as s:
        r = s.commands.run("pip download --quiet --no-cache-dir --no-deps -d /tmp/dl six && ls /tmp/dl", timeout=180)
        assert r.stdout.strip().startswith("six-") and r.stdout.strip().endswith(".whl")


def test_the_sandbox_trusts_the_hosts_ca_certificates(sbx: Sandbox) -> None:
    host = hashlib.sha256(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()).hexdigest()
    r = sbx.commands.run("sha256sum /etc/ssl/certs/ca-certificates.crt; printenv SSL_CERT_FILE REQUESTS_CA_BUNDLE")
    digest, _, bundle, requests_bundle = r.stdout.split()
    assert digest == host
    assert bundle == requests_bundle == "/etc/ssl/certs/ca-certificates.crt"
    # Read-only, even for root inside.
    with pytest.raises(CommandExitError) as denied:
        sbx.commands.run("echo x >> /etc/ssl/certs/ca-certificates.crt", user="root", timeout=10)
    assert "Read-only file system" in denied.value.stderr or "Permission denied" in denied.value.stderr


def test_internet_off_has_no_way_out(api: dict[str, str]) -> None:
    with Sandbox.create(internet=False, **api) as s:
        r = run(s, "pip download --no-deps --timeout 3 --retries 0 -d /tmp/x six 2>&1", timeout=60)
        assert r.exit_code != 0


def test_hostname_is_the_sandbox_id(sbx: Sandbox) -> None:
    assert sbx.commands.run("hostname").stdout.strip() == sbx.sandbox_id
    assert socket.gethostname() != sbx.sandbox_id

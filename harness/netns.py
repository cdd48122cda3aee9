"""Several hosts on one machine: network namespaces (`ip netns`) joined by veth pairs to a
bridge in the root namespace, for tests that cut one host off the network.

    with netns.network(("a", "b", "c")) as net:
        net.hosts["b"].ip                    # 10.231.0.12
        net.gateway                          # 10.231.0.1: the root namespace, on the bridge
        net.exec_argv("b", ["bin/worker"])   # ["ip", "netns", "exec", "sf-<pid>-b", "bin/worker"]
        net.cut("b")                         # its link down: silence, no RST, no FIN

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); `network()` raises NetnsUnavailable when
the kernel or the container refuses (the caller skips, saying why). Every name carries the
creating process's pid (`sf-<pid>-<host>`, bridge `sfbr<pid>`, root-side veth
`sfv<pid><host>`), so runs side by side never collide and what a crashed run left behind is
recognised by its dead pid and removed. Addresses come from 10.231.0.0/24, one /26 per run
(4 side by side): the first run gets the bridge at .1 and hosts at .11, .12, ….

Only interfaces and namespace names are touched: processes still running in a stale
namespace are reported, never signalled (they are not ours to kill).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

NETWORK = ipaddress.ip_network("10.231.0.0/24")
SLOT_PREFIX = 26  # one /26 per run: 4 runs side by side
LOCK_FILE = "/tmp/sf-netns.lock"  # serialises slot choice and stale cleanup between runs
INSIDE_IF = "sf0"  # the veth end inside each namespace (names are per namespace)

_NS_RE = re.compile(r"^sf-(\d+)-[a-z][a-z0-9]*$")
_LINK_RE = re.compile(r"^sf(?:br|v)(\d+)(?:[a-z][a-z0-9]*)?$")
# What the kernel or a container says when it will not let us build namespaces or links.
_REFUSALS = (
    "operation not permitted",
    "permission denied",
    "not supported",
    "unknown device type",
    "no such file or directory",  # no /var/run/netns and no right to create it
    "read-only file system",
)


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be built here (not root, no CAP_NET_ADMIN, no veth)."""


@dataclass
class Host:
    name: str
    netns: str
    ip: str
    veth: str  # its root-side veth (on the bridge)
    inside: str = INSIDE_IF


@dataclass
class Network:
    tag: str
    bridge: str
    gateway: str  # the root namespace's address on the bridge: the servers listen here
    prefix: int
    hosts: dict[str, Host] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what stale cleanup found

    def exec_argv(self, host: str, argv: list[str]) -> list[str]:
        """argv run inside host's namespace. `ip netns exec` execs the command in place (no
        fork): the Popen pid is the command's, and so is its process group."""
        return ["ip", "netns", "exec", self.hosts[host].netns, *argv]

    def cut(self, host: str) -> None:
        """Take the host's interface down from inside: its packets go nowhere and nothing
        reaches it, as when a machine or its switch port dies (peers see silence)."""
        h = self.hosts[host]
        _ip("-n", h.netns, "link", "set", h.inside, "down")

    def restore(self, host: str) -> None:
        h = self.hosts[host]
        _ip("-n", h.netns, "link", "set", h.inside, "up")

    def link_up(self, host: str) -> bool:
        h = self.hosts[host]
        out = _ip("-n", h.netns, "-o", "link", "show", h.inside).stdout
        return "state UP" in out or ",UP" in out.split(">")[0]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode:
        msg = f"ip {' '.join(args)}: {(proc.stderr or proc.stdout).strip()}"
        if any(r in msg.lower() for r in _REFUSALS):
            raise NetnsUnavailable(msg)
        raise RuntimeError(msg)
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def probe() -> str | None:
    """None when namespaces can be built here, else why not (for a skip message)."""
    if os.name != "posix" or not os.path.exists("/proc/self/ns/net"):
        return "no Linux network namespaces on this system"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    name = f"sf-{os.getpid()}-probe"
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=30)
    if proc.returncode:
        return f"`ip netns add` failed (euid {os.geteuid()}): {proc.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
    return None


def clear_stale() -> list[str]:
    """Remove namespaces and links named by a run whose process is gone. Returns notes."""
    notes = []
    names = _ip("netns", "list", check=False).stdout.split()
    for ns in names:
        m = _NS_RE.match(ns)
        if not m or _pid_alive(int(m.group(1))):
            continue
        pids = _ip("netns", "pids", ns, check=False).stdout.split()
        if pids:
            notes.append(f"stale namespace {ns} still has processes {pids}: left running")
        _ip("netns", "del", ns, check=False)
        notes.append(f"removed stale namespace {ns}")
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) < 2:
            continue
        link = parts[1].strip().split("@")[0]
        m = _LINK_RE.match(link)
        if m and not _pid_alive(int(m.group(1))):
            _ip("link", "del", link, check=False)
            notes.append(f"removed stale link {link}")
    return notes


def _free_slot() -> ipaddress.IPv4Network:
    """The first /26 of NETWORK with no address on any root-namespace interface."""
    used = set()
    for line in _ip("-4", "-o", "addr", "show", check=False).stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            addr = ipaddress.ip_interface(m.group(1)).ip
            if addr in NETWORK:
                used.add(addr)
    for slot in NETWORK.subnets(new_prefix=SLOT_PREFIX):
        if not any(a in slot for a in used):
            return slot
    raise RuntimeError(f"every /{SLOT_PREFIX} of {NETWORK} is in use: {sorted(map(str, used))}")


def _teardown(net: Network) -> list[str]:
    errors = []
    for h in net.hosts.values():
        # Deleting one end of a veth pair deletes both; the namespace goes with its name.
        for args in (("link", "del", h.veth), ("netns", "del", h.netns)):
            proc = _ip(*args, check=False)
            err = proc.stderr.lower()
            if proc.returncode and "cannot find" not in err and "no such" not in err:
                errors.append(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    proc = _ip("link", "del", net.bridge, check=False)
    if proc.returncode and "cannot find" not in proc.stderr.lower():
        errors.append(f"ip link del {net.bridge}: {proc.stderr.strip()}")
    return errors


@contextlib.contextmanager
def network(hosts: tuple[str, ...] = ("a", "b", "c")) -> Iterator[Network]:
    """A bridge and one namespace per host on it, each with loopback and its veth up; all
    of it removed on exit, whatever happened inside."""
    # A letter first: the pid in `sfv<pid><host>` must end where the host name begins.
    if len(hosts) > 40 or any(not re.fullmatch(r"[a-z][a-z0-9]{0,2}", h) for h in hosts):
        raise ValueError(f"host names: a letter, then up to 2 of [a-z0-9]; at most 40: {hosts}")
    reason = probe()
    if reason:
        raise NetnsUnavailable(reason)
    tag = str(os.getpid())
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            notes = clear_stale()
            slot = _free_slot()
            base = int(slot.network_address)
            net = Network(
                tag=tag,
                bridge=f"sfbr{tag}",
                gateway=str(ipaddress.ip_address(base + 1)),
                prefix=SLOT_PREFIX,
                notes=notes,
            )
            try:
                _ip("link", "add", net.bridge, "type", "bridge")
                _ip("addr", "add", f"{net.gateway}/{SLOT_PREFIX}", "dev", net.bridge)
                _ip("link", "set", net.bridge, "up")
                for i, name in enumerate(hosts):
                    h = Host(
                        name=name,
                        netns=f"sf-{tag}-{name}",
                        ip=str(ipaddress.ip_address(base + 11 + i)),
                        veth=f"sfv{tag}{name}",
                    )
                    net.hosts[name] = h
                    _ip("netns", "add", h.netns)
                    _ip("link", "add", h.veth, "type", "veth", "peer", "name", h.inside, "netns", h.netns)  # fmt: skip
                    _ip("link", "set", h.veth, "master", net.bridge)
                    _ip("link", "set", h.veth, "up")
                    _ip("-n", h.netns, "link", "set", "lo", "up")
                    _ip("-n", h.netns, "addr", "add", f"{h.ip}/{SLOT_PREFIX}", "dev", h.inside)
                    _ip("-n", h.netns, "link", "set", h.inside, "up")
            except BaseException:
                _teardown(net)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        yield net
    finally:
        errors = _teardown(net)
        if errors:  # a warning: raising here would hide what failed inside the block
            warnings.warn("network teardown: " + "; ".join(errors), stacklevel=3)

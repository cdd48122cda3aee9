"""A private RabbitMQ node for the chaos run and the bench: its own node name, AMQP and
distribution ports, data and log dirs, config and Erlang cookie, so kill -9 and restarts
never touch the machine's shared broker.

    node = RabbitNode(state_dir / "rabbitmq", tag="sfchaos")
    url = node.start()          # amqp://guest:guest@127.0.0.1:<port>//
    node.restart(down_s=3)      # kill -9, stay down, start again on the same ports and data
    node.stop()

The server is started from RabbitMQ's own sbin scripts, not Debian's /usr/sbin wrappers
(those `su` to the rabbitmq user and drop our environment). As root the node runs as
root: its files are in our state dir, not /var/lib/rabbitmq. It registers with the
machine's epmd (a name registry only; starting one if none runs). Only the process group
this module started is ever signalled.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import amqp
import psutil

from harness.processes import free_port

USER = PASSWORD = "guest"  # guest may connect from 127.0.0.1 only: all we use


def sbin_dir() -> Path:
    """RabbitMQ's own scripts: $RABBITMQ_SBIN, else the newest Debian/Ubuntu install."""
    if os.environ.get("RABBITMQ_SBIN"):
        return Path(os.environ["RABBITMQ_SBIN"])
    found = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"))
    if not found:
        raise RuntimeError(
            "RabbitMQ's sbin scripts not found (apt-get install rabbitmq-server, "
            "or set RABBITMQ_SBIN)"
        )
    return Path(found[-1])


class RabbitNode:
    def __init__(self, base: str | os.PathLike, tag: str = "sfnode"):
        self.base = Path(base)
        self.name = f"{tag}-{os.getpid()}@localhost"
        self.port, self.dist_port = free_port(), free_port()
        self.url = f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.port}//"
        self.sbin = sbin_dir()
        self.popen: subprocess.Popen | None = None
        self.starts = 0

    # --- environment ---------------------------------------------------------------------

    def _files(self) -> dict:
        b = self.base
        for d in ("mnesia", "log", "home"):
            (b / d).mkdir(parents=True, exist_ok=True)
        conf = b / "rabbitmq.conf"
        # The machine's /etc/rabbitmq/rabbitmq.conf pins 5672: ours replaces it.
        conf.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (b / "enabled_plugins").write_text("[].\n")  # no management UI: less to boot
        (b / "rabbitmq-env.conf").write_text("")  # ignore /etc/rabbitmq/rabbitmq-env.conf
        return {"conf": conf}

    def env(self) -> dict[str, str]:
        b = self.base
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(b / "home"),  # the Erlang cookie: ours, created on first start
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(b / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(b / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(b / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(b / "mnesia"),
            RABBITMQ_LOG_BASE=str(b / "log"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 90) -> str:
        """Start the node (same ports and data as before) and wait until it takes an AMQP
        connection. Returns the URL."""
        if self.alive():
            return self.url
        self._files()
        with (self.base / "server.log").open("ab") as out:
            self.popen = subprocess.Popen(
                [str(self.sbin / "rabbitmq-server")],
                cwd=self.base,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: kill9() takes the whole node
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not self.alive():
                raise RuntimeError(f"RabbitMQ node {self.name} exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(
                    f"RabbitMQ node {self.name} not ready in {timeout}s:\n{self.tail()}"
                )
            time.sleep(0.2)
        return self.url

    def ready(self) -> bool:
        """The AMQP listener answers and a channel opens (listeners start last at boot)."""
        try:
            conn = amqp.Connection(
                f"127.0.0.1:{self.port}", userid=USER, password=PASSWORD, connect_timeout=2
            )
            conn.connect()
            try:
                conn.channel().close()
            finally:
                conn.close()
            return True
        except Exception:  # refused, reset, handshake timeout: not up yet
            return False

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        """The process group leader (the start script); beam.smp and its helpers are in it."""
        return self.popen.pid if self.alive() else None

    def beam_pid(self) -> int | None:
        try:
            return int((self.base / "mnesia" / f"{self.name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill9(self, timeout: float = 30) -> None:
        """SIGKILL the node's whole process group (beam.smp included): a crashed host."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        self._wait_group_gone(timeout)

    def restart(self, down_s: float, timeout: float = 90) -> dict:
        """kill -9, `down_s` seconds down, start again; the durable (quorum) queues come back
        from disk."""
        beam = self.beam_pid()
        t0 = time.monotonic()
        self.kill9()
        time.sleep(down_s)
        t_start = time.monotonic()
        self.start(timeout)
        return {
            "pid": beam,
            "signal": "SIGKILL",
            "start_s": round(time.monotonic() - t_start, 2),
            "down_s": round(time.monotonic() - t0, 2),
        }

    def stop(self, timeout: float = 60) -> None:
        """Graceful: SIGTERM to the start script, which runs `rabbitmqctl stop`; SIGKILL
        after `timeout`."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
            self._wait_group_gone(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill9()

    def _wait_group_gone(self, timeout: float) -> None:
        """Until no live process is left in the node's group. Zombies do not count: PID 1
        of a container may never reap the orphaned beam.smp."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._group_members():
            time.sleep(0.05)

    def _group_members(self) -> list[int]:
        pgid, out = self.popen.pid, []
        for p in psutil.process_iter(["pid", "status"]):
            with contextlib.suppress(psutil.Error, OSError):
                if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                    out.append(p.pid)
        return out

    # --- inspection ----------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """rabbitmqctl against this node (with its cookie)."""
        out = subprocess.run(
            [str(self.sbin / "rabbitmqctl"), "-q", "-n", self.name, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {out.stderr.strip()[-500:]}")
        return out.stdout

    def queues(self) -> dict[str, dict]:
        """{queue: {type, messages, messages_unacknowledged}}."""
        out = self.ctl(
            "list_queues", "name", "type", "messages", "messages_unacknowledged",
            "--formatter", "json",
        )  # fmt: skip
        return {q.pop("name"): q for q in json.loads(out or "[]")}

    def peek(self, queue: str, limit: int = 200) -> list[dict]:
        """Up to `limit` messages of `queue`, left in it (got unacked, returned when the
        channel closes): the task name, and why and from where one was dead-lettered."""
        out = []
        conn = amqp.Connection(
            f"127.0.0.1:{self.port}", userid=USER, password=PASSWORD, connect_timeout=5
        )
        conn.connect()
        try:
            channel = conn.channel()
            for _ in range(limit):
                msg = channel.basic_get(queue, no_ack=False)
                if msg is None:
                    break
                headers = msg.properties.get("application_headers") or {}
                death = (headers.get("x-death") or [{}])[0]
                out.append(
                    {
                        "task": headers.get("task"),
                        "reason": death.get("reason"),
                        "from_queue": death.get("queue"),
                        "expiration": msg.properties.get("expiration"),
                    }
                )
        finally:
            conn.close()
        return out

    def tail(self, n: int = 30) -> str:
        lines = []
        for path in (self.base / "server.log", self.base / "log" / f"{self.name}.log"):
            with contextlib.suppress(OSError):
                lines += path.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines)

    def copy_logs(self, dest: str | os.PathLike) -> None:
        """The start script's output and the node's log as rabbitmq*.log in dest."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for src, name in (
            (self.base / "server.log", "rabbitmq-server.log"),
            (self.base / "log" / f"{self.name}.log", "rabbitmq.log"),
        ):
            if src.exists():
                shutil.copy2(src, dest / name)

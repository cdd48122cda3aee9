"""A private PgBouncer (Debian's /usr/sbin/pgbouncer) in transaction pooling mode in front of
a PostgreSQL URL: `make test-pgbouncer`, and tests that put one between processes and
PostgreSQL.

Every database it serves gets one alias per process role (config/pooler.py): the role's
session options (timeouts, client_connection_check_interval, a test's extra settings)
become the alias's `connect_query`, run on each server connection its pool opens. The
options come from the settings module (DJANGO_SETTINGS_MODULE, DB_SESSION_OPTIONS_BY_ROLE)
read in *this* environment, unless given. `postgres` is passed through plain: Django's
"no database" connection (CREATE/DROP DATABASE of the test database).

    python -m harness.pgbouncer start [--workdir D] [--port P]   prints KEY=value lines
    python -m harness.pgbouncer env|stop [--workdir D]
    python -m harness.pgbouncer run [--workdir D] [--port P] -- CMD...   start, run, stop

`env`/`start` print DATABASE_URL (through PgBouncer), DATABASE_POOLER=pgbouncer,
DATABASE_DIRECT_URL (the upstream) and PGBOUNCER_SESSION_OPTIONS (JSON: what each role's
pool sets). `run` also drops the test database directly afterwards, once PgBouncer, which
holds server connections to it, has stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from config import pooler

BINARY = os.environ.get("PGBOUNCER_BIN") or shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Upstream:
    host: str  # a name, an address, or a unix socket directory
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def parse(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        host = unquote(parts.netloc.rpartition("@")[2].rsplit(":", 1)[0]) if parts.netloc else ""
        return cls(
            host=host or "127.0.0.1",
            port=parts.port or 5432,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            database=unquote(parts.path.lstrip("/")) or "postgres",
        )

    def url(self, database: str | None = None) -> str:
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        host = quote(self.host, safe="") if self.host.startswith("/") else self.host
        return f"postgresql://{auth}@{host}:{self.port}/{quote(database or self.database)}"


@dataclass
class PgBouncer:
    workdir: Path
    upstream: Upstream
    listen_host: str
    listen_port: int
    session_options: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    rundir: Path | None = None  # config, pid and log: workdir, or /tmp when run as another user

    def url_for(self, database: str, role: str = "web") -> str:
        """A URL through PgBouncer to `database` (one it serves) with `role`'s session.
        stockflow's settings pick the role's alias themselves: give them role "web"."""
        return self._url(pooler.alias(database, role))

    @property
    def url(self) -> str:
        return self.url_for(self.upstream.database)

    def _url(self, database: str) -> str:
        auth = quote(self.upstream.user, safe="")
        if self.upstream.password:
            auth += ":" + quote(self.upstream.password, safe="")
        return f"postgresql://{auth}@{self.listen_host}:{self.listen_port}/{database}"

    def env(self) -> dict[str, str]:
        """What a stockflow process needs to go through this PgBouncer."""
        return {
            "DATABASE_URL": self.url,
            "DATABASE_POOLER": "pgbouncer",
            "DATABASE_DIRECT_URL": self.upstream.url(),
            "PGBOUNCER_SESSION_OPTIONS": json.dumps(self.session_options, sort_keys=True),
        }

    def admin(self, command: str) -> list[tuple]:
        """A command on PgBouncer's admin console (SHOW POOLS, RECONNECT, KILL db...)."""
        import psycopg

        url = self._url("pgbouncer")
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            cur = psycopg.ClientCursor(conn)  # the console speaks the simple protocol only
            cur.execute(command)
            return cur.fetchall() if cur.description else []

    def alive(self) -> bool:
        return self.pid is not None and _is_ours(self.pid, self.rundir or self.workdir)

    def log(self) -> str:
        return _log(self.rundir or self.workdir)

    def stop(self, timeout: float = 15) -> None:
        """SIGINT (PgBouncer's safe shutdown: no new clients, ends when they are done) is
        too patient for tests: SIGTERM closes everything at once. A run dir of its own in
        /tmp goes too, its log kept in workdir."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.alive():
                time.sleep(0.05)
            if self.alive():
                os.kill(self.pid, signal.SIGKILL)
        if self.rundir and self.rundir != self.workdir and self.rundir.exists():
            with contextlib.suppress(OSError):
                shutil.copy2(self.rundir / "pgbouncer.log", self.workdir / "pgbouncer.log")
            shutil.rmtree(self.rundir, ignore_errors=True)


def start(
    upstream_url: str,
    workdir: Path,
    listen_host: str = "127.0.0.1",
    listen_port: int = 6432,
    max_client_conn: int = 200,
    default_pool_size: int = 20,
    *,
    databases: list[str] | None = None,
    session_options: dict[str, str] | None = None,
    timeout: float = 20,
) -> PgBouncer:
    """Start PgBouncer (daemonised, pid in workdir) and wait until it answers. `databases`:
    those it serves, each with one alias per role (default: the upstream's database and its
    test database). `session_options`: role -> libpq options string its pool sets (default:
    the settings module's DB_SESSION_OPTIONS_BY_ROLE)."""
    upstream = Upstream.parse(upstream_url)
    workdir = Path(workdir).resolve()
    if session_options is None:
        session_options = settings_session_options()
    bouncer = PgBouncer(workdir, upstream, listen_host, listen_port, dict(session_options))
    workdir.mkdir(parents=True, exist_ok=True)
    old = attach(workdir) if (workdir / "state.json").exists() else None
    if old and old.alive():
        raise RuntimeError(f"a PgBouncer of {workdir} is already running (pid {old.pid})")
    user = _run_as()
    # As root PgBouncer refuses to start without -u, and the user it becomes must reach its
    # files: a run dir of its own under /tmp (workdir may be under a private one, pytest's).
    rundir = Path(tempfile.mkdtemp(prefix="sf-pgbouncer.", dir="/tmp")) if user else workdir
    bouncer.rundir = rundir
    names = databases or [upstream.database, "test_" + upstream.database]
    (rundir / "pgbouncer.ini").write_text(
        config_text(bouncer, names, max_client_conn, default_pool_size)
    )
    userlist = rundir / "userlist.txt"
    userlist.write_text(f'"{_ini_escape(upstream.user)}" "{_ini_escape(upstream.password)}"\n')
    userlist.chmod(0o600)
    (rundir / "pgbouncer.log").unlink(missing_ok=True)
    if user:
        pw = pwd.getpwnam(user)
        for path in (rundir, *rundir.iterdir()):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    save(bouncer)  # before it runs: `stop` finds even one that never got ready
    argv = [BINARY, "-d", *(["-u", user] if user else []), str(rundir / "pgbouncer.ini")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        log = bouncer.log()
        bouncer.stop()
        raise RuntimeError(f"pgbouncer failed ({out.returncode}): {out.stderr}{log}")
    _wait_ready(bouncer, timeout)
    return bouncer


def config_text(bouncer: PgBouncer, databases: list[str], max_client: int, pool: int) -> str:
    up = bouncer.upstream
    server = f"host={up.host} port={up.port} user={up.user}"
    lines = ["[databases]", f"postgres = {server} dbname=postgres"]
    for name in databases:
        for role in pooler.ROLES:
            if role in bouncer.session_options:
                query = pooler.connect_query(bouncer.session_options[role])
                lines.append(
                    f"{pooler.alias(name, role)} = {server} dbname={name}"
                    f" connect_query='{query.replace(chr(39), chr(39) * 2)}'"
                )
    w = bouncer.rundir or bouncer.workdir
    lines += [
        "",
        "[pgbouncer]",
        f"listen_addr = {bouncer.listen_host}",
        f"listen_port = {bouncer.listen_port}",
        "unix_socket_dir =",  # TCP only: no clash with a machine's /tmp/.s.PGSQL.<port>
        f"pidfile = {w / 'pgbouncer.pid'}",
        f"logfile = {w / 'pgbouncer.log'}",
        "auth_type = trust",  # loopback only; the userlist holds the server password
        f"auth_file = {w / 'userlist.txt'}",
        f"admin_users = {up.user}",
        "pool_mode = transaction",
        f"max_client_conn = {max_client}",
        f"default_pool_size = {pool}",
        # Give idle server connections back soon: PostgreSQL's max_connections is shared.
        "server_idle_timeout = 30",
        "server_reset_query =",
        "log_connections = 0",  # one line per client connection: noise
        "log_disconnections = 0",
        "",
    ]
    return "\n".join(lines)


def direct_database_url() -> str:
    """PostgreSQL itself: DATABASE_URL, unless that is already a PgBouncer of ours (the
    suite under `make test-pgbouncer`). Never chain one PgBouncer behind another: the inner
    one's connect_query would SET sessions the outer one shares between clients."""
    return os.environ.get("DATABASE_DIRECT_URL") or os.environ["DATABASE_URL"]


def settings_session_options() -> dict[str, str]:
    """DB_SESSION_OPTIONS_BY_ROLE of the settings module, read in this environment."""
    module = importlib.import_module(os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings"))
    return dict(module.DB_SESSION_OPTIONS_BY_ROLE)


def attach(workdir: Path) -> PgBouncer:
    """The PgBouncer a `start` left running in workdir (for `env` and `stop`)."""
    workdir = Path(workdir).resolve()
    state = json.loads((workdir / "state.json").read_text())
    rundir = Path(state["rundir"])
    return PgBouncer(
        workdir,
        Upstream(**state["upstream"]),
        state["listen_host"],
        state["listen_port"],
        state["session_options"],
        _read_pid(rundir),
        rundir,
    )


def save(bouncer: PgBouncer) -> None:
    state = {
        "upstream": vars(bouncer.upstream),
        "listen_host": bouncer.listen_host,
        "listen_port": bouncer.listen_port,
        "session_options": bouncer.session_options,
        "rundir": str(bouncer.rundir or bouncer.workdir),
    }
    path = bouncer.workdir / "state.json"
    path.write_text(json.dumps(state))
    path.chmod(0o600)


def drop_database(upstream_url: str, name: str) -> None:
    """DROP DATABASE directly on PostgreSQL, whoever is still connected (test teardown)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(Upstream.parse(upstream_url).url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _wait_ready(bouncer: PgBouncer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        bouncer.pid = _read_pid(bouncer.rundir or bouncer.workdir)
        if bouncer.pid and bouncer.alive():
            try:
                with socket.create_connection((bouncer.listen_host, bouncer.listen_port), 1):
                    pass
                bouncer.admin("SHOW VERSION")
                return
            except Exception as exc:  # not listening yet
                last = str(exc)
        time.sleep(0.1)
    log = bouncer.log()
    bouncer.stop()
    raise RuntimeError(f"pgbouncer not ready after {timeout}s: {last}{log}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists")


def _read_pid(workdir: Path) -> int | None:
    try:
        return int((workdir / "pgbouncer.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_ours(pid: int, rundir: Path) -> bool:
    """pid runs pgbouncer on this run dir's config: never signal anything else."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    config = str(rundir / "pgbouncer.ini").encode()
    return not zombie and b"pgbouncer" in cmdline[0] and config in cmdline


def _log(rundir: Path) -> str:
    try:
        return "\n" + "\n".join((rundir / "pgbouncer.log").read_text().splitlines()[-20:])
    except OSError:
        return ""


def _ini_escape(value: str) -> str:
    return value.replace('"', '""')


def _print_env(bouncer: PgBouncer) -> None:
    for key, value in bouncer.env().items():
        print(f"{key}={value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.pgbouncer")
    parser.add_argument("command", choices=["start", "stop", "env", "run"])
    parser.add_argument("--workdir", type=Path, default=ROOT / ".state" / "pgbouncer")
    parser.add_argument("--port", type=int, default=6432, help="0: a free port")
    parser.add_argument("--pool-size", type=int, default=20)
    argv = sys.argv[1:] if argv is None else argv
    cmd = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(cmd) - (1 if cmd or "--" in argv else 0)])
    if args.command in ("stop", "env"):
        if not (args.workdir / "state.json").exists():
            print(f"no PgBouncer state in {args.workdir}", file=sys.stderr)
            return 0 if args.command == "stop" else 1
        bouncer = attach(args.workdir)
        if args.command == "stop":
            bouncer.stop()
        else:
            _print_env(bouncer)
        return 0
    upstream = os.environ.get("DATABASE_URL")  # the direct URL
    if not upstream:
        from harness.embedded import ensure_services

        upstream = ensure_services()["DATABASE_URL"]  # embedded PostgreSQL (and Redis)
    port = args.port or _free_port()
    bouncer = start(upstream, args.workdir, listen_port=port, default_pool_size=args.pool_size)
    if args.command == "start":
        _print_env(bouncer)
        return 0
    return _run(bouncer, upstream, cmd or ["true"])


def _run(bouncer: PgBouncer, upstream: str, cmd: list[str]) -> int:
    test_db = "test_" + bouncer.upstream.database
    try:
        drop_database(upstream, test_db)  # a stale one from an interrupted run
        env = dict(os.environ, **bouncer.env())
        return subprocess.run(cmd, env=env, check=False).returncode
    finally:
        bouncer.stop()
        drop_database(upstream, test_db)


if __name__ == "__main__":
    sys.exit(main())

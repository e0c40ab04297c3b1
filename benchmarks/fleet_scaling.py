"""Fleet scaling: one API replica against two behind nginx, and serving latency while a job trains.

    MNIST_PATH=../shared/data/mnist_subset.npz .venv/bin/python -m benchmarks.fleet_scaling

Starts a fleet from deploy/localfleet.py in a temporary folder: PostgreSQL, Redis, two replicas (REPLICA_COMMAND,
1 gunicorn worker each, on a copy of models/), each pinned to its own core with `taskset -c`, and two nginx
instances with deploy/nginx.conf: one in front of replica 1 only (layout A), one in front of both (layout B).
nginx and wrk are not pinned. wrk posts the user-style images of benchmarks/samples/ to /predict in turn, as
benchmarks/saturation.py does, in the order A B B A per round. The bar: mean req/s of B at least 1.2x that of
A, with no errors (non-2xx answers, socket errors and timeouts).

Then serving while a retrain job trains (POST /retrain {"epochs": 30, "from": "active"}, cancelled once
measured): p99 of /predict idle and while the job trains, with fewer connections. In the fleet both replicas
move to the first core and the trainer (`python -m backend.worker`) runs on the second; the same is then
measured on one host: one gunicorn with its default workers, no DATABASE_URL or REDIS_URL, where the job runs
as a local process on the same cores as the workers. The 'training' run starts once the job has finished its
first epoch. nginx, wrk, PostgreSQL and Redis share the same cores as the replicas, so on one machine the
ratio understates what separate hosts would give. Figures: docs/fleet-scaling.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import shutil
import signal
import socket
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from backend.core.config import REPO_ROOT, Settings
from backend.data.jobs import RUNNER_MODULE, UNFINISHED
from benchmarks.saturation import write_load, wrk
from deploy import localfleet
from tests.support.fleet import server_folder
from tests.support.servers import cpu_seconds, worker_pids

BAR_RATIO = 1.2
TOKEN = "fleet-scaling-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RETRAIN = {"epochs": 30, "from": "active"}  # far longer than the measurement: the job is cancelled after it
FIRST_EPOCH_SECONDS = 600  # the longest wait for a job to finish its first epoch before giving up
TRAINER_START_SECONDS = 60
WRK_INSTALL = "apt-get install wrk"
NAME_WIDTH = 38  # of the run column


@dataclass
class Run:
    """One wrk run's figures."""

    name: str
    connections: int
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    split: str
    worker_cores: float
    load: float
    others: float

    def line(self) -> str:
        """Format the run as one table row."""
        return (
            f"{self.name:{NAME_WIDTH}s} {self.connections:5d} {self.rate:7.0f} {self.p50_ms:7.1f} {self.p99_ms:7.1f} "
            f"{self.errors:6d}  {self.split:>7s} {self.worker_cores:7.2f}  {self.load:4.1f}  {self.others:6.2f}"
        )


COLUMNS = (
    "split: each replica's (or worker's) share of the workers' CPU; workers: cores the gunicorn workers used; "
    "load: 1-minute load average at the start; others: cores used meanwhile by processes outside this benchmark"
)
HEADER = (
    f"{'run':{NAME_WIDTH}s} {'conns':>5s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'errors':>6s}  "
    f"{'split':>7s} {'workers':>7s}  load  others"
)


@dataclass
class Load:
    """What wrk sends: its Lua script and the multipart bodies it cycles through."""

    script: Path
    bodies: list[Path]


def pinned(core: int, argv: Sequence[str]) -> list[str]:
    """Return a command prefixed with `taskset -c core`: it and every process it forks run on that core only."""
    return ["taskset", "-c", str(core), *argv]


def pin(pid: int, core: int) -> None:
    """Move every thread of a running process and of its children to one core (later threads inherit it)."""
    for process in [pid, *localfleet.child_pids(pid)]:
        for task in Path(f"/proc/{process}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task.name), {core})


def cores_of(pid: int) -> set[int]:
    """Return the cores any thread of a process or of its children may run on."""
    cores: set[int] = set()
    for process in [pid, *localfleet.child_pids(pid)]:
        for task in Path(f"/proc/{process}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):
                cores |= os.sched_getaffinity(int(task.name))
    return cores


@contextlib.contextmanager
def api_server(env: dict[str, str], log: Path, core: int | None = None) -> Iterator[localfleet.Server]:
    """Run REPLICA_COMMAND (optionally pinned to `core`); yield it once GET /ready answers 200."""
    port = localfleet.free_port()
    argv = localfleet.local_command(localfleet.REPLICA_COMMAND, host=localfleet.LOOPBACK, port=port)
    with localfleet.running(argv if core is None else pinned(core, argv), env=env, log=log) as process:
        url = f"http://{localfleet.LOOPBACK}:{port}"
        ready = functools.partial(localfleet.http_ok, f"{url}/ready")
        localfleet.wait_for(ready, f"gunicorn {url}", process, log, localfleet.REPLICA_STARTUP_SECONDS)
        yield localfleet.Server("replica", process, log, url, port)


def busy_cpu_seconds() -> float:
    """Return the CPU time all cores have spent running processes since boot (user, nice, system), from /proc/stat."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4]]
    return sum(ticks) / os.sysconf("SC_CLK_TCK")  # interrupts and steal left out: processes are not charged them


def own_cpu_seconds() -> float:
    """Return the CPU time of this process and of all its descendants, running or already reaped (wrk, and
    PostgreSQL's connection processes)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stats[int(entry.name)] = [
                    int(field) for field in (entry / "stat").read_text().rsplit(")", 1)[1].split()[1:15]
                ]
    family, ticks = [os.getpid()], 0
    for pid in family:  # grows as it goes: breadth first through the tree
        family += [child for child, fields in stats.items() if fields[0] == pid]  # field 4 of proc(5): the parent
        if pid in stats:  # fields 14 to 17: utime, stime, and those of the children it has reaped
            ticks += sum(stats[pid][10:14])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(name: str, url: str, load: Load, connections: int, seconds: float, groups: list[list[int]]) -> Run:
    """Run wrk on POST /predict; `groups` are the worker pids whose CPU split the run reports (per replica)."""
    before = [[cpu_seconds(pid) for pid in group] for group in groups]
    started_load = os.getloadavg()[0]
    busy, own, started = busy_cpu_seconds(), own_cpu_seconds(), time.monotonic()
    result = wrk(url, load.script, load.bodies, connections, seconds)
    elapsed = time.monotonic() - started
    others = (busy_cpu_seconds() - busy - (own_cpu_seconds() - own)) / elapsed
    spent = [
        sum(cpu_seconds(pid) - used for pid, used in zip(group, used_before, strict=True))
        for group, used_before in zip(groups, before, strict=True)
    ]
    run = Run(
        name=name,
        connections=connections,
        rate=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        errors=sum(result[kind] for kind in ("connect", "read", "write", "status", "timeout")),
        split="/".join(f"{cpu / (sum(spent) or 1) * 100:.0f}" for cpu in spent),
        worker_cores=sum(spent) / elapsed,
        load=started_load,
        others=max(0.0, others),
    )
    print(run.line(), flush=True)
    return run


def scaling_lines(one: list[Run], two: list[Run]) -> list[str]:
    """Return the ratio line and the one-line verdict of the scaling runs."""
    ratio = statistics.mean(run.rate for run in two) / statistics.mean(run.rate for run in one)
    errors = sum(run.errors for run in [*one, *two])
    passed = ratio >= BAR_RATIO and errors == 0
    return [
        f"ratio mean(B)/mean(A): {ratio:.2f}x (B {statistics.mean(run.rate for run in two):.0f} req/s, "
        f"A {statistics.mean(run.rate for run in one):.0f} req/s, {len(two)} + {len(one)} runs), errors {errors}",
        f"verdict: {'PASS' if passed else 'FAIL'} (bar: B/A >= {BAR_RATIO}x with no errors)",
    ]


def trainer_listed(url: str, pid: int) -> bool:
    """Tell whether GET /fleet lists the trainer with this pid."""
    return pid in [trainer["pid"] for trainer in requests.get(f"{url}/fleet", timeout=10).json()["trainers"]]


def get_job(url: str, job_id: str) -> dict:
    """Return a job as the API reports it."""
    response = requests.get(f"{url}/jobs/{job_id}", timeout=30)
    response.raise_for_status()
    return response.json()


@contextlib.contextmanager
def training_job(url: str) -> Iterator[dict]:
    """Start the retrain job through `url`, yield it once its first epoch is done, then cancel it."""
    response = requests.post(f"{url}/retrain", headers=AUTH, json=RETRAIN, timeout=90)
    if response.status_code != 202:
        raise RuntimeError(f"POST /retrain answered {response.status_code}: {response.text[:500]}")
    job_id = response.json()["job_id"]
    started = time.monotonic()
    try:
        while not ((job := get_job(url, job_id))["status"] == "running" and (job.get("epoch") or 0) >= 1):
            if job["status"] not in UNFINISHED:
                raise RuntimeError(f"the job ended before its first epoch: {job['status']}, {job.get('error')}")
            if time.monotonic() - started > FIRST_EPOCH_SECONDS:
                raise RuntimeError(f"the job did not finish an epoch within {FIRST_EPOCH_SECONDS} s: {job}")
            time.sleep(0.5)
        job["first_epoch_seconds"] = time.monotonic() - started
        yield job
    finally:
        cancel(url, job_id)


def job_process(job: dict) -> int | None:
    """Return the pid of a job's process when it runs on this host ("worker" is host:pid), else None."""
    host, _, pid = (job.get("worker") or "").rpartition(":")
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def job_cores(job: dict) -> str:
    """Return the cores a job's process may run on, e.g. "1" or "0, 1", for the report."""
    pid = job_process(job)
    try:
        return ", ".join(map(str, sorted(os.sched_getaffinity(pid)))) if pid else "unknown"
    except ProcessLookupError:
        return "unknown (it had ended)"


def process_cpu_seconds(pid: int | None) -> float:
    """Return a process's CPU time so far (all its threads), or NaN when it is unknown or gone."""
    try:
        return cpu_seconds(pid) if pid else math.nan
    except OSError:
        return math.nan


def cancel(url: str, job_id: str) -> None:
    """Cancel a job (an ended job is left as it is); kill its local runner if it is still alive.

    A fleet job's process is the trainer's child, which ends with the trainer; a local job runs in its own session.
    """
    response = requests.post(f"{url}/jobs/{job_id}/cancel", headers=AUTH, timeout=60)
    if response.status_code not in (200, 409):
        print(f"cancel answered {response.status_code}: {response.text[:300]}", file=sys.stderr)
    pid = job_process(get_job(url, job_id))
    with contextlib.suppress(OSError):  # it ended: nothing to do
        if pid is not None and RUNNER_MODULE in Path(f"/proc/{pid}/cmdline").read_text():
            os.kill(pid, signal.SIGKILL)  # a cancel that did not stop it: it must not outlive the benchmark


def while_training(
    mode: str, url: str, load: Load, connections: int, seconds: float, groups: list[list[int]]
) -> tuple[Run, Run, str]:
    """Measure /predict idle and while a retrain job trains; return both runs and how the job went."""
    idle = measure(f"{mode}: idle", url, load, connections, seconds, groups)
    with training_job(url) as job:
        pid, cores = job_process(job), job_cores(job)
        used, started = process_cpu_seconds(pid), time.monotonic()
        training = measure(f"{mode}: job training", url, load, connections, seconds, groups)
        job_load = (process_cpu_seconds(pid) - used) / (time.monotonic() - started)
        after = get_job(url, job["id"])
    still = "trained throughout" if after["status"] == "running" else f"ended {after['status']} meanwhile"
    note = (
        f"first epoch after {job['first_epoch_seconds']:.0f} s; epoch {job['epoch']} -> {after['epoch']}, {still}; "
        f"the job's process on cores {cores}, using {job_load:.2f} cores during the run"
    )
    return idle, training, note


def scaling(args: argparse.Namespace, load: Load, one: str, two: str, replicas: list[localfleet.Server]) -> list[str]:
    """Measure layouts A and B in the order A B B A per round; return the ratio and verdict lines."""
    groups = [worker_pids(server.process.pid) for server in replicas]
    if args.warm_up > 0:
        wrk(two, load.script, load.bodies, args.connections, args.warm_up)  # through both replicas
    runs: dict[str, list[Run]] = {"A": [], "B": []}
    names = {
        "A": f"A: 1 replica, core {args.cores[0]}",
        "B": f"B: 2 replicas, cores {args.cores[0]} and {args.cores[1]}",
    }
    for layout in "ABBA" * args.rounds:
        url = one if layout == "A" else two
        runs[layout].append(measure(names[layout], url, load, args.connections, args.seconds, groups))
    return scaling_lines(runs["A"], runs["B"])


def fleet_part(args: argparse.Namespace, folder: Path, load: Load) -> tuple[list[str], tuple[Run, Run, str]]:
    """Run the fleet: the scaling runs, then idle against training with the trainer on the second core."""
    first, second = args.cores
    models = folder / "models-fleet"
    shutil.copytree(args.model_dir, models)
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(localfleet.postgres(folder / "postgres", durable=False))
        queue = stack.enter_context(localfleet.redis(folder / "redis"))
        settings = Settings(model_dir=models, data_dir=folder / "data-fleet", admin_token=TOKEN, mnist_path=args.mnist)
        env = localfleet.fleet_env(database.url or "", queue.url or "", settings, workers=1)
        replicas = [
            stack.enter_context(api_server(env, logs / f"replica-{number}.log", core))
            for number, core in ((1, first), (2, second))
        ]
        urls = [server.url or "" for server in replicas]
        one = stack.enter_context(localfleet.nginx(folder / "nginx-one", urls[:1])).url or ""
        two = stack.enter_context(localfleet.nginx(folder / "nginx-two", urls)).url or ""
        print(
            f"\n1. scaling through nginx (deploy/nginx.conf, not pinned), 1 gunicorn worker per replica; wrk -t1 "
            f"(not pinned), {args.connections} connections, {args.seconds:.0f} s per run, order A B B A x "
            f"{args.rounds}\n{COLUMNS}\n{HEADER}",
            flush=True,
        )
        verdict = scaling(args, load, one, two, replicas)
        print("\n".join(verdict), flush=True)

        pin(replicas[1].process.pid, first)
        placed = [sorted(cores_of(server.process.pid)) for server in replicas]
        if placed != [[first], [first]]:
            raise RuntimeError(f"the replicas run on cores {placed}, not on core {first} only")
        worker = stack.enter_context(
            localfleet.running(
                pinned(second, localfleet.local_command(localfleet.TRAINER_COMMAND)), env=env, log=logs / "trainer.log"
            )
        )
        listed = functools.partial(trainer_listed, two, worker.pid)
        localfleet.wait_for(listed, "the trainer", worker, logs / "trainer.log", TRAINER_START_SECONDS)
        print(
            f"\n2. serving while a job trains: POST /retrain {RETRAIN}, cancelled after the run; wrk -t1, "
            f"{args.training_connections} connections, {args.seconds:.0f} s per run\n"
            f"fleet: both replicas (1 worker each) on core {first}, the trainer on core {second}, "
            f"nginx in front of both\n{HEADER}",
            flush=True,
        )
        groups = [worker_pids(server.process.pid) for server in replicas]
        measured = while_training("fleet", two, load, args.training_connections, args.seconds, groups)
        print(f"  ({measured[2]})", flush=True)
    return verdict, measured


def single_host_part(args: argparse.Namespace, folder: Path, load: Load) -> tuple[Run, Run, str]:
    """Run one gunicorn with its default workers, jobs as local processes; measure idle against training."""
    models = folder / "models-single"
    shutil.copytree(args.model_dir, models)
    env = {
        "MODEL_DIR": str(models),
        "DATA_DIR": str(folder / "data-single"),
        "ADMIN_TOKEN": TOKEN,
        "MNIST_PATH": args.mnist,
        "DATABASE_URL": "",  # empty is unset: SQLite in DATA_DIR and a process per job
        "REDIS_URL": "",
    }
    with api_server(env, folder / "logs" / "single-host.log") as server:
        groups = [[pid] for pid in worker_pids(server.process.pid)]
        print(
            f"single host: one gunicorn, {len(groups)} workers, and the job as a local process, none pinned "
            f"(cores {', '.join(map(str, sorted(os.sched_getaffinity(0))))}), no nginx",
            flush=True,
        )
        if args.warm_up > 0:
            wrk(server.url or "", load.script, load.bodies, args.training_connections, args.warm_up)
        measured = while_training(
            "single host", server.url or "", load, args.training_connections, args.seconds, groups
        )
        print(f"  ({measured[2]})", flush=True)
    return measured


def training_table(cores: list[int], fleet: tuple[Run, Run, str], single: tuple[Run, Run, str]) -> list[str]:
    """Return the side-by-side p99 idle / while training lines of both modes."""
    lines = [f"{'p99 of /predict':44s} {'idle':>8s} {'training':>9s} {'x':>6s} {'req/s idle':>11s} {'training':>9s}"]
    for name, (idle, training, _) in (
        (f"fleet (replicas on {cores[0]}, trainer on {cores[1]})", fleet),
        (f"single host (workers and job on {cores[0]}, {cores[1]})", single),
    ):
        lines.append(
            f"{name:44s} {idle.p99_ms:6.1f}ms {training.p99_ms:7.1f}ms {training.p99_ms / idle.p99_ms:5.2f}x "
            f"{idle.rate:11.0f} {training.rate:9.0f}"
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fleet_scaling",
        description="One API replica against two behind nginx (each pinned to its own core), then /predict p99 "
        "idle against while a retrain job trains, in the fleet and on a single host. Needs "
        f"`{localfleet.INSTALL_COMMAND}`, `{WRK_INSTALL}`, MNIST_PATH, and 2 cores.",
    )
    parser.add_argument("--seconds", type=float, default=15, help="length of each measured run (default %(default)s)")
    parser.add_argument(
        "--warm-up",
        type=float,
        default=3,
        help="seconds of load before the first run of a server (default %(default)s)",
    )
    parser.add_argument(
        "--connections", type=int, default=16, help="wrk connections in the scaling runs (default %(default)s)"
    )
    parser.add_argument(
        "--training-connections",
        type=int,
        default=8,
        help="wrk connections in the idle and training runs (default %(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of A B B A scaling runs (default %(default)s)")
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models", help="copied, never written to")
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.warm_up < 0 or args.connections < 1 or args.training_connections < 1 or args.rounds < 1:
        parser.error("--seconds must be at least 1, --warm-up at least 0, connections and rounds at least 1")
    args.cores = sorted(os.sched_getaffinity(0))[:2]
    mnist = Settings().mnist_path
    args.mnist = str(Path(mnist).resolve()) if mnist else ""  # the servers run from the repo root
    missing = localfleet.missing_binaries() + [name for name in ("wrk", "taskset") if shutil.which(name) is None]
    if missing:
        parser.error(f"missing {', '.join(missing)}: {localfleet.INSTALL_COMMAND}; {WRK_INSTALL}")
    if len(args.cores) < 2:
        parser.error("the scaling runs pin two replicas to two cores, and this process may use only one")
    if not args.mnist:
        parser.error("set MNIST_PATH to the MNIST .npz the training job reads, e.g. ../shared/data/mnist_subset.npz")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Measure one replica against two, then serving while a job trains, in the fleet and on one host."""
    args = parse_args(argv)
    load_at_start = os.getloadavg()
    started = time.monotonic()
    print(
        f"{os.cpu_count()} cores, load average {' '.join(f'{value:.2f}' for value in load_at_start)} (1, 5, 15 min) "
        f"at the start; images: benchmarks/samples/, in turn; MNIST_PATH={args.mnist}",
        flush=True,
    )
    with server_folder("digitlab-fleet-scaling-") as folder:
        load = Load(*write_load(folder))
        verdict, fleet = fleet_part(args, folder, load)
        single = single_host_part(args, folder, load)
    print("\n" + "\n".join(training_table(args.cores, fleet, single)))
    print(
        f"\nload average {' '.join(f'{value:.2f}' for value in os.getloadavg())} at the end; "
        f"{time.monotonic() - started:.0f} s in all"
    )
    print("\n".join(verdict))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fair under saturation: many more keep-alive clients than threads, next to a few, on the real server.

    MNIST_PATH=../shared/data/mnist_subset.npz .venv/bin/python -m benchmarks.saturation

Starts gunicorn with backend/gunicorn.conf.py on backend.wsgi:app (the shipped model, a temp
DATA_DIR), warms it up, then runs wrk (Debian package `wrk`) with 8 and with 64 keep-alive
connections in alternation (8, 64, 64, 8 by default) on the same server. Every connection posts the
user-style sample images of benchmarks/samples/ to /predict in turn. wrk opens its connections all
at once, so each run also tests how connections that arrive while every thread is busy get in.
Per run: req/s; mean, p50, p99 and max latency (with N clients that each wait for their answer, the
mean is about N / req/s however they are served: a p50 far below it means some clients wait while
others are answered); requests slower than 1 s; timeouts (wrk --timeout, 2 s) and other errors; how
the workers shared the CPU (lopsided: connections piled onto one worker); the 1-minute load average
when the run started (neighbours on a shared machine move the figures). The bar: with many
clients p99 <= 250 ms, no request over 1 s, no timeouts or errors, and req/s at least 0.9 of the
few-client figure. `--gunicorn-args` tries other settings, e.g.
"--keep-alive 0" or "--worker-class gevent".
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.make_samples import load_samples
from benchmarks.serving_speed import BOUNDARY, multipart
from tests.support.servers import cpu_seconds, gunicorn, worker_pids

SLOW_SECONDS = 1.0
WRK_TIMEOUT_SECONDS = 2
BAR_P99_MS = 250.0
BAR_RATE_RATIO = 0.9

# init() reads one multipart body per file named after `--`; request() cycles through them. done()
# finds the share of requests up to 1 s by bisecting latency:percentile() (wrk exposes no counts).
LUA_SCRIPT = """
local requests_ = {}
local turn = 0

init = function(args)
  for _, path in ipairs(args) do
    local file = assert(io.open(path, "rb"))
    local body = file:read("*a")
    file:close()
    table.insert(requests_, wrk.format("POST", "/predict", {["Content-Type"] = "%(content_type)s"}, body))
  end
end

request = function()
  turn = turn %% #requests_ + 1
  return requests_[turn]
end

done = function(summary, latency, requests)
  local errors = summary.errors
  local slow = 0
  if latency.max > %(slow_us)d then
    local low, high = 0, 100
    for _ = 1, 50 do
      local middle = (low + high) / 2
      if latency:percentile(middle) <= %(slow_us)d then low = middle else high = middle end
    end
    -- latencies past the timeout are not recorded: they count as timeouts instead
    slow = math.floor((1 - low / 100) * (summary.requests - errors.timeout) + 0.5)
  end
  io.write(string.format("saturation-result requests=%%d duration_us=%%d mean_us=%%d p50_us=%%d " ..
                         "p99_us=%%d max_us=%%d slow=%%d connect=%%d read=%%d write=%%d status=%%d timeout=%%d\\n",
                         summary.requests, summary.duration, latency.mean, latency:percentile(50),
                         latency:percentile(99), latency.max, slow, errors.connect, errors.read, errors.write,
                         errors.status, errors.timeout))
end
"""


@dataclass
class Run:
    """One wrk run's figures."""

    clients: int
    rate: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    slow: int
    timeouts: int
    errors: int
    cpu_split: str
    load: float

    def line(self) -> str:
        """Format the run as one table row."""
        return (
            f"{self.clients:7d} {self.rate:7.0f} {self.mean_ms:7.1f} {self.p50_ms:7.1f} {self.p99_ms:7.1f} "
            f"{self.max_ms:8.1f} "
            f"{self.slow:6d} {self.timeouts:8d} {self.errors:6d}  {self.cpu_split:>7s}  {self.load:4.1f}"
        )


HEADER = (
    f"{'clients':>7s} {'req/s':>7s} {'mean ms':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>8s} {'>1 s':>6s} "
    f"{'timeouts':>8s} {'errors':>6s}  {'split':>7s}  load"
)


def write_load(folder: Path) -> tuple[Path, list[Path]]:
    """Write the wrk Lua script and one multipart body per sample image into `folder`."""
    bodies = []
    for _, _, name, image in load_samples():
        path = folder / f"{name}.body"
        path.write_bytes(multipart(image))
        bodies.append(path)
    script = folder / "saturation.lua"
    script.write_text(
        LUA_SCRIPT % {"content_type": f"multipart/form-data; boundary={BOUNDARY}", "slow_us": int(SLOW_SECONDS * 1e6)}
    )
    return script, bodies


def wrk(url: str, script: Path, bodies: list[Path], clients: int, seconds: float) -> dict[str, int]:
    """Run wrk with `clients` keep-alive connections for `seconds`; return the figures its done() hook printed."""
    command = [
        "wrk",
        "-t1",
        f"-c{clients}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={WRK_TIMEOUT_SECONDS}s",
        "-s",
        str(script),
        f"{url}/predict",
        "--",
        *map(str, bodies),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = re.search(r"saturation-result (.*)", output)
    if not found:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    return {key: int(value) for key, value in (pair.split("=") for pair in found.group(1).split())}


def measure(url: str, master_pid: int, script: Path, bodies: list[Path], clients: int, seconds: float) -> Run:
    """Run one wrk load against the server and read the workers' CPU split around it."""
    workers = worker_pids(master_pid)
    before = [cpu_seconds(pid) for pid in workers]
    load = os.getloadavg()[0]
    result = wrk(url, script, bodies, clients, seconds)
    spent = [cpu_seconds(pid) - used for pid, used in zip(workers, before)]
    split = "/".join(f"{cpu / (sum(spent) or 1) * 100:.0f}" for cpu in spent)
    ms = {f"{name}_ms": result[f"{name}_us"] / 1000 for name in ("mean", "p50", "p99", "max")}
    return Run(
        clients=clients,
        rate=result["requests"] / (result["duration_us"] / 1e6),
        **ms,
        slow=result["slow"],
        timeouts=result["timeout"],
        errors=sum(result[kind] for kind in ("connect", "read", "write", "status")),
        cpu_split=split,
        load=load,
    )


def verdict(runs: list[Run]) -> list[str]:
    """Check the bar on the runs with the most clients against those with the fewest; return report lines."""
    few, many = min(run.clients for run in runs), max(run.clients for run in runs)
    crowd = [run for run in runs if run.clients == many]
    ratio = statistics.median(run.rate for run in crowd) / statistics.median(
        run.rate for run in runs if run.clients == few
    )
    worst_p99 = max(run.p99_ms for run in crowd)
    slow = sum(run.slow for run in crowd)
    failures = sum(run.timeouts + run.errors for run in crowd)
    checks = [
        (f"{many}-client p99, worst run", f"{worst_p99:.1f} ms", f"<= {BAR_P99_MS:.0f} ms", worst_p99 <= BAR_P99_MS),
        (f"{many}-client requests over {SLOW_SECONDS:.0f} s", f"{slow}", "0", slow == 0),
        (f"{many}-client timeouts and errors", f"{failures}", "0", failures == 0),
        (f"req/s {many} / {few} clients (medians)", f"{ratio:.2f}", f">= {BAR_RATE_RATIO}", ratio >= BAR_RATE_RATIO),
    ]
    return [
        f"{name:34s}: {value:>9s}   (bar: {bar}) {'ok' if passed else 'MISSED'}" for name, value, bar, passed in checks
    ]


def run_all(args: argparse.Namespace, folder: Path) -> list[Run]:
    """Start the server with a DATA_DIR in `folder`, warm it up and measure each run in order, printing as it goes."""
    script, bodies = write_load(folder)
    env = {"MODEL_DIR": args.model_dir, "DATA_DIR": str(folder / "data")}
    print(
        f"{len(bodies)} user-style images from benchmarks/samples, wrk -t1, {args.seconds:.0f} s per run, "
        f"gunicorn -c backend/gunicorn.conf.py {args.gunicorn_args} backend.wsgi:app".replace("  ", " ")
    )
    with gunicorn("backend.wsgi:app", env, extra_args=shlex.split(args.gunicorn_args)) as (url, master):
        if args.warm_up > 0:
            wrk(url, script, bodies, min(args.connections), args.warm_up)
        print(HEADER)
        runs = []
        for clients in args.connections:
            runs.append(measure(url, master.pid, script, bodies, clients, args.seconds))
            print(runs[-1].line(), flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    """Run the alternating few/many-client wrk loads against a fresh server and print the figures and the bar."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-dir", default="models")
    parser.add_argument(
        "--connections", type=int, nargs="+", default=[8, 64, 64, 8], help="wrk connections per run, in order"
    )
    parser.add_argument("--seconds", type=float, default=15, help="length of each run")
    parser.add_argument("--warm-up", type=float, default=3, help="seconds of load before the first measured run")
    parser.add_argument("--gunicorn-args", default="", help="extra gunicorn options, e.g. '--keep-alive 0'")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="saturation-") as folder:
        runs = run_all(args, Path(folder))
    if len(set(run.clients for run in runs)) > 1:
        print("\n".join(verdict(runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

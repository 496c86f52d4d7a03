"""Measuring processes for the benchmarks: wall time, peak RSS, CPU, and the servers they talk to.

Every server here is started as a separate process on 127.0.0.1, so the client under test
and the server never share a GIL. Each measured client runs as a child process and is
reaped with ``os.wait4``, whose resource usage gives that child's own peak RSS (on Linux
the maximum over the child and any descendants it waited for).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
TM_EXPORT = VENV_BIN / "tm-export"
PYTHON = Path(sys.executable)

#: Scratch space for outputs, generated bodies and logs; git-ignored.
WORK = BENCH / ".work"

#: Seconds a server gets to write its ready file.
SERVER_START_TIMEOUT = 120.0

#: The only host any benchmark sends requests to.
LOOPBACK = "127.0.0.1"


@dataclass(slots=True)
class Source:
    """The tm-export code that the benchmarks run: the work tree, or a commit's snapshot."""

    command: list[str]
    env: dict[str, str]
    label: str


SOURCE = Source([str(TM_EXPORT)], {}, "work tree")


def use_source(revision: str | None) -> Source:
    """Run tm-export (and its mock server) from ``revision``, or from the work tree for None.

    A revision is exported with ``git archive`` to ``.work/source/SHA`` and put first on
    PYTHONPATH, so edits in the work tree during a long benchmark do not change what runs.
    """
    if revision is None:
        compile_package(ROOT)
        SOURCE.command, SOURCE.env = [str(TM_EXPORT)], {}
        SOURCE.label = f"{git_commit()} (work tree)"
        return SOURCE
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", revision + "^{commit}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    folder = WORK / "source" / sha
    if not (folder / "tm_export").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", sha, "tm_export"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    compile_package(folder)
    SOURCE.command = [str(PYTHON), "-m", "tm_export"]
    SOURCE.env = {"PYTHONPATH": str(folder)}
    SOURCE.label = sha[:7]
    return SOURCE


def compile_package(folder: Path) -> None:
    """Write the bytecode of ``folder/tm_export``, as installing a package does.

    Where PYTHONDONTWRITEBYTECODE is set, as on the machine of docs/benchmarks.md, no
    import writes it, and every start would compile the package again (about 70 ms).
    """
    subprocess.run(
        [str(PYTHON), "-m", "compileall", "-q", str(folder / "tm_export")],
        check=True,
        stdout=subprocess.DEVNULL,
    )


@dataclass(slots=True)
class Measurement:
    """One run of one command: how long it took and what it used."""

    wall_s: float
    peak_rss_mb: float
    user_s: float
    system_s: float
    exit_code: int
    server_cpu_s: float | None = None
    other_cpu_s: float | None = None
    """CPU seconds that other processes used on the machine during the run."""
    started_monotonic: float = 0.0
    """``time.monotonic()`` just before the child was started, to compare with server logs."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class CommandFailed(RuntimeError):
    """A measured command exited with a status other than the expected one."""


def run_measured(
    command: Sequence[str | os.PathLike[str]],
    *,
    log: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdout: Path | None = None,
    stdin_text: str | None = None,
    timeout_s: float = 900.0,
    server_pid: int | None = None,
    expect_exit: Sequence[int] | None = (0,),
    on_start: Callable[[int], None] | None = None,
) -> Measurement:
    """Run ``command`` as a child process and measure it.

    stderr goes to ``log`` and stdout to ``stdout`` (or into the log). A command still
    running after ``timeout_s`` gets SIGKILL, which shows up as exit code -9 and
    ``extra["timed_out"]``.
    ``server_pid`` names a server process whose CPU seconds during the run are recorded too.

    The command runs under ``launch.py``, which reports its own peak RSS (see there why).
    With ``on_start`` it runs directly instead: ``on_start`` is called with its pid before
    ``stdin_text`` is written, so a command held on stdin (``sh -c 'read go; exec ...'``)
    can be named in a kill rule first. Its peak RSS then includes the RSS of this process
    at the fork, so such runs are for wall time and exit codes only.

    Raises:
        CommandFailed: the exit code is not in ``expect_exit`` (None accepts any).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    arguments = [str(part) for part in command]
    report = log.with_name(log.name + ".rusage.json")
    report.unlink(missing_ok=True)
    launched = arguments if on_start else [str(PYTHON), "-I", str(BENCH / "launch.py")]
    if not on_start:
        launched += [str(report), *arguments]
    environment = {**os.environ, **SOURCE.env, **(env or {})}
    server_before = process_cpu_seconds(server_pid) if server_pid else None
    busy_before = machine_busy_seconds()

    with log.open("wb") as err, (stdout or log).open("ab" if stdout is None else "wb") as out:
        started_monotonic = time.monotonic()
        started = time.perf_counter()
        process = subprocess.Popen(
            launched,
            cwd=cwd,
            env=environment,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        # Under the launcher, SIGTERM makes it kill the command and still write its report.
        stop = _kill_group if on_start else _terminate
        fired = threading.Event()

        def time_out(pid: int = process.pid) -> None:
            fired.set()
            stop(pid)

        timer = threading.Timer(timeout_s, time_out)
        timer.start()
        try:
            if on_start is not None:
                on_start(process.pid)
            if stdin_text is not None:
                assert process.stdin is not None
                process.stdin.write(stdin_text.encode())
                process.stdin.close()
        except BaseException:
            _kill_group(process.pid)
            os.wait4(process.pid, 0)
            timer.cancel()
            raise
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
    busy = machine_busy_seconds() - busy_before
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait

    peak_kb, user, system = usage.ru_maxrss, usage.ru_utime, usage.ru_stime
    if not on_start:
        if not report.exists():
            raise CommandFailed(
                f"{shlex.join(arguments)}: the launcher wrote no report (exit status "
                f"{process.returncode}, killed after {timeout_s:.0f} s?); see {log}"
            )
        launched_run = json.loads(report.read_text())
        status, wall = launched_run["status"], launched_run["wall_s"]
        started_monotonic = launched_run["started_monotonic"]
        peak_kb, user, system = (
            launched_run["maxrss_kb"],
            launched_run["user_s"],
            launched_run["system_s"],
        )

    exit_code = os.waitstatus_to_exitcode(status)
    server_cpu = None
    if server_pid and server_before is not None:
        server_cpu = process_cpu_seconds(server_pid) - server_before

    measurement = Measurement(
        wall_s=wall,
        peak_rss_mb=peak_kb / 1024,
        user_s=user,
        system_s=system,
        exit_code=exit_code,
        server_cpu_s=server_cpu,
        other_cpu_s=max(0.0, busy - usage.ru_utime - usage.ru_stime - (server_cpu or 0.0)),
        started_monotonic=started_monotonic,
    )
    measurement.extra["timed_out"] = fired.is_set() and exit_code == -signal.SIGKILL
    if expect_exit is not None and exit_code not in expect_exit:
        tail = log.read_text(errors="replace")[-2000:]
        raise CommandFailed(
            f"{shlex.join(arguments)} exited {exit_code}, expected {list(expect_exit)}; "
            f"last lines of {log}:\n{tail}"
        )
    return measurement


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _kill_group(pid: int) -> None:
    """Send SIGKILL to the process group that ``pid`` leads (the launcher and its command)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def process_cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU seconds a live process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of stat
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """Return the CPU seconds all cores have spent busy since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


#: Seconds ``wait_for_quiet`` may wait before one run, and over one bench invocation.
QUIET_WAIT_PER_RUN_S = 10.0
QUIET_WAIT_TOTAL_S = 120.0
#: CPU use of other processes, in cores, under which the machine counts as quiet.
QUIET_CORES = 0.3

_quiet_waited = 0.0


def wait_for_quiet() -> float:
    """Wait until other processes use less than ``QUIET_CORES``, within a bounded time.

    The machine may be shared, and another process's load slows the client and the
    server. Between runs the benchmark's own servers are idle, so all CPU use measured
    here is someone else's. Returns the load seen last, in cores. The run goes ahead
    after the wait even when the machine is still busy, and its row shows the other load.
    """
    global _quiet_waited
    started = time.monotonic()
    while True:
        before = machine_busy_seconds()
        time.sleep(0.5)
        load = (machine_busy_seconds() - before) / 0.5
        waited = time.monotonic() - started
        if (
            load < QUIET_CORES
            or waited >= QUIET_WAIT_PER_RUN_S
            or _quiet_waited + waited >= QUIET_WAIT_TOTAL_S
        ):
            _quiet_waited += waited
            return load


# --- servers ---------------------------------------------------------------------------


class ServerProcess:
    """A server in its own process that writes a ready file with its URLs once it listens.

    ``with ServerProcess([...], name) as server:`` starts it and stops it with SIGTERM
    (SIGKILL after 10 s) on exit.
    """

    def __init__(self, command: Sequence[str | os.PathLike[str]], name: str) -> None:
        self.name = name
        self.folder = WORK / "servers" / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ready_file = self.folder / "ready.json"
        self.ready_file.unlink(missing_ok=True)
        self.command = [str(part) for part in command] + ["--ready-file", str(self.ready_file)]
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def base_url(self) -> str:
        return str(self.info["base_url"])

    @property
    def api_url(self) -> str:
        return str(self.info["api_url"])

    def __enter__(self) -> ServerProcess:
        log = (self.folder / "server.log").open("wb")
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **SOURCE.env},
        )
        log.close()
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server {self.name} exited {self.process.returncode} before it was ready; "
                    f"see {self.folder / 'server.log'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"server {self.name} wrote no ready file within {SERVER_START_TIMEOUT} s"
                )
            time.sleep(0.05)
        self.info = json.loads(self.ready_file.read_text())
        if not self.base_url.startswith(f"http://{LOOPBACK}:"):
            self.stop()
            raise RuntimeError(f"server {self.name} is not on {LOOPBACK}: {self.base_url}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def get_json(self, path: str) -> Any:
        """GET a control path of this server (below ``base_url``) and return the JSON body."""
        with urllib.request.urlopen(self.base_url + path, timeout=60) as reply:
            return json.loads(reply.read())

    def post_json(self, path: str, body: Any = None, method: str = "POST") -> Any:
        data = json.dumps(body).encode() if body is not None else b""
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())


def mock_server(projects: int, latency_ms: int, name: str) -> ServerProcess:
    """Return the bundled mock Tasking Manager as a server process, started by the tm-export CLI."""
    return ServerProcess(
        [
            *SOURCE.command,
            "mock-server",
            "--host",
            LOOPBACK,
            "--port",
            "0",
            "--projects",
            str(projects),
            "--latency-ms",
            str(latency_ms),
        ],
        name,
    )


def synthetic_server(mode: str, name: str, *options: str) -> ServerProcess:
    """Return one of the benchmark's own servers (``bench/servers.py``) as a server process."""
    return ServerProcess(
        [PYTHON, BENCH / "servers.py", mode, "--host", LOOPBACK, "--port", "0", *options], name
    )


# --- statistics and the machine --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and range of repeated measurements."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values to summarise")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def machine() -> dict[str, Any]:
    """Describe the machine the numbers were measured on."""
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def tool_versions() -> dict[str, str]:
    """Versions of the client libraries that set the speed: tm-export, aiohttp, orjson."""
    from importlib.metadata import version

    return {name: version(name) for name in ("tm-export", "aiohttp", "orjson", "anyio")}


def git_commit() -> str:
    """Return the checked-out commit, with ``+changes`` when the work tree differs from it."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "tm_export"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return commit + ("+changes" if changed else "")


def count_lines(path: Path) -> int:
    """Count the lines of a file without holding it in memory."""
    lines = 0
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines

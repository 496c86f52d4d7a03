"""The workloads W1–W6. Each starts its own servers, measures, and returns a result dict.

A result contains the workload's parameters, the exact commands (with the server's URL
written as ``$API``), one row per subject with medians and ranges, the targets with
met/not met, and notes. ``report.py`` turns results into the benchmarks page.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from harness import (
    BENCH,
    PYTHON,
    SOURCE,
    WORK,
    CommandFailed,
    Measurement,
    ServerProcess,
    Spread,
    count_lines,
    mock_server,
    run_measured,
    synthetic_server,
    wait_for_quiet,
)
from servers import write_tasks_body
from subjects import W1_RECIPE, W1_STREAMS, Delivery, LimitScript, Subject, TmExport, fresh_folder


@dataclass(slots=True)
class Settings:
    """Sizes and repetitions of one bench invocation."""

    runs: int = 5
    quick: bool = False
    peers: Sequence[Subject] = ()
    w1_projects: int = 3000
    w2_projects: int = 600
    w2_latency_ms: int = 20
    w2_concurrency: tuple[int, ...] = (8, 32)
    w3_megabytes: int = 500
    w4_projects: int = 1000
    w5_partitions: int = 100_000
    w5_left: int = 50
    w6_rate: float = 50.0
    w6_seconds: float = 30.0
    w6_runs: int = 1
    notes: list[str] = field(default_factory=list)

    @classmethod
    def quick_settings(cls) -> Settings:
        """Small sizes and one run each, to check that the harness works (about 2 minutes)."""
        return cls(
            runs=1,
            quick=True,
            w1_projects=600,
            w2_projects=150,
            w3_megabytes=50,
            w4_projects=100,
            w5_partitions=10_000,
            w6_seconds=5.0,
        )


def target(name: str, expected: str, measured: str, met: bool | None) -> dict[str, Any]:
    """Return a target as a dict: what was expected, what was measured, and whether it was met."""
    return {"target": name, "expected": expected, "measured": measured, "met": met}


def row(label: str, deliveries: list[Delivery], **columns: Any) -> dict[str, Any]:
    """Summarise repeated runs of one subject into one table row."""
    measurements = [delivery.measurement for delivery in deliveries]
    records = sum(deliveries[0].records.values())
    result: dict[str, Any] = {
        "label": label,
        "runs": len(measurements),
        "wall_s": Spread.of([m.wall_s for m in measurements]).to_json(),
        "records": records,
        "records_by_stream": deliveries[0].records,
        "records_per_s": Spread.of([records / m.wall_s for m in measurements]).to_json(),
        "cpu_s": Spread.of([m.user_s + m.system_s for m in measurements]).to_json(),
        "peak_rss_mb": Spread.of([m.peak_rss_mb for m in measurements]).to_json(),
        "other_cpu_s": Spread.of([m.other_cpu_s or 0.0 for m in measurements]).to_json(),
        "consistent": all(d.records == deliveries[0].records for d in deliveries),
        "timed_out_s": max(
            (m.wall_s for m in measurements if m.extra.get("timed_out")), default=None
        ),
    }
    if measurements[0].server_cpu_s is not None:
        result["server_cpu_s"] = Spread.of([m.server_cpu_s or 0.0 for m in measurements]).to_json()
    if "requests" in measurements[0].extra:
        result["requests"] = measurements[0].extra["requests"]
    result.update(columns)
    return result


def shown(command: Sequence[str], server: ServerProcess | None = None) -> str:
    """Return a command as text, with the server's URL as $API and paths relative to the repo."""
    text = " ".join(command)
    if server is not None:
        text = text.replace(server.api_url, "$API")
    return text.replace(str(PYTHON.parent) + "/", ".venv/bin/").replace(
        str(WORK.parent.parent) + "/", ""
    )


# --- W1 and W2: the project export against the mock ------------------------------------


#: The one concurrency at which a subject without a concurrency setting runs in W2.
SEQUENTIAL_AT = 8


def subject_rows(
    subjects: Sequence[Subject], deliveries: dict[str, list[Delivery]], **columns: Any
) -> list[dict[str, Any]]:
    """Return one row per subject that ran; a sequential subject shows concurrency 1."""
    rows = []
    for subject in subjects:
        runs = deliveries.get(subject.name)
        if not runs:
            continue
        entry = row(subject.name, runs, **columns)
        if subject.sequential:
            entry["concurrency"] = 1
        rows.append(entry)
    return rows


def measure_subjects(
    subjects: Sequence[Subject],
    server: ServerProcess,
    concurrency: int,
    runs: int,
    folder: Path,
    notes: list[str],
) -> dict[str, list[Delivery]]:
    """Run every subject ``runs`` times, interleaved, and count server-side requests.

    An optional subject (a peer) that fails is left out of later runs, with a note.
    Any other failure raises ``CommandFailed``.
    """
    deliveries: dict[str, list[Delivery]] = {subject.name: [] for subject in subjects}
    failed: set[str] = set()
    for run_index in range(runs):
        for subject in subjects:
            if subject.max_runs is not None and run_index >= subject.max_runs:
                continue
            if subject.sequential and concurrency != SEQUENTIAL_AT:
                continue
            if subject.name in failed:
                continue
            server.post_json("/__mock__/reset-log")
            wait_for_quiet()
            try:
                delivery = subject.run(server, concurrency, folder / subject.name)
            except CommandFailed as error:
                if not subject.optional:
                    raise
                failed.add(subject.name)
                first_line = str(error).splitlines()[0]
                notes.append(f"{subject.name} failed at concurrency {concurrency}: {first_line}")
                print(f"  {subject.name} c={concurrency}: failed: {first_line}", flush=True)
                continue
            delivery.measurement.extra["requests"] = len(
                server.get_json("/__mock__/requests")["requests"]
            )
            deliveries[subject.name].append(delivery)
            shown_concurrency = 1 if subject.sequential else concurrency
            records = sum(delivery.records.values())
            print(
                f"  {subject.name} c={shown_concurrency}: {delivery.measurement.wall_s:.2f} s"
                + (f", {records} records" if delivery.records else ""),
                flush=True,
            )
    return deliveries


def expected_counts(server: ServerProcess) -> dict[str, int]:
    counts = server.get_json("/__mock__/counts")
    return {stream: counts[endpoint] for stream, endpoint in W1_STREAMS.items()}


def check_records(rows: list[dict[str, Any]], expected: dict[str, int]) -> list[str]:
    """Mark each row complete or not, and return notes for the rows that are not."""
    notes = []
    for entry in rows:
        delivered = entry["records_by_stream"]
        entry["complete"] = delivered == expected and entry["consistent"]
        if not entry["complete"] and entry.get("timed_out_s"):
            notes.append(
                f"{entry['label']} was stopped after {entry['timed_out_s']:.0f} s; its row "
                "shows the records it had delivered by then and its rate over that time"
            )
        elif not entry["complete"]:
            differing = ", ".join(
                f"{stream} {delivered.get(stream, 0)} of {count}"
                for stream, count in expected.items()
                if delivered.get(stream, 0) != count
            )
            notes.append(
                f"{entry['label']} delivered other record counts than the mock serves: "
                f"{differing or 'counts differ between runs'}"
            )
    return notes


class Probe:
    """``probe.py``: as many requests as tm-export sends, to the heartbeat, and nothing else.

    It runs in the same rounds as the other subjects, so that its floor belongs to the
    same moment as their times on a machine whose speed drifts.
    """

    name = "probe.py"
    max_runs = None
    sequential = False
    optional = False

    def __init__(self, requests: int) -> None:
        self.requests = requests

    def run(self, server: ServerProcess, concurrency: int, folder: Path) -> Delivery:
        fresh_folder(folder)
        command = [str(PYTHON), str(BENCH / "probe.py")]
        command += ["--url", server.api_url + "/system/heartbeat/"]
        command += ["--requests", str(self.requests), "--concurrency", str(concurrency)]
        measurement = run_measured(
            command, log=folder / "stderr.log", stdout=folder / "probe.json", server_pid=server.pid
        )
        measured = orjson.loads((folder / "probe.json").read_bytes())
        measurement.extra.update(p50_ms=measured["p50_ms"])
        return Delivery(measurement, {}, command)


def w1_throughput(settings: Settings) -> dict[str, Any]:
    folder = WORK / "w1"
    subjects: list[Subject] = [TmExport(), LimitScript(), *settings.peers]
    concurrency = 8
    with mock_server(settings.w1_projects, 0, "w1") as server:
        expected = expected_counts(server)
        # The mock computes each project's views on first use; one untimed pass warms it up.
        LimitScript().run(server, concurrency, folder / "warm-up")
        failures: list[str] = []
        deliveries = measure_subjects(
            subjects, server, concurrency, settings.runs, folder, failures
        )
        commands = [shown(runs[0].command, server) for runs in deliveries.values() if runs]

    rows = subject_rows(subjects, deliveries, concurrency=concurrency)
    notes = failures + check_records(rows, expected)
    tm, limit = rows[0], rows[1]
    ratio = tm["records_per_s"]["median"] / limit["records_per_s"]["median"]
    cpu_ratio = limit["cpu_s"]["median"] / tm["cpu_s"]["median"]
    targets = [
        target(
            "W1 records/s ≥ 0.85 × limit script",
            "≥ 0.85",
            f"{ratio:.2f} (CPU time: limit uses {cpu_ratio:.2f} × tm-export's)",
            ratio >= 0.85,
        )
    ]
    peers = [entry for entry in rows[2:] if entry["complete"]]
    if peers:
        fastest = max(peers, key=lambda entry: entry["records_per_s"]["median"])
        peer_ratio = tm["records_per_s"]["median"] / fastest["records_per_s"]["median"]
        targets.append(
            target(
                "W1 records/s ≥ 5 × fastest peer",
                "≥ 5",
                f"{peer_ratio:.2f} × {fastest['label']}",
                peer_ratio >= 5,
            )
        )
    return {
        "name": "W1",
        "recipe": W1_RECIPE.read_text(),
        "title": "Throughput, zero latency",
        "parameters": {
            "mock projects": settings.w1_projects,
            "latency ms": 0,
            "concurrency": concurrency,
            "runs": settings.runs,
        },
        "expected_records": expected,
        "commands": commands,
        "rows": rows,
        "targets": targets,
        "notes": notes,
    }


def w2_latency(settings: Settings) -> dict[str, Any]:
    folder = WORK / "w2"
    subjects: list[Subject] = [TmExport(), LimitScript(), *settings.peers]
    latency = settings.w2_latency_ms
    rows: list[dict[str, Any]] = []
    commands: list[str] = []
    failures: list[str] = []
    with mock_server(settings.w2_projects, latency, "w2") as server:
        expected = expected_counts(server)
        # The untimed pass, which fills the mock's caches, also gives the probe its count.
        server.post_json("/__mock__/reset-log")
        TmExport().run(server, 32, folder / "warm-up")
        probe_subject = Probe(len(server.get_json("/__mock__/requests")["requests"]))
        for concurrency in settings.w2_concurrency:
            deliveries = measure_subjects(
                [subjects[0], probe_subject, *subjects[1:]],
                server,
                concurrency,
                settings.runs,
                folder,
                failures,
            )
            sent = {d.measurement.extra["requests"] for d in deliveries[TmExport.name]}
            if sent != {probe_subject.requests}:
                failures.append(
                    f"c={concurrency}: tm-export sent {sorted(sent)} requests, but the probe "
                    f"sent {probe_subject.requests}, so the probe's floor is for another job"
                )
            measured = subject_rows(subjects, deliveries, concurrency=concurrency)
            probe = row(Probe.name, deliveries[Probe.name], concurrency=concurrency)
            probe["probe"] = True
            probe["p50_ms"] = Spread.of(
                [d.measurement.extra["p50_ms"] for d in deliveries[Probe.name]]
            ).to_json()
            for entry in [*measured, probe]:
                entry["run_concurrency"] = concurrency
                ideal = entry["requests"] * latency / 1000 / entry["concurrency"]
                entry["ideal_s"] = ideal
                entry["wall_over_ideal"] = entry["wall_s"]["median"] / ideal
                rows.append(entry)
            commands += [shown(runs[0].command, server) for runs in deliveries.values() if runs]

    notes = failures + check_records([e for e in rows if not e.get("probe")], expected)
    facts = []
    targets = []
    for concurrency in settings.w2_concurrency:
        at = [entry for entry in rows if entry["run_concurrency"] == concurrency]
        tm = at[0]
        probe = next(entry for entry in at if entry.get("probe"))
        ratio = tm["wall_over_ideal"]
        targets.append(
            target(
                f"W2 c={concurrency} wall ≤ 1.10 × ideal",
                "≤ 1.10" if concurrency == 8 else "reported",
                f"{ratio:.2f} (ideal {tm['ideal_s']:.1f} s, median {tm['wall_s']['median']:.1f} s; "
                f"the probe's floor is {probe['wall_over_ideal']:.2f})",
                ratio <= 1.10 if concurrency == 8 else None,
            )
        )
        facts.append(
            f"c={concurrency}: the probe's median response time is "
            f"{probe['p50_ms']['median']:.1f} ms for a nominal {latency} ms, so no client "
            f"gets below {probe['wall_over_ideal']:.2f} × ideal with this server; tm-export "
            f"takes {tm['wall_s']['median'] / probe['wall_s']['median']:.2f} × the probe's "
            "wall time for the same number of requests"
        )
        peers = [entry for entry in at[2:] if not entry.get("probe") and entry["complete"]]
        if peers:
            fastest = min(peers, key=lambda entry: entry["wall_s"]["median"])
            speedup = fastest["wall_s"]["median"] / tm["wall_s"]["median"]
            targets.append(
                target(
                    f"W2 c={concurrency} ≥ 1.5 × faster than the fastest peer",
                    "≥ 1.5",
                    f"{speedup:.2f} × {fastest['label']}",
                    speedup >= 1.5,
                )
            )
    return {
        "name": "W2",
        "recipe": W1_RECIPE.read_text(),
        "title": f"Latency-bound, {latency:g} ms a response",
        "parameters": {
            "mock projects": settings.w2_projects,
            "latency ms": latency,
            "concurrency": ", ".join(str(c) for c in settings.w2_concurrency),
            "runs": settings.runs,
        },
        "expected_records": expected,
        "facts": facts,
        "commands": list(dict.fromkeys(commands)),
        "rows": rows,
        "targets": targets,
        "notes": notes,
    }


# --- W5 and W6: the synthetic statistics server --------------------------------------

RANGE_RECIPE = """\
version: 1
instance: {{concurrency: {concurrency}, rate_limit: {rate}/s}}
output: out
streams:
  statistics:
    endpoint: project_statistics
    params: {{project_id: {{range: [1, {last}]}}}}
"""


def tm_export_run(folder: Path, server: ServerProcess) -> list[str]:
    """Return the command that runs (or resumes) ``folder/recipe.yaml`` against ``server``."""
    return [*SOURCE.command, "run", "recipe.yaml", "--base-url", server.api_url, "--quiet"]


def held(command: list[str]) -> list[str]:
    """Wrap a command in a shell that waits for a line on stdin, then execs it (same pid)."""
    return ["sh", "-c", 'read go; exec "$@"', "sh", *command]


def committed_partitions(manifest: Path, stream: str) -> set[str]:
    """Return the ids of the partitions of ``stream`` that the manifest records as finished."""
    finished = set()
    for line in manifest.read_bytes().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # the unfinished last line a kill can leave
        if entry.get("t") == "part" and entry.get("s") == stream:
            finished.add(entry["p"])
    return finished


def project_id_of(path: str) -> int:
    """Return N of a request path ``/api/v2/projects/N/...``."""
    return int(path.split("/")[4])


def w5_resume(settings: Settings) -> dict[str, Any]:
    folder = WORK / "w5"
    partitions, left_pending = settings.w5_partitions, settings.w5_left
    recipe = RANGE_RECIPE.format(concurrency=8, rate=100000, last=partitions)
    rows: list[dict[str, Any]] = []
    with synthetic_server("statistics", "w5") as server:
        # Build the state: run the recipe and kill it when the server receives the request
        # for the partition `left_pending` before the end. Partitions in flight or not yet
        # committed at that moment stay pending too.
        build = fresh_folder(folder / "build")
        (build / "recipe.yaml").write_text(recipe)
        command = tm_export_run(build, server)
        kill_rule = {"after": partitions - left_pending}
        built = run_measured(
            held(command),
            cwd=build,
            log=build / "stderr.log",
            stdin_text="go\n",
            expect_exit=(-9,),
            on_start=lambda pid: server.post_json("/__bench__/kill", {**kill_rule, "pid": pid}),
        )
        manifest = build / "out" / "runs" / "0001" / "manifest.jsonl"
        done = committed_partitions(manifest, "statistics")
        every = {orjson.dumps({"project_id": n}).decode() for n in range(1, partitions + 1)}
        pending = {orjson.loads(p)["project_id"] for p in every - done}
        print(
            f"  built in {built.wall_s:.1f} s: {len(done)} committed, {len(pending)} pending",
            flush=True,
        )

        # The start-up cost of any run: a fresh one-partition export.
        baseline_runs = []
        for index in range(settings.runs):
            fresh = fresh_folder(folder / f"fresh-{index}")
            (fresh / "recipe.yaml").write_text(
                RANGE_RECIPE.format(concurrency=8, rate=100000, last=1)
            )
            server.post_json("/__bench__/reset")
            wait_for_quiet()
            measurement = run_measured(
                tm_export_run(fresh, server), cwd=fresh, log=fresh / "stderr.log"
            )
            log = server.get_json("/__bench__/requests")
            measurement.extra.update(first_request_s(log, measurement))
            baseline_runs.append(measurement)

        resumes = []
        for index in range(settings.runs):
            run = folder / f"resume-{index}"
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(build, run)
            server.post_json("/__bench__/reset")
            wait_for_quiet()
            measurement = run_measured(tm_export_run(run, server), cwd=run, log=run / "stderr.log")
            log = server.get_json("/__bench__/requests")
            measurement.extra.update(first_request_s(log, measurement))
            requested = [
                project_id_of(path) for path in log["paths"] if path.startswith("/api/v2/projects/")
            ]
            committed_ids = {orjson.loads(p)["project_id"] for p in done}
            measurement.extra.update(
                requests=len(requested),
                again=len(set(requested) & committed_ids),
                missed=len(pending - set(requested)),
                repeated=len(requested) - len(set(requested)),
            )
            resumes.append(measurement)
            shutil.rmtree(run)
            print(
                f"  resume: first export request after "
                f"{measurement.extra['first_export_s']:.2f} s, {len(requested)} requests",
                flush=True,
            )

    for label, measured in (
        ("tm-export, fresh 1-partition run", baseline_runs),
        ("tm-export, resume", resumes),
    ):
        entry = timing_row(label, measured)
        entry["first_request_s"] = Spread.of(
            [m.extra["first_request_s"] for m in measured]
        ).to_json()
        entry["first_export_s"] = Spread.of([m.extra["first_export_s"] for m in measured]).to_json()
        rows.append(entry)

    first = rows[1]["first_export_s"]["median"]
    worst_again = max(m.extra["again"] for m in resumes)
    requests_ok = all(
        m.extra["requests"] == len(pending) and not m.extra["missed"] and not m.extra["repeated"]
        for m in resumes
    )
    return {
        "name": "W5",
        "title": f"Resume after {len(done):,} committed partitions",
        "parameters": {
            "partitions": partitions,
            "committed": len(done),
            "pending": len(pending),
            "runs": settings.runs,
        },
        "recipe": recipe,
        "rows": rows,
        "facts": [
            f"State built by running the recipe and killing tm-export (SIGKILL from the server) "
            f"when request {partitions - left_pending:,} arrived, after {built.wall_s:.1f} s; "
            f"{len(pending)} partitions were left pending (in flight or not yet committed).",
            f"Resume requests: {', '.join(str(m.extra['requests']) for m in resumes)} "
            f"(pending: {len(pending)}); committed partitions requested again: "
            f"{', '.join(str(m.extra['again']) for m in resumes)}.",
            "Time to the first export request is counted from the start of the tm-export "
            "process to the arrival of its first /projects/ request at the server, with "
            "CLOCK_MONOTONIC on both sides. It includes starting Python and importing "
            "tm-export, which the fresh one-partition run shows on its own.",
        ],
        "commands": [
            shown(command, server) + "    # in the run folder, with recipe.yaml below",
        ],
        "targets": [
            target(
                "W5 time to first new request ≤ 1 s",
                "≤ 1 s",
                f"{first:.2f} s (fresh run: {rows[0]['first_export_s']['median']:.2f} s)",
                first <= 1.0,
            ),
            target(
                "W5 committed partitions requested again",
                "0, and requests = pending",
                f"{worst_again}; requests {'=' if requests_ok else '≠'} pending ({len(pending)})",
                worst_again == 0 and requests_ok,
            ),
        ],
        "notes": [],
    }


def first_request_s(log: dict[str, Any], measurement: Measurement) -> dict[str, float]:
    """Return the seconds from the process start to its first request and first export request."""
    started = measurement.started_monotonic
    exports = [
        time
        for time, path in zip(log["times"], log["paths"], strict=True)
        if path.startswith("/api/v2/projects/")
    ]
    return {
        "first_request_s": log["times"][0] - started if log["times"] else math.nan,
        "first_export_s": exports[0] - started if exports else math.nan,
    }


def timing_row(label: str, measurements: list[Measurement]) -> dict[str, Any]:
    """Summarise runs that are judged by time and memory, not by records delivered."""
    return {
        "label": label,
        "concurrency": 8,
        "runs": len(measurements),
        "wall_s": Spread.of([m.wall_s for m in measurements]).to_json(),
        "cpu_s": Spread.of([m.user_s + m.system_s for m in measurements]).to_json(),
        "peak_rss_mb": Spread.of([m.peak_rss_mb for m in measurements]).to_json(),
        "other_cpu_s": Spread.of([m.other_cpu_s or 0.0 for m in measurements]).to_json(),
        "records": 0,
    }


def request_windows(times: list[float]) -> dict[str, float]:
    """Return the maximum number of requests in one-second windows, fixed and sliding.

    Fixed windows start at the first request and follow each other; a sliding window may
    start at any request.
    """
    times = sorted(times)
    first = times[0]
    fixed: dict[int, int] = {}
    for time in times:
        second = int(time - first)
        fixed[second] = fixed.get(second, 0) + 1
    sliding = 0
    end = 0
    for start, time in enumerate(times):
        while end < len(times) and times[end] < time + 1.0:
            end += 1
        sliding = max(sliding, end - start)
    span = times[-1] - first
    return {
        "max_fixed": max(fixed.values()),
        "max_sliding": sliding,
        "mean_rate": (len(times) - 1) / span if span > 0 else math.nan,
    }


def w6_rate(settings: Settings) -> dict[str, Any]:
    folder = WORK / "w6"
    rate = settings.w6_rate
    # The heartbeat is one request of the budget too.
    last = round(rate * settings.w6_seconds) - 1
    recipe = RANGE_RECIPE.format(concurrency=8, rate=f"{rate:g}", last=last)
    runs: list[Measurement] = []

    with synthetic_server("statistics", "w6") as server:
        for index in range(settings.w6_runs):
            run = fresh_folder(folder / f"run-{index}")
            (run / "recipe.yaml").write_text(recipe)
            server.post_json("/__bench__/reset")
            wait_for_quiet()
            command = tm_export_run(run, server)
            measurement = run_measured(command, cwd=run, log=run / "stderr.log")
            log = server.get_json("/__bench__/requests")
            measurement.extra.update(request_windows(log["times"]), requests=log["count"])
            runs.append(measurement)
            print(
                f"  {log['count']} requests in {measurement.wall_s:.1f} s, at most "
                f"{measurement.extra['max_sliding']} in one second",
                flush=True,
            )

    entry = timing_row("tm-export", runs)
    for key in ("max_fixed", "max_sliding", "mean_rate"):
        entry[key] = Spread.of([m.extra[key] for m in runs]).to_json()
    entry["requests"] = runs[0].extra["requests"]
    worst = max(max(m.extra["max_sliding"], m.extra["max_fixed"]) for m in runs)
    allowed = rate * 1.05

    return {
        "name": "W6",
        "title": f"Rate budget {rate:g}/s over {settings.w6_seconds:g} s",
        "parameters": {"rate_limit": f"{rate:g}/s", "requests": last + 1, "runs": len(runs)},
        "recipe": recipe,
        "rows": [entry],
        "facts": [
            f"Most requests in one second: {worst} (fixed windows from the first request: "
            f"{', '.join(str(m.extra['max_fixed']) for m in runs)}; sliding windows: "
            f"{', '.join(str(m.extra['max_sliding']) for m in runs)}); mean rate "
            f"{entry['mean_rate']['median']:.2f}/s.",
            "The server timestamps each request on arrival with CLOCK_MONOTONIC.",
        ],
        "commands": [shown(command, server) + "    # in the run folder, with recipe.yaml below"],
        "targets": [
            target(
                f"W6 requests in any second ≤ budget + 5 % ({allowed:g})",
                f"≤ {allowed:g}",
                f"{worst}",
                worst <= allowed,
            )
        ],
        "notes": [],
    }


# --- W3 and W4: memory ------------------------------------------------------------------

TASKS_RECIPE = """\
version: 1
instance: {concurrency: 8, rate_limit: 100000/s}
output: out
streams:
  tasks:
    endpoint: project_tasks
    params: {project_id: 1}
"""

ACTIVITIES_RECIPE = """\
version: 1
instance: {{concurrency: 8, rate_limit: 100000/s}}
output: out
streams:
  activities:
    endpoint: project_activities
    params: {{project_id: {{range: [1, {projects}]}}}}
"""

#: Pages a project and records a page that the W4 server serves.
W4_PAGES, W4_PER_PAGE = 10, 100


def tasks_body(megabytes: int) -> tuple[Path, int]:
    """Return the W3 body file (made once and kept in .work/) and its feature count."""
    body = WORK / "bodies" / f"tasks-{megabytes}mb.json"
    count_file = body.with_name(body.name + ".features")
    if not body.exists() or not count_file.exists():
        print(f"  writing a {megabytes} MB FeatureCollection to {body}", flush=True)
        features = write_tasks_body(body, megabytes * 1_000_000)
        count_file.write_text(str(features))
    return body, int(count_file.read_text())


def export_once(
    server: ServerProcess, folder: Path, recipe: str, stream: str, expect_exit: Sequence[int] | None
) -> Delivery:
    """Run a fresh export of ``recipe``, count the lines of ``stream``, then delete the output."""
    fresh_folder(folder)
    wait_for_quiet()
    (folder / "recipe.yaml").write_text(recipe)
    command = tm_export_run(folder, server)
    measurement = run_measured(
        command,
        cwd=folder,
        log=folder / "stderr.log",
        server_pid=server.pid,
        expect_exit=expect_exit,
    )
    data = folder / "out" / "runs" / "0001" / "data" / f"{stream}.jsonl"
    records = count_lines(data) if data.exists() else 0
    shutil.rmtree(folder / "out", ignore_errors=True)
    print(
        f"  exit {measurement.exit_code}, {measurement.wall_s:.1f} s, {records} records, "
        f"peak RSS {measurement.peak_rss_mb:.0f} MB",
        flush=True,
    )
    return Delivery(measurement, {stream: records}, command)


def w3_huge_response(settings: Settings) -> dict[str, Any]:
    folder = WORK / "w3"
    body, features = tasks_body(settings.w3_megabytes)
    size_mb = body.stat().st_size / 1e6
    with synthetic_server("tasks", "w3", "--body", str(body)) as server:
        deliveries = [
            export_once(server, folder / "run", TASKS_RECIPE, "tasks", expect_exit=None)
            for _ in range(settings.runs)
        ]
    entry = row("tm-export", deliveries, concurrency=8)
    entry["exit_codes"] = [d.measurement.exit_code for d in deliveries]
    entry["complete"] = all(d.records["tasks"] == features for d in deliveries)
    peak = entry["peak_rss_mb"]["median"]
    return {
        "name": "W3",
        "title": f"One {size_mb:,.0f} MB response",
        "parameters": {"body MB": round(size_mb), "features": features, "runs": settings.runs},
        "recipe": TASKS_RECIPE,
        "rows": [entry],
        "facts": [
            f"The server streams a {size_mb:,.0f} MB GeoJSON FeatureCollection of {features:,} "
            "square task polygons from disk for /api/v2/projects/1/tasks/.",
            f"Exit codes: {', '.join(str(code) for code in entry['exit_codes'])}; records "
            f"written: {entry['records']:,} of {features:,}.",
            f"Peak RSS is {peak / size_mb:.2f} × the body size.",
        ],
        "commands": [shown(deliveries[0].command, server) + "    # recipe below"],
        "targets": [
            target("W3 peak RSS ≤ 150 MB", "≤ 150 MB", f"{peak:,.0f} MB", peak <= 150),
        ],
        "notes": [],
    }


def w4_big_export(settings: Settings) -> dict[str, Any]:
    folder = WORK / "w4"
    projects = settings.w4_projects
    expected = projects * W4_PAGES * W4_PER_PAGE
    recipe = ACTIVITIES_RECIPE.format(projects=projects)
    options = ["--projects", str(projects), "--pages", str(W4_PAGES)]
    options += ["--per-page", str(W4_PER_PAGE)]

    with synthetic_server("activities", "w4", *options) as server:
        deliveries = [
            export_once(server, folder / "run", recipe, "activities", expect_exit=(0,))
            for _ in range(settings.runs)
        ]
    entry = row("tm-export", deliveries, concurrency=8)
    entry["requests"] = projects * W4_PAGES + 1
    entry["complete"] = all(d.records["activities"] == expected for d in deliveries)
    peak = entry["peak_rss_mb"]["median"]

    return {
        "name": "W4",
        "title": f"{expected:,} records",
        "parameters": {
            "projects": projects,
            "pages a project": W4_PAGES,
            "records a page": W4_PER_PAGE,
            "runs": settings.runs,
        },
        "recipe": recipe,
        "rows": [entry],
        "facts": [
            f"The server responds to /api/v2/projects/N/activities/?page=P for N up to {projects:,} "
            f"with {W4_PER_PAGE} synthetic task-history records a page and {W4_PAGES} pages "
            "a project.",
        ],
        "commands": [shown(deliveries[0].command, server) + "    # recipe below"],
        "targets": [
            target("W4 peak RSS ≤ 100 MB", "≤ 100 MB", f"{peak:,.0f} MB", peak <= 100),
            target(
                "W4 time",
                "reported",
                f"{entry['wall_s']['median']:.1f} s, "
                f"{entry['records_per_s']['median']:,.0f} records/s",
                None,
            ),
        ],
        "notes": [] if entry["complete"] else [f"tm-export wrote fewer than {expected:,} records"],
    }

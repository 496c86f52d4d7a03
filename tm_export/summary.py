"""The end-of-run summary: a table for people on stderr, and JSON for machines."""

from __future__ import annotations

from typing import Any

from .engine import RunResult
from .errors import ExitCode, resume_hint, retry_command
from .layout import is_bag
from .recipe import Recipe
from .status import FINAL_STATES, read_again_line
from .verify import FAILURES_LABEL, PROBLEMS_LABEL
from .words import counted

#: The outcome of each exit code; ``{rerun}`` is the start of the advice to resume.
OUTCOMES = {
    ExitCode.COMPLETE: "complete",
    # The error message names the cause, which must be fixed first: a wrong URL fails again.
    ExitCode.FATAL: "stopped by a fatal error; once its cause is fixed, {rerun} to resume",
    ExitCode.FAILURES: FAILURES_LABEL,
    ExitCode.INTERRUPTED: "interrupted; {rerun} to resume",
}


#: The outcome of a run that exits 3 only because ``--strict`` counts skipped partitions.
STRICT_SKIPPED = "finished with skipped partitions (--strict)"

# None: a token was given, but the run stopped before the server could check it.
AUTHENTICATED = {True: "yes", False: "no", None: "not checked"}


def format_summary(
    recipe: Recipe, result: RunResult, code: ExitCode, exit_code: ExitCode | None = None
) -> str:
    """Return the summary table and totals as text.

    ``exit_code`` is the process's, given when the summary could not be written to standard
    output.
    """
    header = ("stream", "done", "skipped", "failed", "records", "duplicates")
    rows = [header]
    for name, stats in result.streams.items():
        rows.append(
            (
                name,
                str(stats.partitions["done"]),
                str(stats.partitions["skipped"]),
                str(stats.partitions["failed"]),
                str(stats.records),
                str(stats.duplicates),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )
        for row in rows
    ]

    if result.finished_before:
        opened_as = " (already finished)"
    elif result.resumed:
        opened_as = " (resumed)"
    else:
        opened_as = ""
    lines.insert(0, f"run folder: {result.run_folder}{opened_as}")
    reasons: dict[str, int] = {}
    for stats in result.streams.values():
        for reason, count in stats.skip_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
    if reasons:
        detail = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items()))
        lines.append(f"skipped partitions: {sum(reasons.values())} ({detail})")
    for name, stats in result.streams.items():
        if stats.read_again:
            lines.append(read_again_line(name, len(stats.read_again)))
    for name, stats in result.streams.items():
        for problem in stats.problems[:5]:
            lines.append(f"problem in {name}: {problem}")
        if len(stats.problems) > 5:
            lines.append(f"problem in {name}: ... and {len(stats.problems) - 5} more")
    if result.deleted:
        shown = ", ".join(str(project_id) for project_id in result.deleted[:20])
        more = f" and {len(result.deleted) - 20} more" if len(result.deleted) > 20 else ""
        lines.append(f"deleted since the earlier runs: projects {shown}{more}")
    if result.failed_partitions and code == ExitCode.FAILURES:
        lines.append(_retry_line(result))
    lines.append(
        f"requests: {result.requests}, retries: {result.retries}, authenticated: "
        f"{AUTHENTICATED[result.authenticated]}, TM release: {result.tm_release or 'unknown'}"
    )
    outcome = outcome_text(result, code)
    if exit_code is not None:
        outcome += ", but the summary could not be written to standard output"
    lines.append(f"result: {outcome} (exit {int(exit_code or code)})")
    return "\n".join(lines)


def _retry_line(result: RunResult) -> str:
    """Return the summary line with the command that fetches the failed partitions again."""
    retry = retry_command(incremental=result.incremental, started_over=result.started_over)
    failed = counted(result.failed_partitions, "failed partition")
    if is_bag(result.run_folder):
        # 'tm-export bag' seals a finished run whatever failed, and a bag takes no pages.
        return (
            f"retry: the run is a bag, which takes no more pages, so --start-over fetches the "
            f"{failed} again, in a new run"
        )
    stuck = sum(stats.need_new_run for stats in result.streams.values())
    need = "needs" if stuck == 1 else "need"
    if stuck == result.failed_partitions:
        return (
            f"retry: the {failed} {need} a changed recipe or the key of another user (their "
            "errors are in the log and in 'tm-export status'), which only a new run takes: fix "
            "it and use --start-over"
        )
    line = f"retry: once the cause is fixed, {retry} to fetch the {failed} again"
    if stuck:
        line += (
            f"; {stuck} of them {need} a changed recipe or the key of another user instead "
            "(their errors are in the log and in 'tm-export status'), which only --start-over "
            "takes"
        )
    return line


def outcome_text(result: RunResult, code: ExitCode) -> str:
    """Return the outcome of ``result`` in words, for the summary's result line and JSON."""
    if code == ExitCode.FAILURES and not result.failed_partitions:
        return PROBLEMS_LABEL if result.problems else STRICT_SKIPPED
    return OUTCOMES[code].format(rerun=resume_hint(started_over=result.started_over))


def summary_json(
    result: RunResult, code: ExitCode, exit_code: ExitCode | None = None
) -> dict[str, Any]:
    """Return the summary as JSON-ready data; ``exit_code`` as for ``format_summary``."""
    return {
        "run_folder": str(result.run_folder),
        "exit_code": int(exit_code or code),
        "outcome": outcome_text(result, code),
        "resumed": result.resumed and not result.finished_before,
        "already_finished": result.finished_before,
        "authenticated": result.authenticated,
        "tm_release": result.tm_release,
        "requests": result.requests,
        "retries": result.retries,
        "streams": {
            name: {
                # Every state, zero included, so that a script can read each key.
                "partitions": {state: stats.partitions[state] for state in FINAL_STATES},
                "records": stats.records,
                "duplicates": stats.duplicates,
                "pages": stats.pages,
                "skip_reasons": dict(stats.skip_reasons),
                "problems": stats.problems,
                "read_again": len(stats.read_again),
            }
            for name, stats in result.streams.items()
        },
        "deleted_projects": result.deleted,
        "fatal": str(result.fatal) if result.fatal else None,
    }

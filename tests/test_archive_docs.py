"""Run every sh and python block of docs/archive.md, in order, against a mock server."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tm_export.mock import MockServer

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "archive.md"
FENCE = re.compile(r"^```(?P<language>[a-z]*)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
STREAMS = ("projects", "project_details", "contributions", "activities", "task_stats")


def code_blocks() -> list[tuple[str, str]]:
    """Return the (language, code) of every fenced block of the page, in order."""
    return [(m["language"], m["code"]) for m in FENCE.finditer(DOC.read_text(encoding="utf-8"))]


def run_block(language: str, code: str, folder: Path, env: dict[str, str]) -> str:
    command = (
        ["bash", "-euo", "pipefail", "-c", code]
        if language == "sh"
        else [sys.executable, "-c", code]
    )
    done = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, f"block failed with exit {done.returncode}:\n{code}\n{done.stderr}"
    return done.stdout


def admin_ids(mock: MockServer) -> list[int]:
    """Ids of the admin's PUBLISHED,ARCHIVED search, private projects included."""
    return sorted(
        p.id for p in mock.dataset.projects.values() if p.status in ("PUBLISHED", "ARCHIVED")
    )


@pytest.mark.timeout(300)
def test_archive_doc_commands(tmp_path: Path, mock: MockServer) -> None:
    """The page's commands export, check, load and bag a run, and print the true counts."""
    assert shutil.which("jq"), "the page's examples need jq"
    (tmp_path / "recipes").mkdir()
    shutil.copy(ROOT / "recipes" / "demo.yaml", tmp_path / "recipes" / "demo.yaml")
    env = {
        **os.environ,
        "API_URL": mock.api_url,
        "TM_API_TOKEN": mock.tokens["admin"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    blocks = [(lang, code) for lang, code in code_blocks() if lang in ("sh", "python")]
    outputs = {code: run_block(lang, code, tmp_path, env) for lang, code in blocks}

    def output_of(marker: str) -> list[str]:
        """Return the output lines of the block that is ``marker``, or the one that contains it."""
        (code,) = [code for code in outputs if code == marker] or [
            code for code in outputs if marker in code
        ]
        return outputs[code].splitlines()

    ids = admin_ids(mock)
    per_project = {pid: mock.dataset.count("project_contributions", project_id=pid) for pid in ids}
    activities = {pid: mock.dataset.count("project_activities", project_id=pid) for pid in ids}
    counts = {
        "projects": len(ids),
        "project_details": len(ids),
        "contributions": sum(per_project.values()),
        "activities": sum(activities.values()),
        "task_stats": mock.dataset.count(
            "tasks_statistics", startDate="2026-01-01", endDate="2026-12-31"
        ),
    }
    run = tmp_path / "exports/demo/runs/0001"

    plan = output_of("tm-export plan recipes/demo.yaml\n")
    search_pages = math.ceil(len(ids) / 14)
    probed_header = f"plan for recipes/demo.yaml: 5 streams; probed {mock.api_url} with 3 requests"
    unprobed, probed = plan[: plan.index(probed_header)], plan[plan.index(probed_header) :]
    assert unprobed[0] == "plan for recipes/demo.yaml: 5 streams; nothing was sent"
    assert "task_stats       tasks_statistics               12           12" in unprobed
    assert "total                                               at least 16" in unprobed
    assert f"projects         projects                        1  {search_pages:>11}" in probed
    assert f"total                                               at least {search_pages + 15}" in (
        probed
    )

    status = output_of("tm-export status exports/demo")
    assert status[0] == f"run: {Path('exports/demo/runs/0001')}"
    assert status[1].startswith("state: complete, ended ")

    verified = output_of("tm-export verify exports/demo\n")
    assert verified[-1] == "verified 1 run: 5 stream files match the manifest"

    canonical = output_of("tm-export canonical exports/demo")
    assert [line.split(":")[0].split()[-1] for line in canonical[1:-1]] == [
        f"data/{stream}.jsonl" for stream in STREAMS
    ]
    assert canonical[-1] == f"updated {Path('exports/demo/runs/0001/run.json')}"

    assert output_of("tm-export record exports/demo") == [
        f"wrote {Path('exports/demo/runs/0001/run.json')}"
    ]

    busiest = sorted(per_project.items(), key=lambda item: (-item[1], item[0]))[:3]
    assert output_of("import duckdb") == [
        *(f"{stream} {counts[stream]}" for stream in STREAMS),
        f"most contributors: {busiest}",
    ]

    assert output_of("import pandas") == [
        f"activities {counts['activities']}",
        f"projects with activity {sum(1 for n in activities.values() if n)}",
    ]

    assert output_of("jq -n 'reduce inputs as $record (0; . + 1)' data/task_stats.jsonl") == [
        str(counts["task_stats"]),
        str(per_project[1]),
    ]

    cite = output_of("sha256sum --check")
    facts = json.loads("\n".join(cite[: cite.index("}") + 1]))
    record = json.loads((run / "data/run.json").read_text())
    assert facts == {
        "run": "0001",
        "started": record["started"],
        "ended": record["ended"],
        "base_url": mock.api_url,
        "tm_release": "v5.5.2",
        "recipe": record["recipe"]["export_hash"],
    }
    rest = cite[cite.index("}") + 1 :]
    assert rest[:5] == [
        f"{stream} {counts[stream]} {record['streams'][stream]['sha256']}" for stream in STREAMS
    ]
    assert rest[5:] == [f"data/{stream}.jsonl: OK" for stream in STREAMS]

    bagged = output_of("bagit.py --validate")
    assert (
        bagged[0]
        == "exports/demo/runs/0001: a BagIt bag; the run is now in exports/demo/runs/0001/data"
    )
    assert bagged[-1] == "verified 1 run: 5 stream files match the manifest"
    assert bagged[1] == "exports/demo/runs/0001: complete, a bag; 5 stream files"

    assert output_of("data/data/projects.jsonl") == [str(counts["projects"])]

    assert output_of("tm-export snapshot exports/demo") == [
        "exports/demo-now: a snapshot of runs 0001, 0002",
        *(f"  {stream:<15}  {counts[stream]} records" for stream in STREAMS),
    ]

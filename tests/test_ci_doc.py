"""The CI workflow in docs/ci.md is valid YAML, and its tm-export commands work as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from tm_export.mock import MockServer

from .conftest import run_cli

DOC = Path(__file__).parent.parent / "docs" / "ci.md"
ROOT = DOC.parent.parent


def workflow() -> dict[str, Any]:
    (block,) = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    return YAML(typ="safe").load(block)  # type: ignore[no-any-return]


def commands(job: dict[str, Any]) -> list[str]:
    found = []
    for step in job["steps"]:
        for line in str(step.get("run", "")).splitlines():
            if line.strip().startswith("tm-export "):
                found.append(line.strip())
    return found


def test_workflow_shape() -> None:
    flow = workflow()

    assert set(flow["jobs"]) == {"export", "merge"}
    assert flow["jobs"]["export"]["strategy"]["matrix"]["shard"] == [1, 2, 3]
    assert flow["jobs"]["merge"]["needs"] == "export"
    assert flow["permissions"] == {"contents": "read"}


def test_workflow_commands_run(tmp_path: Path, mock: MockServer, monkeypatch: Any) -> None:
    """Run the export command once per shard and then the merge, as the workflow does."""
    flow = workflow()
    (export,) = commands(flow["jobs"]["export"])
    (merge,) = commands(flow["jobs"]["merge"])
    monkeypatch.chdir(ROOT)
    # The workflow relies on the default base URL; here it must be the mock's, always.
    monkeypatch.setenv("TM_EXPORT_BASE_URL", mock.api_url)

    for shard in flow["jobs"]["export"]["strategy"]["matrix"]["shard"]:
        words = shlex.split(export.replace("${{ matrix.shard }}", str(shard)))
        words = [w if not w.startswith("shard-") else str(tmp_path / w) for w in words]
        outcome = run_cli(*words[1:])
        assert outcome.exit_code == 0, outcome.stderr

    words = shlex.split(merge)
    words = [str(tmp_path / w) if w.startswith(("shard-", "archive")) else w for w in words]
    outcome = run_cli(*words[1:])

    assert outcome.exit_code == 0, outcome.stderr
    data = tmp_path / "archive/runs/0001/data"
    projects = (data / "projects.jsonl").read_bytes().splitlines()
    summaries = (data / "summaries.jsonl").read_bytes().splitlines()
    assert len(projects) == len(mock.dataset.public_project_ids())
    assert len(summaries) == len(projects)
    assert all(request["path"].startswith("/api/v2/") for request in mock.requests())

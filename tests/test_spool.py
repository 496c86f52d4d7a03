"""Large responses go to a spool file and are parsed as a stream, with the same result."""

from __future__ import annotations

import errno
from pathlib import Path

import orjson
import pytest

from tm_export.errors import ExitCode
from tm_export.mock import MockServer

from .conftest import data_file, export_here, write_recipe

RECIPE = """\
version: 1
instance: {rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  tasks:
    endpoint: project_tasks
    params: {project_id: {from: projects.projectId}}
  details:
    endpoint: project
    params: {project_id: {each: [1, 2]}}
  activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
"""
STREAMS = ("projects", "tasks", "details", "activities")


def test_spooled_equals_in_memory(tmp_path: Path, mock: MockServer) -> None:
    """With a 200-byte threshold every page is spooled; the files equal an in-memory export."""
    (tmp_path / "memory").mkdir()
    (tmp_path / "spooled").mkdir()
    in_memory = export_here(write_recipe(tmp_path / "memory", RECIPE), mock)
    spooled = export_here(write_recipe(tmp_path / "spooled", RECIPE), mock, spool_over=200)

    assert in_memory.exit_code() == spooled.exit_code() == ExitCode.COMPLETE
    for stream in STREAMS:
        expected = sorted(data_file(tmp_path / "memory/out", stream).read_bytes().splitlines())
        actual = sorted(data_file(tmp_path / "spooled/out", stream).read_bytes().splitlines())
        assert actual == expected, stream
    assert not any((tmp_path / "spooled/out/runs/0001/.spool").glob("*"))


def test_spooled_page_deduplicates(tmp_path: Path, mock: MockServer) -> None:
    """A spooled page that repeats a task is written once and the repeat is counted."""
    import urllib.request

    import orjson

    with urllib.request.urlopen(f"{mock.api_url}/projects/1/tasks/") as reply:
        body = orjson.loads(reply.read())
    body["features"].append(body["features"][0])
    mock.add_fault(path=r"^/api/v2/projects/1/tasks/$", status=200, body=body)
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance: {rate_limit: 10000/s}
        output: OUT
        streams:
          tasks:
            endpoint: project_tasks
            params: {project_id: {each: [1]}}
        """,
    )

    result = export_here(recipe, mock, spool_over=200)

    lines = data_file(tmp_path / "out", "tasks").read_bytes().splitlines()
    assert len(lines) == len(body["features"]) - 1
    assert result.streams["tasks"].duplicates == 1


HTML = "<html><body>" + "down for maintenance " * 20 + "</body></html>"
SEARCH_RECIPE = """\
version: 1
instance: {rate_limit: 10000/s, retries: {attempts: 2, wait_initial: 0.01, wait_jitter: 0}}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  details:
    endpoint: project
    params: {project_id: {each: [1, 2]}}
"""


def test_spooled_html_page_retried(tmp_path: Path, mock: MockServer) -> None:
    """A spooled 200 that is an HTML page is retried, as a small one is, and the run completes."""
    (tmp_path / "memory").mkdir()
    (tmp_path / "spooled").mkdir()
    export_here(write_recipe(tmp_path / "memory", SEARCH_RECIPE), mock)
    page = {"status": 200, "body": HTML, "content_type": "text/html", "times": 1}
    mock.add_fault(path=r"^/api/v2/projects/$", query={"page": "2"}, **page)
    mock.add_fault(path=r"^/api/v2/projects/1/$", **page)
    mock.reset_log()

    result = export_here(write_recipe(tmp_path / "spooled", SEARCH_RECIPE), mock, spool_over=200)

    assert result.exit_code() == ExitCode.COMPLETE
    assert result.retries == 2
    for stream in ("projects", "details"):
        expected = sorted(data_file(tmp_path / "memory/out", stream).read_bytes().splitlines())
        actual = sorted(data_file(tmp_path / "spooled/out", stream).read_bytes().splitlines())
        assert actual == expected, stream
    assert not any((tmp_path / "spooled/out/runs/0001/.spool").glob("*"))


@pytest.mark.parametrize(
    ("path", "query"), [(r"^/api/v2/projects/$", {"page": "2"}), (r"^/api/v2/projects/1/$", None)]
)
def test_spooled_malformed_json_fails_page(
    tmp_path: Path, mock: MockServer, path: str, query: dict[str, str] | None
) -> None:
    """A spooled 200 that starts like JSON but is cut short fails its partition, no traceback."""
    body = '{"pagination": {"hasNext": true, "pages": 3}, "results": [{"projectId": 1}' + " " * 300
    mock.add_fault(path=path, query=query, status=200, body=body, content_type="application/json")

    result = export_here(write_recipe(tmp_path, SEARCH_RECIPE), mock, spool_over=200)

    assert result.exit_code() == ExitCode.FAILURES
    assert result.failed_partitions == 1
    manifest = (tmp_path / "out/runs/0001/manifest.jsonl").read_bytes().splitlines()
    failed = [e for e in map(orjson.loads, manifest) if e.get("state") == "failed"]
    assert len(failed) == 1
    assert "the response body is not valid JSON" in failed[0]["error"]
    assert not any((tmp_path / "out/runs/0001/.spool").glob("*"))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            {"pagination": {"hasNext": False}, "notes": "x" * 300},
            "the response has no 'results' key",
        ),
        ({"results": {"projectId": 1}, "notes": "x" * 300}, "'results' is dict, not a list"),
        ([{"projectId": 1, "notes": "x" * 300}], "expected a JSON object with 'results', got list"),
    ],
    ids=["no-record-list", "not-a-list", "not-an-object"],
)
@pytest.mark.parametrize("spool_over", [None, 200], ids=["in-memory", "spooled"])
def test_page_without_record_list_fails(
    tmp_path: Path, mock: MockServer, body: object, error: str, spool_over: int | None
) -> None:
    """A 200 whose body has no list of records fails its partition, spooled or not: it is
    not taken for an empty page."""
    mock.add_fault(path=r"^/api/v2/projects/$", query={"page": "2"}, status=200, body=body)

    options = {} if spool_over is None else {"spool_over": spool_over}
    result = export_here(write_recipe(tmp_path, SEARCH_RECIPE), mock, **options)

    assert result.exit_code() == ExitCode.FAILURES
    manifest = (tmp_path / "out/runs/0001/manifest.jsonl").read_bytes().splitlines()
    failed = [e for e in map(orjson.loads, manifest) if e.get("state") == "failed"]
    assert [entry["error"] for entry in failed] == [
        f"GET {mock.api_url}/projects/?omitMapResults=true&orderBy=id&orderByType=ASC"
        f"&projectStatuses=PUBLISHED,ARCHIVED&page=2: {error}"
    ]


@pytest.mark.parametrize(
    ("compression", "suffix"), [("none", ".lines"), ("gzip", ".lines.gz")], ids=["lines", "gzip"]
)
def test_spooled_page_write_error_stops_run(
    tmp_path: Path,
    mock: MockServer,
    monkeypatch: pytest.MonkeyPatch,
    compression: str,
    suffix: str,
) -> None:
    """A full disk while a spooled page's records are written, or compressed, stops the run
    as any write error does (exit 1, the path named), and the same command completes it."""
    recipe = write_recipe(tmp_path, RECIPE.split("  tasks:")[0])
    opened = Path.open

    def full_disk(path: Path, mode: str = "r", *args: object, **kwargs: object) -> object:
        if path.name.endswith(suffix) and "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return opened(path, mode, *args, **kwargs)  # type: ignore[call-overload]

    with monkeypatch.context() as patch:
        patch.setattr(Path, "open", full_disk)
        stopped = export_here(recipe, mock, spool_over=200, compression=compression)

    assert stopped.exit_code() == ExitCode.FATAL
    spooled, _, message = str(stopped.fatal).partition(": ")
    assert Path(spooled).parent == tmp_path / "out/runs/0001/.spool"
    assert spooled.endswith(suffix)
    what = "a spooled page's records" if compression == "none" else "a compressed page"
    assert message == (
        f"cannot write {what}: No space left on device. The manifest still proves 0 committed "
        "pages (0 records), and the stream files were cut back to them; free some space and "
        "run the same command again to resume"
    )
    assert list((tmp_path / "out/runs/0001/.spool").iterdir()) == []
    resumed = export_here(recipe, mock, spool_over=200, compression=compression)
    assert resumed.exit_code() == ExitCode.COMPLETE
    assert resumed.streams["projects"].records == mock.counts()["projects"]


def test_spooled_malformed_json_quotes_no_body(tmp_path: Path, mock: MockServer) -> None:
    """The streaming parser quotes the body near a syntax error, which may contain part of
    the token. The page's error keeps only the parser's first line, so no part of the
    token reaches the manifest or the logs."""
    token = mock.tokens["mapper"]
    body = '{"results": [{"projectId": 1, "pad": "' + "x" * 300 + f'"}}, {{"echo": {token}}}]}}'
    mock.add_fault(
        path=r"^/api/v2/projects/$", status=200, body=body, content_type="application/json"
    )

    result = export_here(write_recipe(tmp_path, SEARCH_RECIPE), mock, token=token, spool_over=200)

    assert result.exit_code() == ExitCode.FAILURES
    manifest = (tmp_path / "out/runs/0001/manifest.jsonl").read_bytes()
    failed = [e for e in map(orjson.loads, manifest.splitlines()) if e.get("state") == "failed"]
    assert failed[0]["error"].endswith(
        ": the response body is not valid JSON: lexical error: invalid char in json text."
    )
    assert token[:12].encode() not in manifest

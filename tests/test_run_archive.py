"""run --canonical and --bag: a finished run describes and seals itself."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import bagit
import orjson
import pytest

from tm_export.mock import MockServer

from .conftest import run_cli, write_recipe

RECIPE = """\
version: 1
instance: {rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
  activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
"""


def test_run_writes_record(tmp_path: Path, mock: MockServer) -> None:
    recipe = write_recipe(tmp_path, RECIPE)

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 0, outcome.stderr
    record = orjson.loads((tmp_path / "out/runs/0001/run.json").read_bytes())
    lines = (tmp_path / "out/runs/0001/data/activities.jsonl").read_bytes().count(b"\n")
    assert record["streams"]["activities"]["records"] == lines
    assert run_cli("verify", str(tmp_path / "out")).exit_code == 0


def test_canonical_runs_identical(tmp_path: Path, mock: MockServer) -> None:
    """Two runs of the same data with --canonical have byte-identical stream files."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    for folder, concurrency in ((first, "1"), (second, "8")):
        recipe = write_recipe(folder, RECIPE)
        outcome = run_cli(
            "run",
            str(recipe),
            "--base-url",
            mock.api_url,
            "--canonical",
            "--concurrency",
            concurrency,
        )
        assert outcome.exit_code == 0, outcome.stderr

    for name in ("projects", "activities"):
        assert (first / f"out/runs/0001/data/{name}.jsonl").read_bytes() == (
            second / f"out/runs/0001/data/{name}.jsonl"
        ).read_bytes()
    assert run_cli("verify", str(first / "out")).exit_code == 0


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_bag_seals_run(tmp_path: Path, mock: MockServer) -> None:
    """--bag makes a valid bag. The same command again, or one with nothing to retry, finds
    the run finished and writes nothing; --incremental starts beside it."""
    recipe = write_recipe(tmp_path, RECIPE)
    bag = tmp_path / "out/runs/0001"

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--bag")

    assert outcome.exit_code == 0, outcome.stderr
    bagit.Bag(str(bag)).validate()
    sealed = _tree(bag)
    mock.reset_log()
    for options in (["--bag"], [], ["--retry-failed"]):
        again = run_cli("run", str(recipe), "--base-url", mock.api_url, *options)
        assert again.exit_code == 0, again.stderr
        assert again.stderr.splitlines()[0] == (
            f"tm-export: INFO: the run in {bag} is already finished and made a BagIt bag, "
            "which is sealed: no request is sent and nothing is written. For newer data, use "
            "--incremental, or --start-over for a new full run"
        )
        assert f"run folder: {bag} (already finished)" in again.stderr.splitlines()
        assert again.stderr.splitlines()[-2:] == [
            "requests: 0, retries: 0, authenticated: no, TM release: v5.5.2",
            "result: complete (exit 0)",
        ]
    canonical = run_cli("run", str(recipe), "--base-url", mock.api_url, "--canonical")
    assert canonical.exit_code == 1
    assert canonical.stderr == (
        f"tm-export: error: {bag}: the last run is a BagIt bag, so it is sealed, and "
        "--canonical would rewrite its files. Nothing was changed. Leave out --canonical, or "
        "use --start-over for a new run made canonical\n"
    )
    assert _tree(bag) == sealed
    assert mock.requests() == []
    later = run_cli("run", str(recipe), "--base-url", mock.api_url, "--incremental")
    assert later.exit_code == 0, later.stderr
    assert (tmp_path / "out/runs/0002/manifest.jsonl").is_file()
    assert (tmp_path / "out/runs/0002/data/projects.jsonl").read_bytes() == b""


def test_bag_with_failures_offers_start_over(tmp_path: Path, mock: MockServer) -> None:
    """'tm-export bag' seals a finished run with failed partitions. The command run again
    reports them (exit 3), and its retry line names --start-over, not --retry-failed,
    which the sealed bag rejects."""
    recipe = write_recipe(
        tmp_path,
        RECIPE.replace("rate_limit: 10000/s", "rate_limit: 10000/s, retries: {attempts: 1}"),
    )
    mock.add_fault(path=r"^/api/v2/projects/1/activities/$", status=500)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 3
    assert run_cli("bag", str(tmp_path / "out/runs/0001")).exit_code == 0

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 3
    assert (
        "retry: the run is a bag, which takes no more pages, so --start-over fetches the 1 "
        "failed partition again, in a new run"
    ) in outcome.stderr.splitlines()


def test_bag_refuses_retry_of_its_skipped_partitions(tmp_path: Path, mock: MockServer) -> None:
    """--retry-skipped on a bag with a skipped partition would write to the sealed run, so it
    is refused, and nothing is sent."""
    recipe = write_recipe(
        tmp_path,
        RECIPE.replace(
            "    params: {project_id: {from: projects.projectId}}",
            "    params: {project_id: {each: [1, 9]}}",
        ),
    )
    assert run_cli("run", str(recipe), "--base-url", mock.api_url, "--bag").exit_code == 0
    mock.reset_log()

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--retry-skipped")

    assert outcome.exit_code == 1
    assert outcome.stderr == (
        f"tm-export: error: {tmp_path / 'out/runs/0001'}: the last run is a BagIt bag, so it "
        "is sealed, and --retry-skipped would write to it. Nothing was changed. Use "
        "--start-over to fetch everything again in a new run, or --incremental to fetch what "
        "changed since\n"
    )
    assert mock.requests() == []


#: Runs 'tm-export bag' with os.rename patched to kill the process on its N-th call, as a
#: power cut would stop it at that point of bagit's moves.
KILL_AT_RENAME = """\
import os, signal, sys
limit, folder = int(sys.argv[1]), sys.argv[2]
calls = [0]
rename = os.rename
def killing_rename(*args, **kwargs):
    calls[0] += 1
    if calls[0] == limit:
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(*args, **kwargs)
os.rename = killing_rename
from tm_export.cli import main
sys.argv = ["tm-export", "bag", folder]
main()
"""


def kill_bag_at_rename(tmp_path: Path, folder: Path, number: int) -> None:
    """Run 'tm-export bag FOLDER' and kill it at its ``number``-th rename."""
    killer = tmp_path / "kill_at_rename.py"
    killer.write_text(KILL_AT_RENAME)
    killed = subprocess.run(
        [sys.executable, str(killer), str(number), str(folder)],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, (number, killed.stderr)


def payload_files(bag: Path) -> list[str]:
    """Return the files of a bag's payload, relative to its data folder."""
    return sorted(
        str(path.relative_to(bag / "data")) for path in (bag / "data").rglob("*") if path.is_file()
    )


def test_bag_killed_at_each_move(tmp_path: Path, mock: MockServer) -> None:
    """bagit moves every entry of the run folder, hidden ones and the user's own tmp*
    folder included, into its temporary folder one at a time. A kill at any of those
    moves is reported by status, and the export command with --bag puts the entries back
    and makes the bag, with the payload holding exactly what the run folder held."""
    recipe = write_recipe(tmp_path, RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0
    prepared = tmp_path / "out"
    run = prepared / "runs/0001"
    (run / ".spool").mkdir()
    (run / "notes.txt").write_text("mine\n")
    (run / "tmp_backup").mkdir()
    shutil.copy(run / "manifest.jsonl", run / "tmp_backup/manifest.jsonl")
    expected = sorted(str(path.relative_to(run)) for path in run.rglob("*") if path.is_file())

    # Six entries move one by one, then the seventh rename makes the temporary folder data.
    for number in range(1, 8):
        output = tmp_path / f"out-{number}"
        shutil.copytree(prepared, output)
        folder = output / "runs/0001"
        kill_bag_at_rename(tmp_path, folder, number)

        status = run_cli("status", str(folder))
        outcome = run_cli(
            "run", str(recipe), "--base-url", mock.api_url, "--output", str(output), "--bag"
        )

        assert status.exit_code == 1, (number, status.stdout)
        assert "was interrupted" in status.stderr, number
        assert outcome.exit_code == 0, (number, outcome.stderr)
        assert bagit.Bag(str(folder)).validate(), number
        assert payload_files(folder) == expected, number
        assert not (output / "runs/.0001.bagging").exists(), number


def test_put_back_killed_at_each_move(tmp_path: Path, mock: MockServer) -> None:
    """A bag step killed before bagit's last tag file leaves the payload in data/. The next
    'tm-export bag' sets it aside and moves its entries up. After a kill at any of those
    moves, the export command with --bag finishes the put-back and bags exactly the run's
    entries."""
    recipe = write_recipe(tmp_path, RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0
    prepared = tmp_path / "out"
    run = prepared / "runs/0001"
    (run / "notes.txt").write_text("mine\n")
    # A file of the user's with the name of a bagit tag file goes into the payload.
    (run / "manifest-sha256.txt").write_text("mine\n")
    assert run_cli("bag", str(run)).exit_code == 0
    expected = payload_files(run)
    # As a kill before bagit wrote its tag manifest leaves it, with the step's marker.
    (run / "tagmanifest-sha256.txt").unlink()
    entries = sorted(entry.name for entry in (run / "data").iterdir())
    (prepared / "runs/.0001.bagging").write_bytes(orjson.dumps({"entries": entries}))

    # One rename sets the payload aside, then one moves each of its entries up.
    for number in range(1, len(entries) + 2):
        output = tmp_path / f"out-{number}"
        shutil.copytree(prepared, output)
        folder = output / "runs/0001"
        kill_bag_at_rename(tmp_path, folder, number)

        outcome = run_cli(
            "run", str(recipe), "--base-url", mock.api_url, "--output", str(output), "--bag"
        )

        assert outcome.exit_code == 0, (number, outcome.stderr)
        assert bagit.Bag(str(folder)).validate(), number
        assert payload_files(folder) == expected, number
        assert not (output / "runs/.0001.bagging").exists(), number


def test_bagit_rejection_puts_run_back(tmp_path: Path, mock: MockServer) -> None:
    """bagit rejects a folder with a link to a missing file before it moves anything. The
    bag step then puts the folder back and removes its marker. So the run is neither
    reported as an interrupted bag nor rejected, and once the link is gone it is bagged."""
    recipe = write_recipe(tmp_path, RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0
    run = tmp_path / "out/runs/0001"
    (run / "export.log").symlink_to(tmp_path / "gone.log")

    refused = run_cli("bag", str(run))
    status = run_cli("status", str(run))
    again = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert refused.exit_code == 1
    assert refused.stderr.splitlines()[-1].startswith(
        f"tm-export: error: {run}: cannot make the bag: "
    )
    assert not list((tmp_path / "out/runs").glob(".*bagging*"))
    assert status.exit_code == 0, status.stderr
    assert again.exit_code == 0, again.stderr
    (run / "export.log").unlink()
    assert run_cli("bag", str(run)).exit_code == 0
    assert bagit.Bag(str(run)).validate()


def test_bag_from_inside_run_is_clean_error(
    tmp_path: Path, mock: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bagit rejects bagging a parent of the working folder with a RuntimeError. The bag
    step reports it as an error, with no traceback, and leaves the run as it was."""
    recipe = write_recipe(tmp_path, RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0
    run = tmp_path / "out/runs/0001"
    monkeypatch.chdir(run / "data")

    outcome = run_cli("bag", str(run))

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1] == (
        f"tm-export: error: {run}: cannot make the bag: Bagging a parent of the current "
        f"directory is not supported; fix the cause, then run 'tm-export bag {run}' again"
    )
    assert not list((tmp_path / "out/runs").glob(".*bagging*"))
    assert run_cli("status", str(run)).exit_code == 0


def test_bag_of_dot_keeps_marker_out_of_payload(
    tmp_path: Path, mock: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'tm-export bag .' from inside the run folder writes the step's marker beside the
    folder, not in it, so the bag holds only the run's files."""
    recipe = write_recipe(tmp_path, RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0
    run = tmp_path / "out/runs/0001"
    monkeypatch.chdir(run)

    outcome = run_cli("bag", ".")

    assert outcome.exit_code == 0, outcome.stderr
    assert bagit.Bag(str(run)).validate()
    assert sorted(path.name for path in (run / "data").iterdir()) == [
        "data",
        "manifest.jsonl",
        "run.json",
    ]
    assert not list((tmp_path / "out/runs").glob(".*bagging*"))


def test_stale_bag_marker_removed(tmp_path: Path, mock: MockServer) -> None:
    """A bag step killed in a run folder that was then deleted by hand left a marker that
    is not a new run folder's of the same number. Making the new folder removes it, so the
    new run is neither reported as an interrupted bag nor changed."""
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args).exit_code == 0
    run = tmp_path / "out/runs/0001"
    kill_bag_at_rename(tmp_path, run, 2)
    shutil.rmtree(run)
    assert (tmp_path / "out/runs/.0001.bagging").exists()
    assert run_cli(*args).exit_code == 0

    status = run_cli("status", str(run))
    again = run_cli(*args, "--bag")

    assert status.exit_code == 0, status.stderr
    assert again.exit_code == 0, again.stderr
    assert "put back" not in again.stderr
    assert bagit.Bag(str(run)).validate()
    assert not (tmp_path / "out/runs/.0001.bagging").exists()


@pytest.mark.parametrize(
    "kept", [(), ("manifest.jsonl",), ("data",)], ids=["empty", "manifest", "data"]
)
def test_users_tmp_folder_is_no_interrupted_bag(
    tmp_path: Path, mock: MockServer, kept: tuple[str, ...]
) -> None:
    """A tmp* folder of the user's, empty or with copies of files that are still at the top
    of the run folder, is no bag step killed halfway: nothing is moved or replaced."""
    recipe = write_recipe(tmp_path, RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0
    run = tmp_path / "out/runs/0001"
    backup = run / "tmp_backup"
    backup.mkdir()
    if "manifest.jsonl" in kept:
        shutil.copy(run / "manifest.jsonl", backup / "manifest.jsonl")
    if "data" in kept:
        shutil.copytree(run / "data", backup / "data")
    manifest = (run / "manifest.jsonl").read_bytes()

    status = run_cli("status", str(run))
    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert status.exit_code == 0, status.stderr
    assert outcome.exit_code == 0, outcome.stderr
    assert "put back" not in outcome.stderr
    assert sorted(path.name for path in backup.iterdir()) == sorted(kept)
    assert (run / "manifest.jsonl").read_bytes() == manifest


@pytest.mark.parametrize("crash", ["moving", "tagging"])
@pytest.mark.parametrize("bag", [True, False], ids=["bag", "plain"])
def test_interrupted_bag_step_put_back(
    tmp_path: Path, mock: MockServer, crash: str, bag: bool
) -> None:
    """A kill in the bag step at the end of a run leaves the run folder half made a bag.
    The same command puts it back and makes the bag again; one without --bag leaves the
    finished run as it was before the step. Nothing is sent either way."""
    recipe = write_recipe(tmp_path, RECIPE)
    run = tmp_path / "out/runs/0001"
    if crash == "moving":
        # bagit had moved the manifest into its temporary folder, before renaming it to data.
        assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0
        moving = run / "tmpab12cd"
        moving.mkdir()
        (run / "manifest.jsonl").rename(moving / "manifest.jsonl")
    else:
        # bagit had written every tag file but the last.
        assert run_cli("run", str(recipe), "--base-url", mock.api_url, "--bag").exit_code == 0
        (run / "tagmanifest-sha256.txt").unlink()
    mock.reset_log()

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, *(["--bag"] if bag else []))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stderr.splitlines()[0] == (
        f"tm-export: WARNING: put back the run folder {run}, whose bagging was interrupted"
    )
    assert f"run folder: {run} (already finished)" in outcome.stderr.splitlines()
    assert mock.requests() == []
    if bag:
        bagit.Bag(str(run)).validate()
    else:
        assert not (run / "bagit.txt").exists()
        assert (run / "manifest.jsonl").is_file()
    assert run_cli("verify", str(tmp_path / "out")).exit_code == 0


def test_incremental_after_bag_keeps_compression(tmp_path: Path, mock: MockServer) -> None:
    """An incremental run after a gzip bag writes gzip too when no --compression is given."""
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args, "--compression", "gzip", "--bag").exit_code == 0

    outcome = run_cli(*args, "--incremental")

    assert outcome.exit_code == 0, outcome.stderr
    assert sorted(path.name for path in (tmp_path / "out/runs/0002/data").iterdir()) == [
        "activities.jsonl.gz",
        "projects.jsonl.gz",
    ]


def test_incremental_after_bag_of_other_recipe(tmp_path: Path, mock: MockServer) -> None:
    """A bag of another recipe is refused like an unsealed run, before a new run starts."""
    recipe = write_recipe(tmp_path, RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url, "--bag").exit_code == 0
    other = write_recipe(
        tmp_path,
        RECIPE.replace("endpoint: projects", "endpoint: projects\n    params: {orderBy: id}"),
    )

    outcome = run_cli("run", str(other), "--base-url", mock.api_url, "--incremental")

    assert outcome.exit_code == 1
    assert outcome.stderr.startswith(
        f"tm-export: error: {tmp_path / 'out/runs/0001/data/manifest.jsonl'}: this run was started "
        "by a recipe that exports something else"
    )
    assert sorted(path.name for path in (tmp_path / "out/runs").iterdir()) == ["0001"]


def test_canonical_waits_for_retries(tmp_path: Path, mock: MockServer) -> None:
    """With failed partitions the files stay as they are, so --retry-failed can still add pages."""
    recipe = write_recipe(
        tmp_path,
        RECIPE.replace("{rate_limit: 10000/s}", "{rate_limit: 10000/s, retries: {attempts: 1}}"),
    )
    mock.add_fault(path=r"^/api/v2/projects/1/activities/$", status=500)
    args = ["run", str(recipe), "--base-url", mock.api_url, "--canonical"]

    run = tmp_path / "out/runs/0001"

    first = run_cli(*args)

    assert first.exit_code == 3
    assert (
        "1 partition failed, so the run was not made canonical, which would take no more "
        "pages; once the cause is fixed, run the same command with --retry-failed "
        f"--canonical, or keep the failures and run 'tm-export canonical {run}'\n" in first.stderr
    )
    assert (
        "retry: once the cause is fixed, run the same command with --retry-failed to fetch "
        "the 1 failed partition again\n"
    ) in first.stderr
    manifest = tmp_path / "out/runs/0001/manifest.jsonl"
    assert b'"t":"canonical"' not in manifest.read_bytes()

    mock.clear_faults()
    second = run_cli(*args, "--retry-failed")

    assert second.exit_code == 0, second.stderr
    assert b'"t":"canonical"' in manifest.read_bytes()
    assert run_cli("verify", str(tmp_path / "out")).exit_code == 0


def test_canonical_advice_drops_start_over(tmp_path: Path, mock: MockServer) -> None:
    """After --start-over, the advice drops it: with --retry-failed it would begin a run."""
    recipe = write_recipe(
        tmp_path,
        RECIPE.replace("{rate_limit: 10000/s}", "{rate_limit: 10000/s, retries: {attempts: 1}}"),
    )
    args = ["run", str(recipe), "--base-url", mock.api_url, "--bag"]
    assert run_cli(*args).exit_code == 0
    mock.add_fault(path=r"^/api/v2/projects/1/activities/$", status=500)

    outcome = run_cli(*args, "--start-over")

    assert outcome.exit_code == 3
    assert (
        "retry: once the cause is fixed, run the same command without --start-over and with "
        "--retry-failed to fetch the 1 failed partition again\n"
    ) in outcome.stderr
    run = tmp_path / "out/runs/0002"
    assert (
        "1 partition failed, so the run was not bagged, which would take no more pages; once "
        "the cause is fixed, run the same command without --start-over and with --retry-failed "
        f"--bag, or keep the failures and run 'tm-export bag {run}'\n"
    ) in outcome.stderr


def test_retry_line_drops_incremental(tmp_path: Path, mock: MockServer) -> None:
    """A first --incremental run is a full one, yet --retry-failed beside --incremental would
    begin another run, so the retry line leaves the option out."""
    recipe = write_recipe(
        tmp_path,
        RECIPE.replace("{rate_limit: 10000/s}", "{rate_limit: 10000/s, retries: {attempts: 1}}"),
    )
    mock.add_fault(path=r"^/api/v2/projects/1/activities/$", status=500)

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--incremental")

    assert outcome.exit_code == 3
    assert (
        "retry: once the cause is fixed, run the same command without --incremental and with "
        "--retry-failed to fetch the 1 failed partition again\n"
    ) in outcome.stderr

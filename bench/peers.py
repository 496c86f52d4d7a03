"""Peer tools for the W1/W2 job, each in its own virtualenv under bench/.peers/.

The peers are not dependencies of tm-export: ``install_peers`` creates one virtualenv per
peer with ``python -m venv`` and installs a pinned version with pip from the package
index pip is configured for. A peer that cannot be installed is reported with pip's error
and left out of the measurements. Every peer talks only to the mock server on 127.0.0.1
that the workload passes it; dlt's telemetry is turned off in its environment.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from harness import BENCH, CommandFailed, Measurement, ServerProcess, count_lines, run_measured
from subjects import W1_STREAMS, Delivery, fresh_folder

PEERS_FOLDER = BENCH / ".peers"
CONFIGS = BENCH / "peers"

#: Seconds one peer run may take before it is killed, so that a slow peer cannot hold up
#: ``make bench``. The slowest full run, the Singer tap's W2 run with one request at a time,
#: takes under 90 s on the 2-core benchmark machine. A stopped run is reported with the
#: records it delivered by then and its rate over that time.
PEER_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class PeerPackage:
    """A peer's name, its virtualenv folder and the pinned requirement installed there."""

    name: str
    folder: str
    requirement: str

    @property
    def venv(self) -> Path:
        return PEERS_FOLDER / self.folder

    @property
    def version(self) -> str:
        return self.requirement.split("==", 1)[1]


DLT = PeerPackage("dlt rest_api", "dlt", "dlt==1.31.0")
AIRBYTE = PeerPackage("Airbyte declarative manifest", "airbyte", "airbyte-cdk==7.39.1")
SINGER = PeerPackage("Singer SDK tap", "singer", "singer-sdk==0.54.9")
PACKAGES = (DLT, AIRBYTE, SINGER)

#: Note on the Airbyte packages: the one that was not found, with the error pip reported.
AIRBYTE_NOTE = (
    "airbyte-cdk ships the `source-declarative-manifest` command; the separate "
    "`source-declarative-manifest` package is not on the package index used here (pip, "
    "when it was tried while the bench was set up: "
    "`ERROR: Could not find a version that satisfies the requirement "
    "source-declarative-manifest (from versions: none)`)."
)


def install(package: PeerPackage) -> tuple[bool, str]:
    """Create the peer's virtualenv and install its pinned requirement, once.

    Returns whether it is installed, and pip's last error lines when it is not.
    """
    stamp = package.venv / ".installed"
    if stamp.exists() and stamp.read_text() == package.requirement:
        return True, ""
    shutil.rmtree(package.venv, ignore_errors=True)
    print(f"  installing {package.requirement} into {package.venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(package.venv)], check=True)
    pip = subprocess.run(
        [str(package.venv / "bin" / "python"), "-m", "pip", "install", "-q", package.requirement],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if pip.returncode != 0:
        errors = [line for line in pip.stderr.splitlines() if line.startswith("ERROR")]
        return False, " ".join(errors[-3:]) or pip.stderr.strip()[-500:]
    stamp.write_text(package.requirement)
    return True, ""


def count_messages(messages: Path, kind: str = "RECORD") -> dict[str, int]:
    """Count the Airbyte or Singer RECORD messages per stream in a file of JSON lines."""
    counts: Counter[str] = Counter()
    with messages.open("rb") as file:
        for line in file:
            if b'"RECORD"' not in line:
                continue
            message = orjson.loads(line)
            if message.get("type") != kind:
                continue
            # Singer puts the stream beside the record, Airbyte inside it.
            stream = message["stream"] if "stream" in message else message["record"]["stream"]
            counts[stream] += 1
    return {stream: counts.get(stream, 0) for stream in W1_STREAMS}


class Peer:
    """A peer subject; subclasses build the command and count the delivered records."""

    package: PeerPackage
    max_runs: int | None = 1
    optional = True
    sequential = False
    """True for a peer without a concurrency setting; it then runs at one concurrency only."""

    @property
    def name(self) -> str:
        return f"{self.package.name} {self.package.version}"

    @property
    def python(self) -> Path:
        return self.package.venv / "bin" / "python"

    def run(self, server: ServerProcess, concurrency: int, folder: Path) -> Delivery:
        fresh_folder(folder)
        command, env = self.command(server, concurrency, folder)
        measurement = run_measured(
            command,
            cwd=folder,
            env=env,
            log=folder / "stderr.log",
            stdout=folder / "stdout.jsonl",
            server_pid=server.pid,
            timeout_s=PEER_TIMEOUT,
            expect_exit=None,
        )
        if measurement.exit_code != 0 and not measurement.extra["timed_out"]:
            tail = (folder / "stderr.log").read_text(errors="replace")[-2000:]
            raise CommandFailed(f"{self.name} exited {measurement.exit_code}:\n{tail}")
        records = self.count(folder, measurement)
        for child in folder.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
        (folder / "stdout.jsonl").unlink(missing_ok=True)
        return Delivery(measurement, records, command)

    def command(
        self, server: ServerProcess, concurrency: int, folder: Path
    ) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def count(self, folder: Path, measurement: Measurement) -> dict[str, int]:
        return count_messages(folder / "stdout.jsonl")


class DltPeer(Peer):
    package = DLT

    def command(
        self, server: ServerProcess, concurrency: int, folder: Path
    ) -> tuple[list[str], dict[str, str]]:
        command = [str(self.python), str(CONFIGS / "dlt_export.py"), "--api-url", server.api_url]
        command += ["--output", "out", "--concurrency", str(concurrency)]
        env = {
            "RUNTIME__DLTHUB_TELEMETRY": "false",
            "DATA_WRITER__DISABLE_COMPRESSION": "true",
            "HOME": str(folder / "home"),
        }
        return command, env

    def count(self, folder: Path, measurement: Measurement) -> dict[str, int]:
        tables = folder / "out" / "data" / "tm"
        return {
            stream: sum(count_lines(path) for path in (tables / stream).glob("*.jsonl"))
            for stream in W1_STREAMS
        }


class AirbytePeer(Peer):
    package = AIRBYTE

    def command(
        self, server: ServerProcess, concurrency: int, folder: Path
    ) -> tuple[list[str], dict[str, str]]:
        config: dict[str, Any] = {"api_url": server.api_url, "concurrency": concurrency}
        catalog = {
            "streams": [
                {
                    "stream": {
                        "name": stream,
                        "json_schema": {},
                        "supported_sync_modes": ["full_refresh"],
                    },
                    "sync_mode": "full_refresh",
                    "destination_sync_mode": "overwrite",
                }
                for stream in W1_STREAMS
            ]
        }
        (folder / "config.json").write_bytes(orjson.dumps(config))
        (folder / "catalog.json").write_bytes(orjson.dumps(catalog))
        command = [str(self.package.venv / "bin" / "source-declarative-manifest"), "read"]
        command += ["--config", "config.json", "--catalog", "catalog.json"]
        command += ["--manifest-path", str(CONFIGS / "airbyte_manifest.yaml")]
        return command, {"HOME": str(folder / "home")}


class SingerPeer(Peer):
    package = SINGER
    sequential = True

    def command(
        self, server: ServerProcess, concurrency: int, folder: Path
    ) -> tuple[list[str], dict[str, str]]:
        (folder / "config.json").write_bytes(orjson.dumps({"api_url": server.api_url}))
        command = [str(self.python), str(CONFIGS / "tap_tm.py"), "--config", "config.json"]
        return command, {"HOME": str(folder / "home")}


def install_peers() -> tuple[list[Peer], dict[str, dict[str, Any]]]:
    """Install every peer; return the usable ones and a description of each for the page."""
    usable: list[Peer] = []
    described: dict[str, dict[str, Any]] = {}
    for peer in (DltPeer(), AirbytePeer(), SingerPeer()):
        installed, error = install(peer.package)
        note = f"pip failed: {error}" if error else ""
        if peer.package is AIRBYTE:
            note = (note + " " + AIRBYTE_NOTE).strip()
        described[peer.package.name] = {
            "version": peer.package.version,
            "installed": installed,
            "requirement": peer.package.requirement,
            "note": note,
        }
        if installed:
            usable.append(peer)
    return usable, described

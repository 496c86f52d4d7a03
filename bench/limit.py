"""The least work that the W1 and W2 export can take: a reference for tm-export's speed.

Fetches every page of the public project list, then for each project its abbreviated
detail, its contributions and every page of its activities, at most ``--concurrency``
requests at a time, and writes each record as one JSON line (with the same leading
``_partition`` key that tm-export writes) to one file per stream. It has no retries,
no manifest, no fsync and no de-duplication: any failed request stops it with exit 1.
It prints the record count of each stream as JSON on stdout.

    python bench/limit.py --api-url http://127.0.0.1:PORT/api/v2 --output DIR
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import orjson

STREAMS = ("projects", "details", "contributions", "activities")

#: The query tm-export sends for the ``projects`` endpoint with
#: ``projectStatuses: [PUBLISHED, ARCHIVED]`` (the catalog's defaults included).
PROJECTS_QUERY = {
    "omitMapResults": "true",
    "orderBy": "id",
    "orderByType": "ASC",
    "projectStatuses": "PUBLISHED,ARCHIVED",
}

Job = tuple[str, int, int]
"""(kind, project id, page); the project id is 0 for pages of the project list."""


class Export:
    def __init__(self, session: aiohttp.ClientSession, api_url: str, output: Path) -> None:
        self.session = session
        self.api_url = api_url.rstrip("/")
        self.files: dict[str, BinaryIO] = {
            name: (output / f"{name}.jsonl").open("wb") for name in STREAMS
        }
        self.counts = dict.fromkeys(STREAMS, 0)
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.errors: list[str] = []

    async def fetch(self, path: str, query: dict[str, str]) -> Any:
        async with self.session.get(self.api_url + path, params=query) as reply:
            if reply.status != 200:
                raise RuntimeError(f"GET {reply.url} returned {reply.status}")
            return orjson.loads(await reply.read())

    def write(self, stream: str, records: list[dict[str, Any]], project_id: int) -> None:
        if project_id:
            prefix = b'{"_partition":{"project_id":%d},' % project_id
            lines = b"".join(prefix + orjson.dumps(record)[1:] + b"\n" for record in records)
        else:
            lines = b"".join(orjson.dumps(record) + b"\n" for record in records)
        self.files[stream].write(lines)
        self.counts[stream] += len(records)

    async def handle(self, kind: str, project_id: int, page: int) -> None:
        if kind == "projects":
            body = await self.fetch("/projects/", {**PROJECTS_QUERY, "page": str(page)})
            records = body["results"]
            self.write("projects", records, 0)
            if page == 1:
                for number in range(2, body["pagination"]["pages"] + 1):
                    self.queue.put_nowait(("projects", 0, number))
            for record in records:
                pid = record["projectId"]
                self.queue.put_nowait(("details", pid, 1))
                self.queue.put_nowait(("contributions", pid, 1))
                self.queue.put_nowait(("activities", pid, 1))
        elif kind == "details":
            body = await self.fetch(f"/projects/{project_id}/", {"abbreviated": "true"})
            self.write("details", [body], project_id)
        elif kind == "contributions":
            body = await self.fetch(f"/projects/{project_id}/contributions/", {})
            self.write("contributions", body["userContributions"], project_id)
        else:
            body = await self.fetch(f"/projects/{project_id}/activities/", {"page": str(page)})
            self.write("activities", body["activity"], project_id)
            if page == 1:
                for number in range(2, body["pagination"]["pages"] + 1):
                    self.queue.put_nowait(("activities", project_id, number))

    async def worker(self) -> None:
        while True:
            kind, project_id, page = await self.queue.get()
            try:
                await self.handle(kind, project_id, page)
            except Exception as error:  # no retries: note it and let the run finish
                self.errors.append(f"{kind} {project_id} page {page}: {error!r}")
            finally:
                self.queue.task_done()

    def close(self) -> None:
        for file in self.files.values():
            file.close()


async def run(api_url: str, output: Path, concurrency: int) -> int:
    output.mkdir(parents=True, exist_ok=True)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        export = Export(session, api_url, output)
        export.queue.put_nowait(("projects", 0, 1))
        workers = [asyncio.create_task(export.worker()) for _ in range(concurrency)]
        await export.queue.join()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        export.close()

    sys.stdout.write(orjson.dumps({"records": export.counts}).decode() + "\n")
    for error in export.errors[:10]:
        print(f"limit.py: failed: {error}", file=sys.stderr)
    return 1 if export.errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", required=True, help="API root, http://127.0.0.1:PORT/api/v2")
    parser.add_argument("--output", required=True, type=Path, help="folder for the stream files")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    options = parser.parse_args()
    return asyncio.run(run(options.api_url, options.output, options.concurrency))


if __name__ == "__main__":
    sys.exit(main())

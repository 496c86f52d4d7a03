"""The W1/W2 job with dlt's ``rest_api`` source, written as JSON Lines to a local folder.

Run with the Python of the dlt virtualenv that ``bench/peers.py`` installs:

    python dlt_export.py --api-url http://127.0.0.1:PORT/api/v2 --output DIR --concurrency 8

Child resources (details, contributions, activities) are ``parallelized``, so dlt's
extract step runs their requests in a pool of ``--concurrency`` threads. The pages of one
partition are fetched one after the other. ``max_table_nesting=0`` keeps nested lists inside each row
as JSON, so every record is one row, comparable with one line of tm-export. Telemetry is
turned off in the environment by ``peers.py`` (RUNTIME__DLTHUB_TELEMETRY=false).
Prints the rows loaded per table as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import dlt
from dlt.sources.rest_api import rest_api_source

NEXT_PAGE = {
    "type": "page_number",
    "base_page": 1,
    "page_param": "page",
    "total_path": "pagination.pages",
}


def source_config(api_url: str) -> dict:
    per_project = "projects/{resources.projects.projectId}/"
    return {
        "client": {"base_url": api_url.rstrip("/") + "/"},
        "resource_defaults": {"write_disposition": "replace", "parallelized": True},
        "resources": [
            {
                "name": "projects",
                "parallelized": False,
                "endpoint": {
                    "path": "projects/",
                    "params": {
                        "omitMapResults": "true",
                        "orderBy": "id",
                        "orderByType": "ASC",
                        "projectStatuses": "PUBLISHED,ARCHIVED",
                    },
                    "data_selector": "results",
                    "paginator": NEXT_PAGE,
                },
            },
            {
                "name": "details",
                "endpoint": {
                    "path": per_project,
                    "params": {"abbreviated": "true"},
                    "data_selector": "$",
                    "paginator": "single_page",
                },
            },
            {
                "name": "contributions",
                "endpoint": {
                    "path": per_project + "contributions/",
                    "data_selector": "userContributions",
                    "paginator": "single_page",
                },
            },
            {
                "name": "activities",
                "endpoint": {
                    "path": per_project + "activities/",
                    "data_selector": "activity",
                    "paginator": NEXT_PAGE,
                },
            },
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--concurrency", type=int, default=8)
    options = parser.parse_args()

    os.environ["EXTRACT__WORKERS"] = str(options.concurrency)
    output = options.output.resolve()
    source = rest_api_source(source_config(options.api_url))
    source.max_table_nesting = 0
    pipeline = dlt.pipeline(
        pipeline_name="tm_bench",
        pipelines_dir=str(output / "pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=(output / "data").as_uri()),
        dataset_name="tm",
    )
    info = pipeline.run(source, loader_file_format="jsonl")
    counts = pipeline.last_trace.last_normalize_info.row_counts
    rows = {
        name: counts.get(name, 0) for name in ("projects", "details", "contributions", "activities")
    }
    print(json.dumps({"records": rows, "has_failed_jobs": info.has_failed_jobs}))
    return 1 if info.has_failed_jobs else 0


if __name__ == "__main__":
    sys.exit(main())

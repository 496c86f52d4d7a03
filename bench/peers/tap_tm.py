"""A small Singer tap (Meltano Singer SDK) for the W1/W2 job.

Run with the Python of the Singer virtualenv that ``bench/peers.py`` installs:

    python tap_tm.py --config config.json > messages.jsonl

``config.json`` contains ``{"api_url": "http://127.0.0.1:PORT/api/v2"}``. The tap writes
Singer messages (SCHEMA, RECORD, STATE) to stdout. The SDK sends requests one at a time,
so the tap has no concurrency setting. Schemas declare the keys only and allow any other
property, so records go out whole, as the server sent them.
"""

from __future__ import annotations

from typing import Any

from singer_sdk import RESTStream, Tap
from singer_sdk import typing as th
from singer_sdk.pagination import BasePageNumberPaginator

ANY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": True}


def schema_with_key(key: str) -> dict[str, Any]:
    return {**ANY_OBJECT, "properties": {key: {"type": ["integer", "string", "null"]}}}


class NextPage(BasePageNumberPaginator):
    """Follow TM's ``pagination.hasNext``."""

    def has_more(self, response: Any) -> bool:
        return bool(response.json().get("pagination", {}).get("hasNext"))


class TmStream(RESTStream):
    @property
    def url_base(self) -> str:
        return str(self.config["api_url"]).rstrip("/")


class ProjectChild(TmStream):
    """A stream read once per project of the ``projects`` stream.

    The SDK keeps one state bookmark per parent record by default, and each STATE message
    lists all of them, so the output grows with the square of the projects: a W1 run wrote
    1.1 GB of messages in 440 s. These streams have no replication key, so per-project
    bookmarks hold nothing to resume from. An empty ``state_partitioning_keys`` keeps one
    bookmark per stream, as the SDK's docstring of that property documents.
    """

    state_partitioning_keys = ()


class Projects(TmStream):
    name = "projects"
    path = "/projects/"
    primary_keys = ("projectId",)
    records_jsonpath = "$.results[*]"
    schema = schema_with_key("projectId")

    def get_new_paginator(self) -> NextPage:
        return NextPage(1)

    def get_url_params(self, context: Any, next_page_token: Any) -> dict[str, Any]:
        return {
            "omitMapResults": "true",
            "orderBy": "id",
            "orderByType": "ASC",
            "projectStatuses": "PUBLISHED,ARCHIVED",
            "page": next_page_token or 1,
        }

    def get_child_context(self, record: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"project_id": record["projectId"]}


class Details(ProjectChild):
    name = "details"
    path = "/projects/{project_id}/"
    parent_stream_type = Projects
    primary_keys = ("projectId",)
    records_jsonpath = "$"
    schema = schema_with_key("projectId")

    def get_url_params(self, context: Any, next_page_token: Any) -> dict[str, Any]:
        return {"abbreviated": "true"}


class Contributions(ProjectChild):
    name = "contributions"
    path = "/projects/{project_id}/contributions/"
    parent_stream_type = Projects
    primary_keys = ("username",)
    records_jsonpath = "$.userContributions[*]"
    schema = schema_with_key("username")


class Activities(ProjectChild):
    name = "activities"
    path = "/projects/{project_id}/activities/"
    parent_stream_type = Projects
    primary_keys = ("historyId",)
    records_jsonpath = "$.activity[*]"
    schema = schema_with_key("historyId")

    def get_new_paginator(self) -> NextPage:
        return NextPage(1)

    def get_url_params(self, context: Any, next_page_token: Any) -> dict[str, Any]:
        return {"page": next_page_token or 1}


class TapTm(Tap):
    name = "tap-tm-bench"
    config_jsonschema = th.PropertiesList(
        th.Property("api_url", th.StringType, required=True),
    ).to_dict()

    def discover_streams(self) -> list[TmStream]:
        return [Projects(self), Details(self), Contributions(self), Activities(self)]


if __name__ == "__main__":
    TapTm.cli()

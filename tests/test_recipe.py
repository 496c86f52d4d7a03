"""Recipe validation as a user meets it: the CLI on malformed recipes, valid recipes, the hash.

Every file in ``tests/recipes/bad`` is one malformed recipe. ``EXPECTED`` contains the exact
message for each, without the ``tm-export: error: FILE:`` prefix. Run the CLI on one with
``tm-export validate tests/recipes/bad/NAME.yaml`` to see it.
"""

from __future__ import annotations

import random
import re
import shutil
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from tm_export.cli import main
from tm_export.errors import RecipeError
from tm_export.params import Constant, DateWindows, Each
from tm_export.recipe import (
    DEFAULT_MAX_PAGES,
    Instance,
    Retries,
    Timeouts,
    load_recipe,
    resolve_token,
)

TESTS = Path(__file__).parent
REPO = TESTS.parent
CORPUS = TESTS / "recipes" / "bad"

EXPECTED: dict[str, str] = {
    "base_url_without_host": (
        "3: instance.base_url: invalid URL 'https:///api/v2': it has no host name; expected "
        "the API root, such as https://tasking-manager-production-api.hotosm.org/api/v2"
    ),
    "base_url_without_scheme": (
        "3: instance.base_url: invalid URL "
        "'tasking-manager-production-api.hotosm.org/api/v2': it must start with http:// or "
        "https://; expected the API root URL, such as "
        "https://tasking-manager-production-api.hotosm.org/api/v2"
    ),
    "concurrency_string": (
        "3: instance.concurrency: invalid value '8' (a string); expected an integer from 1 to"
        " 256, the requests in flight at once"
    ),
    "concurrency_too_high": (
        "3: instance.concurrency: invalid value 1000; expected an integer from 1 to 256, the "
        "requests in flight at once"
    ),
    "contact_with_line_break": (
        "3: instance.contact: invalid contact 'me@example.org\\nX-Injected: 1': it goes into "
        "the User-Agent header; expected printable ASCII on one line, such as an email "
        "address or a URL"
    ),
    "date_bad_format": (
        "9: streams.task_stats.params.dates.start: invalid date '2025/01/01'; expected "
        "YYYY-MM-DD, such as 2025-01-31"
    ),
    "date_constant_bad_format": (
        "10: streams.task_stats.params.endDate: invalid date 'not-a-date'; expected "
        "YYYY-MM-DD, such as 2025-01-31"
    ),
    "date_constant_not_in_calendar": (
        "9: streams.task_stats.params.startDate: invalid date '2026-13-01': there is no month "
        "13; expected a real date as YYYY-MM-DD"
    ),
    "date_constants_one_digit_too_long": (
        "10: streams.task_stats.params.endDate: startDate..endDate covers 731 days, more than"
        " the 366 that endpoint 'tasks_statistics' accepts in one request; use dates: {start:"
        " 2024-01-01, end: 2025-12-31} in place of both, and the tool splits it"
    ),
    "date_constants_too_long": (
        "10: streams.task_stats.params.endDate: startDate..endDate covers 731 days, more than"
        " the 366 that endpoint 'tasks_statistics' accepts in one request; use dates: {start:"
        " 2024-01-01, end: 2025-12-31} in place of both, and the tool splits it"
    ),
    "date_not_in_calendar": (
        "11: streams.task_stats.params.dates.end: invalid date '2025-02-30': 2025-02 has 28 "
        "days; expected a real date as YYYY-MM-DD"
    ),
    "date_param_set_twice": (
        "10: streams.task_stats.params.startDate: parameter 'startDate' is already set by "
        "'dates' on line 9; set each parameter once"
    ),
    "date_step_fortnight": (
        "9: streams.task_stats.params.dates.step: invalid step '1 fortnight': unknown unit; "
        "expected a count and day, week, month or year"
    ),
    "date_step_zero": (
        "9: streams.task_stats.params.dates.step: invalid step '0 months': the count must be "
        "1 or more, such as '1 month'"
    ),
    "date_window_bind_end_first": (
        "10: streams.projects.params.created.bind: bind lists the end parameter first; "
        "expected [createdFrom, createdTo]"
    ),
    "date_window_bind_unknown_param": (
        "10: streams.projects.params.created.bind[1]: unknown parameter for endpoint "
        "'projects'; did you mean 'createdTo'? valid parameters: action, basedOnMyInterests, "
        "campaign, country, createdByMe, createdFrom, createdTo, database, difficulty, "
        "favoritedByMe, imagery, interests, lastUpdatedFrom, lastUpdatedTo, managedByMe, "
        "mappedByMe, mappingTypes, mappingTypesExact, omitMapResults, orderBy, orderByType, "
        "organisationId, organisationName, partnerId, partnershipFrom, partnershipTo, "
        "projectStatuses, sandbox, teamId, textSearch"
    ),
    "date_window_on_endpoint_without_window": (
        "7: streams.projects.params.dates: endpoint 'projects' has no date window of its own;"
        " add bind: [startParam, endParam] to name the two parameters the window sets, such "
        "as bind: [createdFrom, createdTo]"
    ),
    "date_window_reversed": (
        "11: streams.task_stats.params.dates.end: the date window ends (2025-01-31) before it"
        " starts (2025-12-01); expected end >= start"
    ),
    "date_window_under_other_key": (
        "9: streams.task_stats.params.period: a date window of endpoint 'tasks_statistics' "
        "goes under the key 'dates', which sets startDate and endDate; rename 'period' to "
        "'dates'"
    ),
    "date_window_without_end": (
        "9: streams.task_stats.params.dates.end: missing key; a date window needs start and "
        "end, as in {start: YYYY-MM-DD, end: YYYY-MM-DD, step: '1 month'}"
    ),
    "dates_constant": (
        "9: streams.task_stats.params.dates: 'dates' takes a date window; expected {start: "
        "YYYY-MM-DD, end: YYYY-MM-DD, step: '1 month'}"
    ),
    "document_marker_only": (
        "2: (top level): the file contains no value (null), not a mapping; a recipe is a YAML "
        "mapping with the keys version, output and streams"
    ),
    "duplicate_param": (
        "9: streams.projects.params.projectStatuses: duplicate key; it is first defined on "
        "line 7, so remove one of them or rename it"
    ),
    "duplicate_stream_name": (
        "8: streams.projects: duplicate key; it is first defined on line 4, so remove one of "
        "them or rename it"
    ),
    "duplicate_top_level_key": (
        "6: output: duplicate key; it is first defined on line 2, so remove one of them or "
        "rename it"
    ),
    "each_duplicate_value": (
        "11: streams.details.params.project_id.each[2]: duplicate value 101 (each[0] already "
        "has it); list each value once"
    ),
    "each_empty": (
        "7: streams.details.params.project_id.each: each needs at least one value; expected "
        "[value, ...]"
    ),
    "empty": (
        "1: the file is empty; a recipe is a YAML mapping with the keys version, output and "
        "streams (see docs/recipes.md)"
    ),
    "endpoint_unknown": (
        "5: streams.changesets.endpoint: unknown endpoint 'changesets'; run 'tm-export "
        "endpoints' for the list"
    ),
    "endpoint_unknown_close_match": (
        "5: streams.summaries.endpoint: unknown endpoint 'project_summry'; did you mean "
        "'project_summary'? run 'tm-export endpoints' for the list"
    ),
    "from_cycle_three_streams": (
        "7: streams.details.params.project_id.from: streams take values from each other in a "
        "cycle: details -> contributions -> summaries -> details; a stream can only take "
        "values from a stream that does not depend on it"
    ),
    "from_cycle_two_streams": (
        "7: streams.details.params.project_id.from: streams take values from each other in a "
        "cycle: details -> summaries -> details; a stream can only take values from a stream "
        "that does not depend on it"
    ),
    "from_missing_stream": (
        "9: streams.details.params.project_id.from: stream 'project' does not exist; did you "
        "mean 'projects'? valid streams: projects"
    ),
    "from_partition_of_unpartitioned": (
        "8: streams.details.params.project_id.from: stream 'projects' has no varying "
        "parameters, so its records have no _partition; name a field of its records"
    ),
    "from_partition_unknown_param": (
        "10: streams.tasks.params.project_id.from: _partition of stream 'grid' has only the "
        "parameters it varies; did you mean grid._partition.project_id? valid: "
        "grid._partition.project_id"
    ),
    "from_self_reference": (
        "7: streams.details.params.project_id.from: a stream cannot take values from its own "
        "records; name another stream"
    ),
    "from_two_streams": (
        "16: streams.tasks.params.task_id.from: all from parameters of a stream must name one "
        "stream, because their values are taken together from each of its records; "
        "'project_id' already takes values from 'projects'"
    ),
    "from_whole_record_of_objects": (
        "9: streams.details.params.project_id.from: the records of endpoint 'projects' are "
        "objects, and $ takes records that are strings or numbers; name a field of its "
        "records, such as projects.projectId"
    ),
    "from_whole_record_in_path": (
        "10: streams.by_country.params.country.from: $ stands for the whole record and cannot "
        "be part of a path; write countries.$ for the record itself, or a dotted path of field "
        "names"
    ),
    "from_without_field": (
        "9: streams.details.params.project_id.from: invalid reference 'projects'; expected "
        "STREAM.FIELD: a stream name, a dot and a field of its records, such as "
        "projects.projectId, or $ for records that are text, such as countries.$"
    ),
    "max_pages_zero": (
        "6: streams.projects.max_pages: invalid value 0; expected an integer of 1 or more, "
        "the most pages fetched per partition"
    ),
    "missing_streams": (
        "1: streams: missing key; expected a mapping of stream names to streams, at least one"
    ),
    "missing_version": (
        "1: version: missing key; expected the recipe format version, the integer 1"
    ),
    "only_comments": (
        "1: the file contains only comments or blank lines; a recipe is a YAML mapping with the "
        "keys version, output and streams"
    ),
    "output_empty_string": (
        "2: output: invalid value ''; expected the folder to write the export to, relative to"
        " the current folder, such as exports/projects"
    ),
    "param_empty_list": (
        "7: streams.projects.params.projectStatuses: an empty list sends nothing; give at "
        "least one value or remove the key"
    ),
    "param_for_endpoint_without_params": (
        "7: streams.campaigns.params.orderBy: unknown parameter for endpoint 'campaigns'; "
        "valid parameters: none, it takes no parameters"
    ),
    "param_mixed_forms": (
        "7: streams.details.params.project_id: a value takes one form, but this one mixes "
        "each and range; expected a constant, a list, {each: [...]}, {range: [first, last]}, "
        "{from: STREAM.FIELD} or {start: YYYY-MM-DD, end: YYYY-MM-DD, step: '1 month'}"
    ),
    "param_null": (
        "7: streams.projects.params.textSearch: the value is empty (null); give a value, "
        "indent the value's keys (such as from: or start:) under the parameter, or remove it"
    ),
    "param_page": (
        "7: streams.projects.params.page: the tool sets 'page' itself on a paginated "
        "endpoint; remove this parameter"
    ),
    "param_refused": (
        "8: streams.detail.params.as_file: not allowed for endpoint 'project': as_file=true "
        "makes the server rename every key of the project to snake_case, so the records would "
        "lack projectId; remove it, the record holds the same data without it"
    ),
    "param_unknown": (
        "7: streams.projects.params.projectStatus: unknown parameter for endpoint 'projects';"
        " did you mean 'projectStatuses'? valid parameters: action, basedOnMyInterests, "
        "campaign, country, createdByMe, createdFrom, createdTo, database, difficulty, "
        "favoritedByMe, imagery, interests, lastUpdatedFrom, lastUpdatedTo, managedByMe, "
        "mappedByMe, mappingTypes, mappingTypesExact, omitMapResults, orderBy, orderByType, "
        "organisationId, organisationName, partnerId, partnershipFrom, partnershipTo, "
        "projectStatuses, sandbox, teamId, textSearch"
    ),
    "param_unknown_form": (
        "7: streams.details.params.project_id.values: unknown key in a parameter value; "
        "expected a constant, a list, {each: [...]}, {range: [first, last]}, {from: "
        "STREAM.FIELD} or {start: YYYY-MM-DD, end: YYYY-MM-DD, step: '1 month'}"
    ),
    "param_yaml_tag": (
        "7: streams.details.params.project_id: unsupported YAML tag '!id'; remove the tag"
    ),
    "path_id_boolean": (
        "7: streams.details.params.project_id: invalid id 'true'; expected a whole number of "
        "0 or more, such as 42"
    ),
    "path_id_each_fraction": (
        "7: streams.details.params.project_id.each[1]: invalid id '1.5'; expected a whole "
        "number of 0 or more, such as 42"
    ),
    "path_id_too_large": (
        "7: streams.details.params.project_id.each[1]: invalid id '99999999999999999999999'; "
        "expected a whole number of 0 or more and at most 9223372036854775807, such as 42"
    ),
    "integer_out_of_range": (
        "7: streams.projects.params.textSearch.each[1]: the integer 99999999999999999999999 is "
        "out of range; expected one of 64 bits, from -9223372036854775808 to "
        "9223372036854775807"
    ),
    "streams_as_list": (
        '3: streams: invalid value [{"endpoint": "countries"}] (a list); expected a mapping of '
        "stream names to streams, at least one"
    ),
    "param_beside_endpoint": (
        "6: streams.contributions.project_id: unknown key; if project_id is a parameter of the "
        "endpoint, indent it under params; valid keys: auth, endpoint, key, max_pages, "
        "paginated, params, path, records"
    ),
    "version_float": "1: version: invalid value 1.0 (a number); expected the integer 1",
    "search_status_lowercase": (
        "7: streams.p.params.projectStatuses[1]: invalid project status 'published'; expected "
        "PUBLISHED, ARCHIVED, DRAFT, in capitals"
    ),
    "search_sort_direction_lowercase": (
        "7: streams.p.params.orderByType: invalid sort direction 'desc'; expected ASC or DESC, "
        "in capitals (the server sorts in ascending order for any other value)"
    ),
    "search_difficulty_lowercase": (
        "7: streams.p.params.difficulty.each[1]: invalid difficulty 'moderate'; expected EASY, "
        "MODERATE, CHALLENGING, ALL, in capitals (the server matches no project for any other "
        "value)"
    ),
    "search_difficulty_list": (
        "7: streams.p.params.difficulty: difficulty takes one value, not a list; use "
        "{each: [...]} for one partition per value"
    ),
    "search_date_invalid": (
        "7: streams.p.params.createdFrom.each[1]: invalid date '2026-02-30': 2026-02 has 28 "
        "days; expected a real date as YYYY-MM-DD"
    ),
    "stream_name_null": (
        "6: streams: a key here is YAML's null (written null, Null, NULL or ~), not a name; put "
        "the key in quotes, or choose another name"
    ),
    "stream_name_true": (
        "4: streams: a key here is YAML's true, not a name; put the key in quotes, or choose "
        "another name"
    ),
    "path_id_each_same_number": (
        "7: streams.details.params.project_id.each[1]: duplicate value '01' (each[0] already "
        "has it); list each value once"
    ),
    "path_param_list": (
        "7: streams.details.params.project_id: a path parameter takes one value, not a list; "
        "use {each: [...]} for one partition per value"
    ),
    "path_param_missing": (
        "5: streams.tasks.endpoint: missing path parameter 'project_id' of "
        "/projects/{project_id}/tasks/; set it under params to a value, {each: [...]}, "
        "{range: [first, last]} or {from: STREAM.FIELD}"
    ),
    "path_param_missing_with_params": (
        "6: streams.task.params: missing path parameter 'task_id' of "
        "/projects/{project_id}/tasks/{task_id}/; set it under params to a value, {each: "
        "[...]}, {range: [first, last]} or {from: STREAM.FIELD}"
    ),
    "path_param_with_slash": (
        "9: streams.user_stats.params.username.each[1]: invalid path parameter value "
        "'bob/../admin'; expected a value that is not empty and has no '/', '?' or '#'"
    ),
    "range_not_integer": (
        "7: streams.details.params.project_id.range[1]: invalid range bound 'ten' (a string);"
        " expected an integer"
    ),
    "range_one_element": (
        "7: streams.details.params.project_id.range: invalid range [1]; expected [first, "
        "last] or [first, last, step], two or three integers"
    ),
    "range_reversed": (
        "7: streams.details.params.project_id.range: the range ends (1) before it starts "
        "(100); expected [first, last] with first <= last"
    ),
    "query_param_required_missing": (
        "7: streams.stats.params: missing query parameter 'startDate', without which the "
        "server rejects every request to /tasks/statistics/ (422); set a date window, such as "
        "dates: {start: 2026-01-01, end: 2026-12-31, step: 1 month}, or startDate and endDate "
        "constants"
    ),
    "range_negative_id": (
        "7: streams.details.params.project_id.range: invalid first id -5; expected ids of 0 or "
        "more, such as [1, 500]"
    ),
    "range_step_zero": (
        "7: streams.details.params.project_id.range: invalid step 0; expected [first, last, "
        "step] with a step of 1 or more"
    ),
    "range_too_many_partitions": (
        "6: streams.details.params: the parameters make more than 1,000,000 partitions "
        "(project_id: 20,000,000); narrow the ranges, lists or date windows"
    ),
    "rate_limit_infinite": "3: instance.rate_limit: invalid number inf; expected a finite number",
    "rate_limit_word": (
        "3: instance.rate_limit: invalid rate 'fast'; expected requests per second for the "
        "whole run, a number of at least 0.01 such as 10 or 2.5/s"
    ),
    "rate_limit_zero": (
        "3: instance.rate_limit: invalid rate '0/s'; expected requests per second for the "
        "whole run, a number of at least 0.01 such as 10 or 2.5/s"
    ),
    "rate_limit_tiny": (
        "3: instance.rate_limit: invalid rate 1e-10; expected requests per second for the "
        "whole run, a number of at least 0.01 such as 10 or 2.5/s"
    ),
    "raw_path_and_endpoint": (
        "6: streams.projects.path: 'path' belongs to a raw path, but this stream names a "
        "catalog endpoint; remove 'path', or replace 'endpoint' with 'path'"
    ),
    "raw_path_auth_invalid": (
        "7: streams.featured.auth: invalid value 'yes'; expected none, optional or required: "
        "whether the path needs the API token"
    ),
    "raw_path_auth_required_without_token_env": (
        "7: streams.locked.auth: auth: required needs an API token, but instance.token_env is"
        " not set; set instance.token_env to the name of the environment variable that contains "
        "your TM API key, such as TM_API_TOKEN"
    ),
    "raw_path_relative": (
        "5: streams.featured.path: invalid path 'projects/queries/featured/': it must start "
        "with /; expected a path below the base URL, starting with /, such as "
        "/projects/{project_id}/"
    ),
    "raw_path_with_query": (
        "5: streams.featured.path: invalid path '/projects/queries/featured/?limit=10': it "
        "contains '?' or '#'; put query parameters under params; expected a path such as "
        "/projects/{project_id}/"
    ),
    "raw_path_without_records": (
        "5: streams.locked.path: a raw path needs 'records': the key of the record list in "
        "the response body, or '$' when the whole body is one record"
    ),
    "retries_attempts_zero": (
        "4: instance.retries.attempts: invalid value 0; expected an integer from 1 to 100, "
        "the attempts per request, the first included"
    ),
    "retries_wait_initial_above_max": (
        "4: instance.retries.wait_initial: wait_initial (60 s) is longer than wait_max (30 "
        "s); expected wait_initial <= wait_max"
    ),
    "stream_name_too_long": (
        f"4: streams.{'s' * 120}: invalid stream name: 120 characters (it becomes the file "
        "name STREAM.jsonl); expected at most 100"
    ),
    "stream_name_manifest": (
        "4: streams.manifest: invalid stream name 'manifest': data/manifest.jsonl is where a "
        "bag keeps the run's manifest; choose another name"
    ),
    "stream_name_with_dash": (
        "4: streams.all-projects: invalid stream name 'all-projects' (it becomes the file "
        "name STREAM.jsonl); expected letters, digits and _, not starting with a digit"
    ),
    "stream_without_body": (
        "4: streams.projects: invalid value null (an empty value); expected a mapping with "
        "endpoint (a catalog name) or path (a raw path), and optional params; if its entries "
        "follow on the next lines, indent them under it"
    ),
    "streams_not_indented": (
        "3: streams: invalid value null (an empty value); expected a mapping of stream names "
        "to streams, at least one; if its entries follow on the next lines, indent them under it"
    ),
    "stream_without_endpoint": (
        "4: streams.projects.endpoint: missing key; expected endpoint (a name that 'tm-export"
        " endpoints' lists) or path (a raw path such as /projects/{project_id}/)"
    ),
    "streams_empty": (
        "3: streams: the mapping is empty; expected a mapping of stream names to streams, at "
        "least one"
    ),
    "timeout_negative": (
        "5: instance.timeouts.read: invalid value -5; expected a number of seconds greater "
        "than 0 to wait for the next data"
    ),
    "token_env_set_to_a_key": (
        "4: instance.token_env: invalid environment variable name (22 characters, not shown "
        "because it may be the API key); "
        "expected the name of the environment variable that contains the API key, such as "
        "TM_API_TOKEN. Put the variable's name here, never the key itself"
    ),
    "token_env_with_dollar": (
        "2: instance.token_env: invalid environment variable name: it starts with $, which "
        "only a shell uses to read a variable; write the name alone, without $ or braces, since "
        "tm-export reads the variable itself"
    ),
    "token_env_tm_key": (
        "4: instance.token_env: the value (52 characters, not shown) looks like an API key, not "
        "the name of an environment variable: it decodes to a user id and a token. Put the key "
        "in a variable, such as TM_API_TOKEN, and its name here"
    ),
    "token_env_key_unpadded": (
        "4: instance.token_env: the value (50 characters, not shown) looks like an API key, not "
        "the name of an environment variable: it decodes to a user id and a token. Put the key "
        "in a variable, such as TM_API_TOKEN, and its name here"
    ),
    "token_env_key_shaped_name": (
        "4: instance.token_env: the value (48 characters, not shown) looks like an API key, not "
        "the name of an environment variable: it decodes to a user id and a token. Put the key "
        "in a variable, such as TM_API_TOKEN, and its name here"
    ),
    "token_env_unset": (
        "5: streams.users.endpoint: endpoint 'users' needs an API token, but "
        "instance.token_env is not set; set instance.token_env to the name of the environment"
        " variable that contains your TM API key, such as TM_API_TOKEN"
    ),
    "top_level_list": (
        "1: (top level): the file contains a list, not a mapping; a recipe is a YAML mapping "
        "with the keys version, output and streams"
    ),
    "top_level_string": (
        "1: (top level): the file contains the value 'recipes/demo.yaml', not a mapping; a "
        "recipe is a YAML mapping with the keys version, output and streams"
    ),
    "unknown_instance_key": (
        "3: instance.concurency: unknown key; did you mean 'concurrency'? valid keys: "
        "base_url, concurrency, contact, max_pages, rate_limit, retries, timeouts, token_env"
    ),
    "unknown_retries_key": (
        "4: instance.retries.max_attempts: unknown key; did you mean 'attempts'? valid keys: "
        "attempts, max_retry_after, wait_initial, wait_jitter, wait_max"
    ),
    "unknown_stream_key": (
        "6: streams.projects.parms: unknown key; did you mean 'params'? valid keys: auth, "
        "endpoint, key, max_pages, paginated, params, path, records"
    ),
    "unknown_timeouts_key": (
        "5: instance.timeouts.connection: unknown key; did you mean 'connect'? valid keys: "
        "connect, read, total"
    ),
    "unknown_top_level_key": (
        "3: stream: unknown key; did you mean 'streams'? valid keys: instance, output, "
        "streams, version"
    ),
    "version_quoted": (
        "1: version: invalid value '1' (a string); expected the integer 1, without quotes"
    ),
    "version_unsupported": (
        "1: version: unsupported version 2; this tool reads recipe version 1 only"
    ),
    "yaml_bad_escape": (
        "2: invalid YAML: found unknown escape character 'd' in a double-quoted string at "
        "column 13; use single quotes, or write \\\\ for a backslash"
    ),
    "yaml_bad_indentation": (
        "6: invalid YAML: this line is indented differently from the rest of the mapping that"
        " starts on line 4; indent every entry of one mapping by the same number of spaces"
    ),
    "yaml_colon_in_plain_value": (
        "4: invalid YAML: unexpected ':' at column 18; check the indentation of this line, or"
        " quote a value that contains ': '"
    ),
    "yaml_list_item_among_keys": (
        "3: invalid YAML: a list item ('-') stands among the keys of the mapping that starts "
        "on line 1; put the list under a key, indented below it"
    ),
    "yaml_missing_colon": (
        "2: invalid YAML: this line has no ':' after its key; write KEY: VALUE, with a space "
        "after the colon"
    ),
    "yaml_tab_after_key": (
        "5: invalid YAML: a tab character at column 14; YAML separates a key from its value, "
        "and a value from a comment, with spaces only, so replace the tab with a space"
    ),
    "yaml_tab_indentation": (
        "5: invalid YAML: a tab character indents this line; YAML indents with spaces only, "
        "so replace the tab with spaces"
    ),
    "yaml_two_documents": (
        "6: invalid YAML: a second YAML document starts here; a recipe is one document, so "
        "remove the '---' line and what follows"
    ),
    "yaml_unclosed_bracket": (
        "6: invalid YAML: the '[' at column 31 is not closed where expected: line 6 has '}' "
        "at column 51; separate items with ',' and close with ']'"
    ),
    "yaml_unclosed_bracket_at_end": (
        "7: invalid YAML: the '[' at column 24 is never closed; close it with ']'"
    ),
    "yaml_unclosed_quote": (
        "2: invalid YAML: the quoted string that starts at column 9 is never closed; add the "
        "closing quote"
    ),
    "yaml_undefined_alias": (
        "6: invalid YAML: '*water' refers to an anchor '&water' that is not defined before "
        "it; quote the value if the '*' is part of it"
    ),
}


# --- helpers ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test here that opens a connection: a recipe error must stop all requests."""

    def reject_connect(self: socket.socket, *args: object) -> None:
        raise AssertionError(f"a recipe test tried to connect to {args}")

    monkeypatch.setattr(socket.socket, "connect", reject_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", reject_connect)


def invoke(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    """Run the CLI in this process and return its exit code, stdout and stderr."""
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def files_in(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


CASES = sorted(EXPECTED)


# --- the corpus of malformed recipes -----------------------------------------------------


def test_corpus_and_table_match() -> None:
    on_disk = sorted(path.stem for path in CORPUS.glob("*.yaml"))

    assert on_disk == CASES
    assert len(CASES) >= 45


@pytest.mark.parametrize("name", CASES, ids=CASES)
def test_bad_recipe_rejected(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = f"{name}.yaml"
    shutil.copyfile(CORPUS / recipe, tmp_path / recipe)
    monkeypatch.chdir(tmp_path)

    code, stdout, stderr = invoke("validate", recipe)

    assert stderr == f"tm-export: error: {recipe}:{EXPECTED[name]}\n"
    assert code == 2
    assert stdout == ""
    assert files_in(tmp_path) == [recipe]


@pytest.mark.parametrize(
    "name", ["concurrency_string", "date_window_reversed", "from_cycle_two_streams"]
)
def test_run_stops_on_bad_recipe(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = f"{name}.yaml"
    shutil.copyfile(CORPUS / recipe, tmp_path / recipe)
    monkeypatch.chdir(tmp_path)

    code, _, stderr = invoke("run", recipe, "--base-url", "http://127.0.0.1:9/api/v2")

    assert stderr == f"tm-export: error: {recipe}:{EXPECTED[name]}\n"
    assert code == 2
    assert files_in(tmp_path) == [recipe]


NOT_UTF8 = [
    pytest.param(
        "version: 1\noutput: out\nstreams:\n  projects:\n    endpoint: projects\n"
        "    params: {textSearch: café}\n".encode("latin-1"),
        "6: the recipe is not UTF-8 text (byte 0xe9 at offset 95); save the file as UTF-8",
        id="latin1",
    ),
    pytest.param(
        "version: 1\noutput: out\n".encode("utf-16"),
        "1: the recipe is not UTF-8 text (byte 0xff at offset 0); save the file as UTF-8",
        id="utf16",
    ),
]


@pytest.mark.parametrize(("data", "expected"), NOT_UTF8)
def test_recipe_not_utf8(
    data: bytes, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("recipe.yaml").write_bytes(data)

    code, _, stderr = invoke("validate", "recipe.yaml")

    assert stderr == f"tm-export: error: recipe.yaml:{expected}\n"
    assert code == 2
    assert files_in(tmp_path) == ["recipe.yaml"]


OUTPUT_ON_A_FILE = [
    pytest.param(
        "out",
        "2: output: 'out' is an existing file, not a folder; choose a folder path",
        id="output_is_a_file",
    ),
    pytest.param(
        "out/archive",
        "2: output: 'out' is an existing file, so 'out/archive' cannot be a folder below it; "
        "choose another folder path",
        id="output_below_a_file",
    ),
]


@pytest.mark.parametrize(("output", "expected"), OUTPUT_ON_A_FILE)
def test_output_on_existing_file(
    output: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("out").write_text("notes\n", encoding="utf-8")
    Path("recipe.yaml").write_text(
        f"version: 1\noutput: {output}\nstreams:\n  projects:\n    endpoint: projects\n",
        encoding="utf-8",
    )

    code, _, stderr = invoke("validate", "recipe.yaml")

    assert stderr == f"tm-export: error: recipe.yaml:{expected}\n"
    assert code == 2
    assert files_in(tmp_path) == ["out", "recipe.yaml"]
    assert Path("out").read_text(encoding="utf-8") == "notes\n"


NO_OUTPUT = "version: 1\nstreams:\n  projects:\n    endpoint: projects\n"


def test_recipe_without_output_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe may leave its output folder to run --output."""
    monkeypatch.chdir(tmp_path)
    Path("recipe.yaml").write_text(NO_OUTPUT, encoding="utf-8")

    code, stdout, stderr = invoke("validate", "recipe.yaml")

    assert code == 0
    assert stderr == "note: the recipe names no output folder; 'run' needs --output FOLDER\n"
    assert stdout == "recipe.yaml: valid recipe with 1 stream\n  projects: projects\n"
    assert load_recipe("recipe.yaml").output is None


def test_validate_names_every_from_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream with two from: parameters lists both fields, in the recipe's order."""
    monkeypatch.chdir(tmp_path)
    Path("recipe.yaml").write_text(
        "version: 1\noutput: out\nstreams:\n"
        "  grid:\n    endpoint: project_tasks\n    params: {project_id: {each: [1]}}\n"
        "  task:\n    endpoint: task\n    params:\n"
        "      project_id: {from: grid._partition.project_id}\n"
        "      task_id: {from: grid.properties.taskId}\n",
        encoding="utf-8",
    )

    code, stdout, stderr = invoke("validate", "recipe.yaml")

    assert (code, stderr) == (0, "")
    assert stdout == (
        "recipe.yaml: valid recipe with 2 streams\n  grid: project_tasks\n  task: task (values "
        "from grid._partition.project_id and grid.properties.taskId)\n"
    )


def test_recipe_file_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    code, _, stderr = invoke("validate", "missing.yaml")

    assert stderr == "tm-export: error: missing.yaml: recipe file not found; check the path\n"
    assert code == 2


def test_mutated_recipes_raise_recipe_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random edits of a valid recipe either load or raise RecipeError, never another error."""
    monkeypatch.chdir(tmp_path)
    valid = (TESTS / "recipes" / "every_form.yaml").read_text(encoding="utf-8")
    pieces = [
        "{",
        "}",
        "[",
        "]",
        ":",
        "- ",
        "\t",
        "\n",
        "'",
        '"',
        "*a",
        "&a",
        "!x ",
        "#",
        ",",
        "0",
        "-1",
        "null",
        ".nan",
        "2025-02-30",
        "|",
        "---",
        "<<: *a",
        "@",
        "\\",
        "é",
    ]
    rng = random.Random(20250101)
    recipe = tmp_path / "recipe.yaml"
    outcomes = {"loaded": 0, "rejected": 0}

    for _ in range(400):
        text = valid
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text) + 1)
            if rng.random() < 0.6:
                text = text[:at] + rng.choice(pieces) + text[at:]
            else:
                text = text[:at] + text[at + rng.randint(1, 8) :]
        recipe.write_text(text, encoding="utf-8")
        try:
            load_recipe(recipe)
        except RecipeError as error:
            assert re.match(rf"{re.escape(str(recipe))}(:\d+)?: \S", str(error)), str(error)
            outcomes["rejected"] += 1
        else:
            outcomes["loaded"] += 1

    assert outcomes["rejected"] > 100
    assert outcomes["loaded"] > 10


# --- valid recipes -----------------------------------------------------------------------

SHIPPED = sorted((REPO / "recipes").glob("*.yaml")) + [TESTS / "recipes" / "every_form.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=[path.stem for path in SHIPPED])
def test_valid_recipe_validates(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    token_env = load_recipe(path).instance.token_env
    env: dict[str, str | None] = {token_env: "a-test-key"} if token_env else {}

    code, stdout, stderr = invoke("validate", str(path), env=env)

    assert stderr == ""
    assert code == 0
    assert stdout.startswith(f"{path}: valid recipe with ")
    assert files_in(tmp_path) == []


def doc_examples() -> list[str]:
    text = (REPO / "docs" / "recipes.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    return [block for block in blocks if re.search(r"^version: 1$", block, re.MULTILINE)]


def test_doc_examples_load(tmp_path: Path) -> None:
    examples = doc_examples()

    assert len(examples) >= 3
    for number, example in enumerate(examples, start=1):
        path = tmp_path / f"example{number}.yaml"
        path.write_text(example, encoding="utf-8")
        load_recipe(path)


def write(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = "version: 1\noutput: out\nstreams:\n  campaigns:\n    endpoint: campaigns\n"


def test_minimal_recipe_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL))

    assert recipe.instance == Instance()
    assert recipe.instance.timeouts == Timeouts(connect=10.0, read=60.0, total=300.0)
    assert recipe.instance.retries == Retries(
        attempts=5, wait_initial=0.5, wait_max=30.0, wait_jitter=1.0, max_retry_after=300.0
    )
    assert recipe.instance.concurrency == 8
    assert recipe.instance.rate_limit == 10.0
    assert recipe.output == "out"
    assert recipe.streams["campaigns"].max_pages == DEFAULT_MAX_PAGES
    assert recipe.streams["campaigns"].varying == ()


def test_ids_as_integers(tmp_path: Path) -> None:
    """Ids written as text are kept as integers, as the server reads them, so each
    partition's ``_partition`` contains a number whichever way the recipe writes it."""
    text = MINIMAL.replace(
        "streams:\n",
        "streams:\n  details:\n    endpoint: project\n"
        '    params: {project_id: {each: ["2", 3, "0040"]}}\n'
        '  tasks:\n    endpoint: project_tasks\n    params: {project_id: "007"}\n',
    )

    recipe = load_recipe(write(tmp_path, text))

    assert recipe.streams["details"].varying == (Each("project_id", (2, 3, 40)),)
    assert recipe.streams["tasks"].constants == (Constant("project_id", "7"),)


@pytest.mark.parametrize(
    ("written", "rate"),
    [
        (".5/s", 0.5),
        ("5./s", 5.0),
        ("2.5 / s", 2.5),
        ('"10"', 10.0),
        ("1e1/s", 10.0),
        ("5e3", 5000.0),
    ],
)
def test_rate_limit_forms(tmp_path: Path, written: str, rate: float) -> None:
    """The recipe reads a rate as the --rate-limit option does, with or without digits
    before the point."""
    text = MINIMAL.replace("output: out\n", f"output: out\ninstance: {{rate_limit: {written}}}\n")

    instance = load_recipe(write(tmp_path, text)).instance

    assert instance.rate_limit == rate


def test_instance_settings_read(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "output: out\n",
        "output: out\ninstance:\n  concurrency: 2.0\n  rate_limit: 2.5/s\n"
        "  timeouts: {connect: 1, read: 2.5, total: 30}\n"
        "  retries: {attempts: 3, wait_max: 4}\n  max_pages: 7\n",
    )

    instance = load_recipe(write(tmp_path, text)).instance

    assert instance.concurrency == 2
    assert isinstance(instance.concurrency, int)
    assert instance.rate_limit == 2.5
    assert instance.timeouts == Timeouts(connect=1.0, read=2.5, total=30.0)
    assert instance.retries == Retries(attempts=3, wait_max=4.0)
    assert instance.max_pages == 7


def test_streams_ordered_parents_first(tmp_path: Path) -> None:
    text = (
        "version: 1\noutput: out\nstreams:\n"
        "  tasks:\n    endpoint: project_tasks\n    params: {project_id: {from: details.projectId}}\n"
        "  details:\n    endpoint: project\n    params: {project_id: {from: projects.projectId}}\n"
        "  projects:\n    endpoint: projects\n"
    )

    recipe = load_recipe(write(tmp_path, text))

    assert list(recipe.streams) == ["projects", "details", "tasks"]


def test_every_form_model() -> None:
    recipe = load_recipe(TESTS / "recipes" / "every_form.yaml")
    raw = recipe.streams["locked"].endpoint
    created = recipe.streams["created"]
    stats = recipe.streams["task_stats"]

    assert raw.path == "/users/queries/tasks/locked/"
    assert raw.records == "$"
    assert raw.key is None
    assert raw.auth == "required"
    assert raw.paginated is False
    assert [(c.name, c.value) for c in created.constants] == [
        ("projectStatuses", "PUBLISHED,ARCHIVED"),
        ("textSearch", "2025-01-01"),
    ]
    window = created.varying[0]
    assert isinstance(window, DateWindows)
    assert (window.start_param, window.end_param, window.max_days) == (
        "createdFrom",
        "createdTo",
        None,
    )
    stats_window = stats.varying[0]
    assert isinstance(stats_window, DateWindows)
    assert (stats_window.start_param, stats_window.end_param) == ("startDate", "endDate")
    assert stats_window.max_days == 366


# --- the token ---------------------------------------------------------------------------

TOKEN_RECIPE = (
    "version: 1\noutput: out\ninstance:\n  contact: me@example.org\n  token_env: TM_API_TOKEN\n"
    "streams:\n  projects:\n    endpoint: projects\n  users:\n    endpoint: users\n"
)


def test_token_read_from_environment(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, TOKEN_RECIPE))

    assert resolve_token(recipe, {"TM_API_TOKEN": " a-test-key\n"}) == "a-test-key"


@pytest.mark.parametrize("environ", [{}, {"TM_API_TOKEN": "  "}], ids=["unset", "blank"])
def test_token_missing_rejected(environ: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, TOKEN_RECIPE)
    recipe = load_recipe(path)

    with pytest.raises(RecipeError) as caught:
        resolve_token(recipe, environ)

    assert str(caught.value) == (
        f"{path}:5: instance.token_env: the environment variable TM_API_TOKEN is not set or "
        "empty, but stream 'users' needs an API token; copy the API key from your Tasking "
        "Manager settings, export TM_API_TOKEN=<key> and run again"
    )


def test_token_missing_names_every_stream(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        TOKEN_RECIPE + "  stats:\n    endpoint: tasks_statistics\n"
        "    params: {dates: {start: 2026-01-01, end: 2026-01-31}}\n",
    )

    with pytest.raises(RecipeError) as caught:
        resolve_token(load_recipe(path), {})

    assert str(caught.value) == (
        f"{path}:5: instance.token_env: the environment variable TM_API_TOKEN is not set or "
        "empty, but streams 'users' and 'stats' need an API token; copy the API key from your "
        "Tasking Manager settings, export TM_API_TOKEN=<key> and run again"
    )


def test_token_with_line_break_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, TOKEN_RECIPE)

    with pytest.raises(RecipeError) as caught:
        resolve_token(load_recipe(path), {"TM_API_TOKEN": "a-test-key\nX-Other: 1"})

    assert str(caught.value) == (
        f"{path}:5: instance.token_env: the environment variable TM_API_TOKEN contains a line "
        "break or another control character; it must contain only the API key, on one line"
    )


def test_token_not_ascii_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, TOKEN_RECIPE)

    with pytest.raises(RecipeError) as caught:
        resolve_token(load_recipe(path), {"TM_API_TOKEN": "a-test-k\u00e9y"})

    assert str(caught.value) == (
        f"{path}:5: instance.token_env: the environment variable TM_API_TOKEN contains a "
        "character that is not ASCII, which an API key never has; copy the key again from "
        "your Tasking Manager settings"
    )
    assert "k\u00e9y" not in str(caught.value)


def test_token_optional_when_unneeded(tmp_path: Path) -> None:
    text = TOKEN_RECIPE.replace("  users:\n    endpoint: users\n", "")
    recipe = load_recipe(write(tmp_path, text))

    assert resolve_token(recipe, {}) is None


# --- the export hash ---------------------------------------------------------------------

HASHED = """\
version: 1
output: out
instance:
  concurrency: 4
  rate_limit: 5/s
  timeouts: {connect: 5, read: 30, total: 120}
  token_env: TM_API_TOKEN
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  details:
    endpoint: project
    params: {project_id: {from: projects.projectId}, abbreviated: true}
  task_stats:
    endpoint: tasks_statistics
    params:
      dates: {start: 2025-01-01, end: 2025-12-31, step: 1 month}
"""


def export_hash(folder: Path, text: str) -> str:
    return load_recipe(write(folder, text, "hashed.yaml")).export_hash()


def test_export_hash_stable(tmp_path: Path) -> None:
    first = export_hash(tmp_path, HASHED)

    assert export_hash(tmp_path, HASHED) == first
    # A changed value means archives started before the change can no longer resume.
    assert first == "9c166b7b37d7c532fef3dc023f593da7ac2f06f23ba15cbe61ef4f217650d4c7"


IGNORED = [
    pytest.param(("concurrency: 4", "concurrency: 64"), id="concurrency"),
    pytest.param(("rate_limit: 5/s", "rate_limit: 0.5"), id="rate_limit"),
    pytest.param(("{connect: 5, read: 30, total: 120}", "{read: 600}"), id="timeouts"),
    pytest.param(("  token_env:", "  retries: {attempts: 9}\n  token_env:"), id="retries"),
    pytest.param(("  token_env:", "  contact: me@example.org\n  token_env:"), id="contact"),
    pytest.param(("output: out", "output: elsewhere"), id="output"),
    pytest.param(
        (
            "    params: {projectStatuses: [PUBLISHED, ARCHIVED]}",
            "    # public ones\n    params:\n      projectStatuses:\n        - PUBLISHED\n        - ARCHIVED",
        ),
        id="yaml_layout",
    ),
]


@pytest.mark.parametrize("change", IGNORED)
def test_export_hash_ignores(change: tuple[str, str], tmp_path: Path) -> None:
    before, after = change
    assert before in HASHED

    assert export_hash(tmp_path, HASHED.replace(before, after)) == export_hash(tmp_path, HASHED)


CHANGED = [
    pytest.param(("[PUBLISHED, ARCHIVED]", "[PUBLISHED]"), id="constant"),
    pytest.param(("abbreviated: true", "abbreviated: false"), id="constant_bool"),
    pytest.param(("end: 2025-12-31", "end: 2025-11-30"), id="window_end"),
    pytest.param(("step: 1 month", "step: 1 week"), id="window_step"),
    pytest.param(
        (
            "project\n    params: {project_id: {from: projects.projectId}, abbreviated: true}",
            "project_summary\n    params: {project_id: {from: projects.projectId}}",
        ),
        id="endpoint",
    ),
    pytest.param(("from: projects.projectId", "from: projects.organisationId"), id="from_field"),
    pytest.param(("  details:", "  project_details:"), id="stream_name"),
    pytest.param(
        ("  task_stats:", "  campaigns:\n    endpoint: campaigns\n  task_stats:"), id="stream_added"
    ),
]


@pytest.mark.parametrize("change", CHANGED)
def test_export_hash_changes(change: tuple[str, str], tmp_path: Path) -> None:
    before, after = change
    assert before in HASHED

    assert export_hash(tmp_path, HASHED.replace(before, after)) != export_hash(tmp_path, HASHED)


def test_export_hash_covers_catalog_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, HASHED))

    assert recipe.streams["projects"].describe()["defaults"] == {
        "omitMapResults": "true",
        "orderBy": "id",
        "orderByType": "ASC",
    }

"""Records: keys, field values, the compact key set, and line encoding with the partition key."""

from __future__ import annotations

import dataclasses
import random

import orjson
import pytest

from tm_export.catalog import CATALOG
from tm_export.records import (
    KeySet,
    PathReach,
    ShapeError,
    empty_path_reason,
    encode_lines,
    extract_records,
    field_values,
    path_reach,
    record_key,
    strip_partition,
)


def test_key_set_ints_and_others() -> None:
    keys = KeySet()

    added = [
        keys.add(key) for key in (5, 5, 0, 2**30, 2**30, "mapper_ann", "mapper_ann", -1, 70_000)
    ]

    assert added == [True, False, True, True, False, True, False, True, True]
    assert len(keys) == 6


def test_key_set_large_bitmap_stays_small() -> None:
    keys = KeySet()
    for key in range(1_600_000):
        assert keys.add(key)

    assert not keys.add(1_599_999)
    assert len(keys) == 1_600_000
    assert keys.blocks == 391


def test_key_set_keeps_far_apart_ids_in_set() -> None:
    keys = KeySet()
    for index in range(10_000):
        assert keys.add(50_000_000 + 5_000 * index)

    assert not keys.add(50_000_000)
    assert len(keys) == 10_000
    assert keys.blocks == 0


def test_key_set_moves_near_ids_to_bitmap() -> None:
    keys = KeySet()
    for index in range(10_000):
        assert keys.add(50_000_000 + 10 * index)

    assert not keys.add(50_099_990)
    assert keys.add(50_099_991)
    assert len(keys) == 10_001
    assert keys.blocks == 25


def test_key_set_far_ids_return_to_set() -> None:
    keys = KeySet()
    for key in range(4_096):
        assert keys.add(key)
    assert keys.blocks == 1

    for index in range(4_096):
        assert keys.add(10_000_000 + 5_000 * index)

    # At 8,192 keys, 4,097 blocks take more than twice the memory of a set.
    assert keys.blocks == 0
    assert not keys.add(4_095)
    assert not keys.add(10_000_000)
    assert len(keys) == 8_192


def test_key_set_agrees_with_set() -> None:
    rng = random.Random(20261205)
    keys, reference = KeySet(), set()
    # Near ids first, so that the keys move to the bitmap, then a mix of every kind.
    for draw in range(30_000):
        near = rng.randrange(9_000)
        key = (
            near
            if draw < 8_000
            else rng.choice(
                [
                    near,
                    rng.randrange(2**40),
                    rng.choice([0, 4095, 4096, 8191, 8192, -1, -4096]),
                    f"mapper_{rng.randrange(500)}",
                ]
            )
        )
        assert keys.add(key) == (key not in reference)
        reference.add(key)
        if draw == 7_999:
            assert keys.blocks == 3

    # Far ids make most of the integer keys by the end, so they went back to the set.
    assert len(keys) == len(reference)
    assert keys.blocks == 0


def test_encode_lines_splices_partition() -> None:
    lines = encode_lines([{"a": 1}, {}, "Kenya"], {"project_id": 3})

    assert lines == (
        b'{"_partition":{"project_id":3},"a":1}\n'
        b'{"_partition":{"project_id":3}}\n'
        b'{"_partition":{"project_id":3},"value":"Kenya"}\n'
    )
    assert [strip_partition(orjson.loads(line)) for line in lines.splitlines()] == [
        {"a": 1},
        {},
        "Kenya",
    ]


def test_object_record_with_one_value_field_read_back() -> None:
    """A record whose one field is ``value`` holding an object keeps that field when it is
    read back, so a resume finds its key."""
    record = {"value": {"id": 1}}

    [line] = encode_lines([record], {"project_id": 3}).splitlines()

    assert line == b'{"_partition":{"project_id":3},"value":{"id":1}}'
    assert strip_partition(orjson.loads(line)) == record
    assert record_key("value.id", strip_partition(orjson.loads(line))) == 1


def test_record_key_paths() -> None:
    feature = {"type": "Feature", "properties": {"taskId": 7}}

    assert record_key("properties.taskId", feature) == 7
    assert record_key("$", "Kenya") == "Kenya"
    assert record_key(None, feature) is None
    assert record_key("projectId", {"name": "x"}) is None


ORGANISATION = {
    "organisationId": 2,
    "managers": [{"username": "pm_alice"}, {"username": "tm_admin"}, {"pictureUrl": None}],
    "teams": [],
    "projects": [7, 9, True, None],
    "slug": "hml",
}


def test_field_values_scalar_and_list() -> None:
    """A scalar gives one value; a list at the end gives each scalar item, not true or null."""
    assert field_values(ORGANISATION, "organisationId") == [2]
    assert field_values(ORGANISATION, "projects") == [7, 9]


def test_field_values_through_object_list() -> None:
    """A list of objects on the path gives the field of each object that has it."""
    assert field_values(ORGANISATION, "managers.username") == ["pm_alice", "tm_admin"]
    assert field_values(ORGANISATION, "teams.teamId") == []


def test_field_values_missing_path() -> None:
    assert field_values(ORGANISATION, "slug.name") == []
    assert field_values(ORGANISATION, "owner.username") == []
    assert field_values([ORGANISATION], "organisationId") == [2]


def test_field_values_whole_record() -> None:
    """$ gives a record that is a string itself, with or without its partition key."""
    assert field_values("Kenya", "$") == ["Kenya"]
    assert field_values({"_partition": {"page": 1}, "value": "Peru"}, "$") == ["Peru"]
    assert field_values(ORGANISATION, "$") == []


def test_empty_path_reason_strings() -> None:
    """A field of records that are strings points to $, and $ of objects to a field."""
    assert empty_path_reason("value", path_reach("Kenya", "value")) == (
        "the records are text, numbers or true/false, which have no value",
        "write $ in place of value to take each record itself",
    )
    assert empty_path_reason("$", path_reach(ORGANISATION, "$")) == (
        "the records are objects",
        "name one of their fields, such as organisationId",
    )
    assert empty_path_reason("$", path_reach(2.5, "$")) == (
        "the records are numbers with a fraction or true/false",
        "take values from a stream whose records are text or whole numbers",
    )
    assert empty_path_reason("$", path_reach(None, "$")) == ("the records are empty or null", None)


def test_path_reach_stops_where_path_ends() -> None:
    assert path_reach(ORGANISATION, "managers") == PathReach(1, "objects", ("username",))
    assert path_reach(ORGANISATION, "managers.usrname") == PathReach(1, "objects", ("username",))
    assert path_reach(ORGANISATION, "teams.teamId") == PathReach(1, "empty")
    assert path_reach(ORGANISATION, "slug.name") == PathReach(1, "values")
    assert path_reach(ORGANISATION, "owner") == PathReach(0, "objects", tuple(ORGANISATION))


def test_whole_body_needs_key() -> None:
    """An empty object where a project was expected is a shape error, not a record; a raw
    path's body is taken as it is."""
    project = CATALOG["project"]
    raw = dataclasses.replace(project, name="path:/projects/{project_id}/")

    with pytest.raises(ShapeError) as caught:
        extract_records(project, {})

    assert str(caught.value) == "the response has no 'projectId', which identifies its record"
    assert extract_records(project, {"projectId": 7}) == [{"projectId": 7}]
    assert extract_records(raw, {}) == [{}]
    with pytest.raises(ShapeError) as empty:
        extract_records(CATALOG["project_aoi"], {})
    assert str(empty.value) == "the response is an empty object, where a record was expected"

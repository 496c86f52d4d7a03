"""Records in a response body: finding them, identifying them, and writing them as lines."""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .catalog import WHOLE_BODY, Endpoint
from .params import Partition

#: Reserved key added to each record of a partitioned stream, holding the partition's values.
PARTITION_KEY = "_partition"


class ShapeError(ValueError):
    """A response body does not have the shape the endpoint promises."""

    #: False once the page's records were partly taken, so that fetching it again within
    #: the walk would count them as repeated.
    fetch_again = True
    #: The requests sent for the page, retries and the fetch once more included.
    attempts = 1

    @classmethod
    def not_json(cls, error: Exception) -> ShapeError:
        """Return the error for a body that a JSON parser rejected with ``error``.

        Only the first line of the parser's message is kept. The streaming parser quotes
        about 30 bytes of the body on the next lines, which may contain part of a secret.
        The redactor masks whole tokens only, so it would let that part through.
        """
        reason = (str(error).strip().splitlines() or ["no reason given"])[0]
        return cls(f"the response body is not valid JSON: {reason}")


class KeySet:
    """The record keys seen in one partition, compact for the common case of integer ids.

    TM ids (task, project, history ids) are non-negative integers. They go to a set first.
    Once there are ``FIRST_CHECK`` of them, and again at each doubling, they move to the
    form that takes less memory: the set, or a sparse bitmap in blocks of
    ``2 ** BLOCK_BITS`` bits, each made when a key first falls in it. A project with 1.6
    million tasks then costs about 240 KB, where a set of them takes about 100 MB. Ids far
    apart, as task history ids can be (they are numbered across the whole server), stay in
    the set, or go back to it, where a block per key would cost several times as much.
    Other keys always go to a set.
    """

    #: log2 of the keys per block: a block of 4,096 keys is 512 bytes, about 600 in use.
    BLOCK_BITS = 12
    #: Bytes of memory per block in use, and per int in a set (its slot and its object),
    #: as measured with tracemalloc on Python 3.11 (630 and 74), rounded.
    BLOCK_BYTES = 640
    SET_BYTES_PER_KEY = 75
    #: Integer keys at which the form is first chosen, and again at each doubling.
    FIRST_CHECK = 4096

    def __init__(self) -> None:
        self._ints: set[int] = set()
        self._blocks: dict[int, bytearray] | None = None
        self._int_count = 0
        self._others: set[Hashable] = set()
        self._size = 0
        self._next_check = self.FIRST_CHECK

    def __len__(self) -> int:
        return self._size

    @property
    def blocks(self) -> int:
        """The bitmap blocks in use; 0 while integer keys are kept in the set."""
        return 0 if self._blocks is None else len(self._blocks)

    def add(self, key: Hashable) -> bool:
        """Add ``key``; return False when it was already there."""
        if type(key) is int and key >= 0:
            if self._blocks is not None:
                if not self._set_bit(self._blocks, key):
                    return False
            elif key in self._ints:
                return False
            else:
                self._ints.add(key)
            self._int_count += 1
            if self._int_count >= self._next_check:
                self._choose_form()
        else:
            if key in self._others:
                return False
            self._others.add(key)
        self._size += 1
        return True

    def _choose_form(self) -> None:
        """Keep the integer keys in the set or the bitmap, whichever takes less memory.

        The bitmap goes back to a set only when it takes twice the set's memory, so that
        keys near the threshold do not move back and forth at each doubling.
        """
        self._next_check *= 2
        set_bytes = self._int_count * self.SET_BYTES_PER_KEY
        if self._blocks is None:
            numbers = {key >> self.BLOCK_BITS for key in self._ints}
            if len(numbers) * self.BLOCK_BYTES < set_bytes:
                blocks: dict[int, bytearray] = {}
                for key in self._ints:
                    self._set_bit(blocks, key)
                self._blocks, self._ints = blocks, set()
        elif len(self._blocks) * self.BLOCK_BYTES > 2 * set_bytes:
            self._ints = set(self._keys_in_blocks(self._blocks))
            self._blocks = None

    def _keys_in_blocks(self, blocks: dict[int, bytearray]) -> Iterator[int]:
        for number, block in blocks.items():
            bits = int.from_bytes(block, "little")
            while bits:
                lowest = bits & -bits
                yield (number << self.BLOCK_BITS) + lowest.bit_length() - 1
                bits ^= lowest

    def _set_bit(self, blocks: dict[int, bytearray], key: int) -> bool:
        """Set the bit of ``key``; return False when it was already set."""
        number = key >> self.BLOCK_BITS
        block = blocks.get(number)
        if block is None:
            block = blocks[number] = bytearray(1 << (self.BLOCK_BITS - 3))
        index, bit = (key & ((1 << self.BLOCK_BITS) - 1)) >> 3, 1 << (key & 7)
        if block[index] & bit:
            return False
        block[index] |= bit
        return True


def extract_records(endpoint: Endpoint, body: Any) -> list[Any]:
    """Return the records of a response body.

    Raises:
        ShapeError: the record list is missing or is not a list, or a catalog endpoint's
            whole-body record lacks the field that identifies it.
    """
    if endpoint.records == WHOLE_BODY:
        # A catalog endpoint's body names its record (a project's projectId), so a body
        # without that field, such as the empty object of a failing proxy, is no record.
        # Nor is an empty object where a body has no key field (an AOI, statistics).
        key = endpoint.key
        if not endpoint.raw and key not in (None, WHOLE_BODY) and record_key(key, body) is None:
            raise ShapeError(f"the response has no '{key}', which identifies its record")
        if not endpoint.raw and body == {}:
            raise ShapeError("the response is an empty object, where a record was expected")
        return [body]
    if not isinstance(body, dict):
        raise ShapeError(
            f"expected a JSON object with '{endpoint.records}', got {type(body).__name__}"
        )
    records = body.get(endpoint.records)
    if records is None and endpoint.records not in body:
        raise ShapeError(f"the response has no '{endpoint.records}' key")
    if records is None:
        return []
    if not isinstance(records, list):
        raise ShapeError(f"'{endpoint.records}' is {type(records).__name__}, not a list")
    return records


def record_key(key_path: str | None, record: Any) -> Hashable | None:
    """Return the value that identifies ``record``, or None when records have no key."""
    if key_path is None:
        return None
    if key_path == WHOLE_BODY:
        return _hashable(record)
    value = record
    for part in key_path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return _hashable(value)


def field_values(record: Any, field_path: str) -> list[Any]:
    """Return the scalar values at a dotted path.

    A list on the way yields the values of each of its items, so ``managers.username``
    gives the username of every manager, and a list at the end yields each item. The path
    ``$`` gives the record itself, as the server sent it: a stream of strings (countries)
    has no field to name.
    """
    if field_path == WHOLE_BODY:
        values = [strip_partition(record)]
    else:
        values = [record]
        for part in field_path.split("."):
            values = [
                item[part] for item in _items(values) if isinstance(item, dict) and part in item
            ]
    return [
        item
        for item in _items(values)
        if isinstance(item, int | str) and not isinstance(item, bool)
    ]


#: What a field path finds where it stops: objects, values (text, numbers, true or false),
#: or nothing (empty lists, null or a missing key).
Found = Literal["objects", "values", "empty"]


@dataclass(frozen=True, slots=True)
class PathReach:
    """How far a dotted field path goes into a record, for a path that gives no value."""

    depth: int
    """Leading parts of the path that the record has."""
    found: Found
    """The kind of value where the path stops."""
    keys: tuple[str, ...] = ()
    """The keys of the first object where the path stops."""


def path_reach(record: Any, field_path: str) -> PathReach:
    """Return how far a dotted path goes into a record, through lists."""
    if field_path == WHOLE_BODY:
        items = [item for item in _items([strip_partition(record)]) if item is not None]
        return _reach(1, items, [item for item in items if isinstance(item, dict)])
    parts = field_path.split(".")
    values = [record]
    for depth, part in enumerate(parts):
        items = [item for item in _items(values) if item is not None]
        objects = [item for item in items if isinstance(item, dict)]
        values = [item[part] for item in objects if part in item]
        if not values:
            return _reach(depth, items, objects)
    items = [item for item in _items(values) if item is not None]
    return _reach(len(parts), items, [item for item in items if isinstance(item, dict)])


def _reach(depth: int, items: list[Any], objects: list[dict[str, Any]]) -> PathReach:
    """Return the reach at ``depth``, given the non-null items and the objects found there."""
    if objects:
        return PathReach(depth, "objects", tuple(objects[0]))
    return PathReach(depth, "values" if items else "empty")


#: Rank of what a path reach found, at equal depth: objects give their keys for a hint.
_FOUND_ORDER: dict[Found, int] = {"empty": 0, "values": 1, "objects": 2}


def reaches_further(reach: PathReach, known: PathReach) -> bool:
    """Return True when ``reach`` goes further into the records than ``known``, or found
    something of a higher rank at the same depth."""
    return (reach.depth, _FOUND_ORDER[reach.found]) > (known.depth, _FOUND_ORDER[known.found])


def empty_path_reason(path: str, reach: PathReach) -> tuple[str, str | None]:
    """Return where a field path that gives no value stops in the records, and what to do
    about it when the path is likely wrong."""
    parts = path.split(".")
    check = "check the field in its from: parameter"
    done = ".".join(parts[: reach.depth])
    if reach.depth < len(parts):
        part = parts[reach.depth]
        if reach.found == "objects":
            fact = f"no record has {part}" if not done else f"no object in {done} has {part}"
            close = difflib.get_close_matches(part, reach.keys, n=1)
            if close:
                suggested = [*parts[: reach.depth], close[0], *parts[reach.depth + 1 :]]
                return fact, f"did you mean {'.'.join(suggested)}?"
            return fact, check
        if reach.found == "values" and not done:
            return (
                f"the records are text, numbers or true/false, which have no {part}",
                f"write $ in place of {path} to take each record itself",
            )
        if reach.found == "values":
            return f"{done} holds text, numbers or true/false, which have no {part}", check
        return f"{done or 'the records'} is empty or null in every record", None
    whole = path == WHOLE_BODY
    if reach.found == "objects":
        field = reach.keys[0] if reach.keys else "FIELD"
        return (
            "the records are objects" if whole else f"{path} holds objects",
            f"name one of their fields, such as {field if whole else f'{path}.{field}'}",
        )
    if whole and reach.found == "values":
        return (
            "the records are numbers with a fraction or true/false",
            "take values from a stream whose records are text or whole numbers",
        )
    if whole:
        return "the records are empty or null", None
    return f"{path} is empty, null or true/false in every record", None


def _items(values: list[Any]) -> list[Any]:
    """Return the values with each list replaced by its items."""
    return [item for value in values for item in (value if isinstance(value, list) else [value])]


def strip_partition(line_record: Any) -> Any:
    """Return the record as the server sent it, without the ``_partition`` key.

    ``encode_lines`` puts a record that is not an object under ``value``, so only such a
    value is taken back out: ``{"value": {...}}`` was an object record with one field.
    """
    if not isinstance(line_record, dict) or PARTITION_KEY not in line_record:
        return line_record
    # NOTE: an object record whose only field is "value", with a number, string or list
    # in it, is written as that value would be. So it is read back as the bare value.
    if set(line_record) == {PARTITION_KEY, "value"} and not isinstance(line_record["value"], dict):
        return line_record["value"]
    return {name: value for name, value in line_record.items() if name != PARTITION_KEY}


def _hashable(value: Any) -> Hashable:
    if isinstance(value, dict | list):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return value  # type: ignore[no-any-return]


def encode_lines(records: Iterable[Any], partition: Partition | None) -> bytes:
    """Encode records as JSON Lines, with the partition's values under ``_partition``.

    Fields keep the server's order and values; the partition key comes first. It is
    spliced in front of the encoded record rather than merged into a copy of it, which
    saves a dictionary per record on the hot path.
    """
    dumps = orjson.dumps
    if partition is None:
        return b"".join([dumps(record) + b"\n" for record in records])

    prefix = b'{"' + PARTITION_KEY.encode() + b'":' + dumps(dict(partition))
    lines = []
    for record in records:
        if isinstance(record, dict) and record:
            lines.append(prefix + b"," + dumps(record)[1:] + b"\n")
        elif isinstance(record, dict):
            lines.append(prefix + b"}\n")
        else:
            lines.append(prefix + b',"value":' + dumps(record) + b"}\n")
    return b"".join(lines)

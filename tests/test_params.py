"""Parameter expansion: exact partitions for ranges, lists, products and date windows."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest

from tm_export.manifest import StreamState
from tm_export.params import (
    DateWindows,
    Each,
    IntRange,
    Step,
    as_id,
    count_static,
    expand_static,
    partition_id,
    partition_order,
    render,
)

Window = tuple[str, str]


def windows(
    start: str, end: str, step: str | None = None, max_days: int | None = None
) -> list[Window]:
    """Return the windows from ``start`` to ``end`` as (first, last) ISO date pairs."""
    series = DateWindows(
        "startDate",
        "endDate",
        dt.date.fromisoformat(start),
        dt.date.fromisoformat(end),
        Step.parse(step) if step else None,
        max_days,
    )
    return [(first.isoformat(), last.isoformat()) for first, last in series.windows()]


# --- integers, lists and their product ------------------------------------------------


@pytest.mark.parametrize(
    ("start", "stop", "step", "expected"),
    [
        (1, 5, 1, [1, 2, 3, 4, 5]),
        (1, 10, 3, [1, 4, 7, 10]),
        (1, 9, 3, [1, 4, 7]),
        (7, 7, 1, [7]),
        (5, 6, 10, [5]),
    ],
    ids=["step_1", "step_3_hits_last", "step_3_misses_last", "single", "step_over_range"],
)
def test_range_expansion(start: int, stop: int, step: int, expected: list[int]) -> None:
    spec = IntRange("project_id", start, stop, step)

    assert list(spec.expand()) == [{"project_id": value} for value in expected]
    assert count_static((spec,)) == len(expected)


def test_each_expansion_keeps_order_and_types() -> None:
    spec = Each("status", ("PUBLISHED", 3, "ARCHIVED"))

    assert list(spec.expand()) == [{"status": "PUBLISHED"}, {"status": 3}, {"status": "ARCHIVED"}]


def test_cartesian_product() -> None:
    specs = (Each("status", ("PUBLISHED", "ARCHIVED")), IntRange("project_id", 1, 5, 2))

    assert list(expand_static(specs)) == [
        {"status": "PUBLISHED", "project_id": 1},
        {"status": "PUBLISHED", "project_id": 3},
        {"status": "PUBLISHED", "project_id": 5},
        {"status": "ARCHIVED", "project_id": 1},
        {"status": "ARCHIVED", "project_id": 3},
        {"status": "ARCHIVED", "project_id": 5},
    ]
    assert count_static(specs) == 6


def test_product_with_date_windows() -> None:
    months = DateWindows(
        "startDate", "endDate", dt.date(2025, 1, 1), dt.date(2025, 2, 28), Step(1, "month"), 366
    )
    specs = (Each("country", ("Kenya", "Peru")), months)

    assert list(expand_static(specs)) == [
        {"country": "Kenya", "startDate": "2025-01-01", "endDate": "2025-01-31"},
        {"country": "Kenya", "startDate": "2025-02-01", "endDate": "2025-02-28"},
        {"country": "Peru", "startDate": "2025-01-01", "endDate": "2025-01-31"},
        {"country": "Peru", "startDate": "2025-02-01", "endDate": "2025-02-28"},
    ]
    assert count_static(specs) == 4


def test_no_varying_params_one_partition() -> None:
    assert list(expand_static(())) == [{}]
    assert count_static(()) == 1


def test_count_stops_above_limit() -> None:
    days = DateWindows("a", "b", dt.date(2000, 1, 1), dt.date(2099, 12, 31), Step(1, "day"), None)
    specs = (IntRange("x", 1, 1000), days)

    assert count_static(specs, limit=5000) > 5000
    assert count_static((IntRange("x", 1, 1000),), limit=5000) == 1000


def test_partition_id_sorts_keys() -> None:
    assert partition_id({"b": 2, "a": "x"}) == '{"a":"x","b":2}'


def test_partition_order_numeric() -> None:
    ids = [
        '{"project_id":10,"type":"b"}',
        '{"project_id":9,"type":"b"}',
        '{"project_id":10,"type":"a"}',
        '{"project_id":"x","type":"a"}',
    ]

    ordered = sorted(ids, key=partition_order)

    assert ordered == [
        '{"project_id":9,"type":"b"}',
        '{"project_id":10,"type":"a"}',
        '{"project_id":10,"type":"b"}',
        '{"project_id":"x","type":"a"}',
    ]


def test_problems_in_partition_order() -> None:
    state = StreamState(problems=["no value"])
    for project_id in (10, 9):
        final = {"state": "done", "problems": [f"short {project_id}"]}
        state.done[partition_id({"project_id": project_id})] = final

    listed = list(state.all_problems())

    assert listed == [
        (None, "no value"),
        ('{"project_id":9}', "short 9"),
        ('{"project_id":10}', "short 10"),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "true"),
        (False, "false"),
        (7, "7"),
        (2.5, "2.5"),
        (["PUBLISHED", "ARCHIVED"], "PUBLISHED,ARCHIVED"),
        (dt.date(2025, 1, 31), "2025-01-31"),
        ("text", "text"),
    ],
)
def test_render(value: object, expected: str) -> None:
    assert render(value) == expected


# --- date windows ------------------------------------------------------------------------


def test_monthly_windows_2025() -> None:
    assert windows("2025-01-01", "2025-12-31", "1 month", 366) == [
        ("2025-01-01", "2025-01-31"),
        ("2025-02-01", "2025-02-28"),
        ("2025-03-01", "2025-03-31"),
        ("2025-04-01", "2025-04-30"),
        ("2025-05-01", "2025-05-31"),
        ("2025-06-01", "2025-06-30"),
        ("2025-07-01", "2025-07-31"),
        ("2025-08-01", "2025-08-31"),
        ("2025-09-01", "2025-09-30"),
        ("2025-10-01", "2025-10-31"),
        ("2025-11-01", "2025-11-30"),
        ("2025-12-01", "2025-12-31"),
    ]


def test_monthly_windows_leap_year() -> None:
    assert windows("2024-01-01", "2024-12-31", "1 month") == [
        ("2024-01-01", "2024-01-31"),
        ("2024-02-01", "2024-02-29"),
        ("2024-03-01", "2024-03-31"),
        ("2024-04-01", "2024-04-30"),
        ("2024-05-01", "2024-05-31"),
        ("2024-06-01", "2024-06-30"),
        ("2024-07-01", "2024-07-31"),
        ("2024-08-01", "2024-08-31"),
        ("2024-09-01", "2024-09-30"),
        ("2024-10-01", "2024-10-31"),
        ("2024-11-01", "2024-11-30"),
        ("2024-12-01", "2024-12-31"),
    ]


def test_window_expand_sets_both_params() -> None:
    series = DateWindows(
        "startDate", "endDate", dt.date(2024, 2, 1), dt.date(2024, 3, 10), Step(1, "month"), None
    )

    assert list(series.expand()) == [
        {"startDate": "2024-02-01", "endDate": "2024-02-29"},
        {"startDate": "2024-03-01", "endDate": "2024-03-10"},
    ]


def test_weekly_windows() -> None:
    assert windows("2025-01-01", "2025-01-31", "1 week") == [
        ("2025-01-01", "2025-01-07"),
        ("2025-01-08", "2025-01-14"),
        ("2025-01-15", "2025-01-21"),
        ("2025-01-22", "2025-01-28"),
        ("2025-01-29", "2025-01-31"),
    ]


def test_two_week_windows() -> None:
    assert windows("2025-01-01", "2025-02-15", "2 weeks") == [
        ("2025-01-01", "2025-01-14"),
        ("2025-01-15", "2025-01-28"),
        ("2025-01-29", "2025-02-11"),
        ("2025-02-12", "2025-02-15"),
    ]


def test_daily_windows_across_month_end() -> None:
    assert windows("2025-02-26", "2025-03-02", "1 day") == [
        ("2025-02-26", "2025-02-26"),
        ("2025-02-27", "2025-02-27"),
        ("2025-02-28", "2025-02-28"),
        ("2025-03-01", "2025-03-01"),
        ("2025-03-02", "2025-03-02"),
    ]


def test_yearly_windows_fit_limit() -> None:
    assert windows("2020-01-01", "2025-12-31", "1 year", 366) == [
        ("2020-01-01", "2020-12-31"),
        ("2021-01-01", "2021-12-31"),
        ("2022-01-01", "2022-12-31"),
        ("2023-01-01", "2023-12-31"),
        ("2024-01-01", "2024-12-31"),
        ("2025-01-01", "2025-12-31"),
    ]


def test_long_window_split_at_limit() -> None:
    assert windows("2020-01-01", "2025-12-31", None, 366) == [
        ("2020-01-01", "2020-12-31"),
        ("2021-01-01", "2022-01-01"),
        ("2022-01-02", "2023-01-02"),
        ("2023-01-03", "2024-01-03"),
        ("2024-01-04", "2025-01-03"),
        ("2025-01-04", "2025-12-31"),
    ]


def test_two_year_step_split_at_limit() -> None:
    assert windows("2023-03-01", "2025-06-30", "2 years", 366) == [
        ("2023-03-01", "2024-02-29"),
        ("2024-03-01", "2025-02-28"),
        ("2025-03-01", "2025-06-30"),
    ]


def test_step_not_dividing_range_clips_last() -> None:
    assert windows("2025-01-01", "2025-03-15", "1 month") == [
        ("2025-01-01", "2025-01-31"),
        ("2025-02-01", "2025-02-28"),
        ("2025-03-01", "2025-03-15"),
    ]


def test_step_longer_than_range() -> None:
    assert windows("2025-01-10", "2025-01-20", "1 year") == [("2025-01-10", "2025-01-20")]


def test_month_end_start_keeps_its_day() -> None:
    """Window k starts k months after the start, so Jan 31 gives Feb 28, then Mar 31."""
    assert windows("2025-01-31", "2025-06-30", "1 month") == [
        ("2025-01-31", "2025-02-27"),
        ("2025-02-28", "2025-03-30"),
        ("2025-03-31", "2025-04-29"),
        ("2025-04-30", "2025-05-30"),
        ("2025-05-31", "2025-06-29"),
        ("2025-06-30", "2025-06-30"),
    ]


def test_leap_day_start_yearly() -> None:
    assert windows("2024-02-29", "2028-03-01", "1 year") == [
        ("2024-02-29", "2025-02-27"),
        ("2025-02-28", "2026-02-27"),
        ("2026-02-28", "2027-02-27"),
        ("2027-02-28", "2028-02-28"),
        ("2028-02-29", "2028-03-01"),
    ]


def test_no_step_one_window() -> None:
    assert windows("2025-01-01", "2025-12-31") == [("2025-01-01", "2025-12-31")]


def test_single_day_window() -> None:
    assert windows("2025-05-05", "2025-05-05", "1 month", 366) == [("2025-05-05", "2025-05-05")]


def test_windows_end_at_last_date() -> None:
    assert windows("9999-12-01", "9999-12-31", "1 month") == [("9999-12-01", "9999-12-31")]
    assert windows("9999-01-01", "9999-12-31", "1 year", 366) == [("9999-01-01", "9999-12-31")]
    assert windows("9999-12-30", "9999-12-31", "1 day") == [
        ("9999-12-30", "9999-12-30"),
        ("9999-12-31", "9999-12-31"),
    ]


def test_windows_tile_range_exactly() -> None:
    """Random series cover start..end day by day, with no gap, no overlap, none too long."""
    rng = random.Random(7)
    units = ["day", "week", "month", "year"]
    for _ in range(300):
        start = dt.date(2000, 1, 1) + dt.timedelta(days=rng.randrange(10_000))
        end = start + dt.timedelta(days=rng.randrange(2_000))
        step = Step(rng.randint(1, 5), rng.choice(units)) if rng.random() < 0.8 else None
        max_days = rng.choice([None, 1, 7, 31, 366, 1098])
        series = list(DateWindows("a", "b", start, end, step, max_days).windows())
        label = f"{start}..{end} step {step} max {max_days}"

        assert series[0][0] == start, label
        assert series[-1][1] == end, label
        for first, last in series:
            assert first <= last, label
            if max_days is not None:
                assert (last - first).days + 1 <= max_days, label
        for (_, last), (following, _) in itertools.pairwise(series):
            assert following == last + dt.timedelta(days=1), label


# --- steps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 month", Step(1, "month")),
        ("3 months", Step(3, "month")),
        ("2 weeks", Step(2, "week")),
        ("1 day", Step(1, "day")),
        (" 10  days ", Step(10, "day")),
        ("1 year", Step(1, "year")),
    ],
)
def test_step_parse(text: str, expected: Step) -> None:
    assert Step.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["0 months", "1 fortnight", "month", "1month", "-1 day", "1.5 days"]
)
def test_step_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid step"):
        Step.parse(text)


def test_step_text() -> None:
    assert str(Step(1, "month")) == "1 month"
    assert str(Step(2, "week")) == "2 weeks"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (42, 42),
        ("42", 42),
        ("0042", 42),
        (-1, None),
        ("-1", None),
        ("4.2", None),
        ("", None),
        ("\u0664\u0662", None),
        ("2026-11-20T10:23:44Z", None),
    ],
)
def test_as_id(value: int | str, expected: int | None) -> None:
    """Only whole numbers of 0 or more are ids. Digits in text count, other digits do not."""
    assert as_id(value) == expected

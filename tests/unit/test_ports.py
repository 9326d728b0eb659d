"""Range math and the kernel's text formats (`nodesysctl.ports`)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodesysctl.ports import (
    MAX_PORT,
    PortParseError,
    PortRange,
    contains_all,
    format_port_range,
    format_reserved_ports,
    intersect_ranges,
    merge_ranges,
    parse_port_range,
    parse_reserved_ports,
    port_count,
    subtract_ranges,
)

NODEPORTS = PortRange(30000, 32767)


def as_set(ranges: Iterable[PortRange]) -> set[int]:
    return {port for r in ranges for port in range(r.lo, r.hi + 1)}


@st.composite
def port_ranges(draw: st.DrawFn, top: int = MAX_PORT) -> PortRange:
    a, b = draw(st.integers(0, top)), draw(st.integers(0, top))
    return PortRange(min(a, b), max(a, b))


# Small ports keep the set-based reference model cheap; the edges of the port space get their
# own strategy.
small_sets = st.lists(port_ranges(top=200), max_size=8)
any_sets = st.lists(port_ranges(), max_size=8)


# --- PortRange -----------------------------------------------------------------------------


def test_port_range_rejects_reversed_and_out_of_bounds() -> None:
    with pytest.raises(ValueError, match="greater than"):
        PortRange(5, 4)
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        PortRange(1, 65536)


def test_port_range_predicates() -> None:
    assert NODEPORTS.contains_port(30000)
    assert NODEPORTS.contains_port(32767)
    assert not NODEPORTS.contains_port(32768)
    assert PortRange(1024, 65000).contains_range(NODEPORTS)
    assert not PortRange(32768, 60999).overlaps(NODEPORTS)
    assert PortRange(32767, 40000).intersection(NODEPORTS) == PortRange(32767, 32767)
    assert PortRange(32768, 60999).intersection(NODEPORTS) is None
    assert len(NODEPORTS) == 2768
    assert str(NODEPORTS) == "30000-32767"
    assert str(PortRange.single(10250)) == "10250"


# --- ip_local_port_range -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["32768\t60999\n", "32768 60999", "  32768 \t  60999  \n"])
def test_parse_port_range_accepts_any_whitespace(text: str) -> None:
    assert parse_port_range(text) == PortRange(32768, 60999)


def test_format_port_range_uses_a_space() -> None:
    assert format_port_range(PortRange(32768, 60999)) == "32768 60999"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected two port numbers, found 0"),
        ("32768", "found 1"),
        ("1 2 3", "found 3"),
        ("1024 abc", "'abc' is not a port number"),
        ("-1 5", "'-1' is not a port number"),
        ("+1 5", "'+1' is not a port number"),
        ("1_000 2000", "'1_000' is not a port number"),
        ("1024 70000", "port 70000 is above 65535"),
        ("60999 32768", "the first port 60999 is greater than the second 32768"),
    ],
)
def test_parse_port_range_errors_name_value_and_reason(text: str, reason: str) -> None:
    with pytest.raises(PortParseError) as info:
        parse_port_range(text)
    assert reason in str(info.value)
    assert repr(text) in str(info.value)
    assert info.value.value == text


@given(port_ranges())
def test_port_range_round_trips(port_range: PortRange) -> None:
    assert parse_port_range(format_port_range(port_range)) == port_range
    kernel_text = f"{port_range.lo}\t{port_range.hi}\n"
    assert parse_port_range(kernel_text) == port_range


# --- ip_local_reserved_ports ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("\n", ()),
        ("10250\n", (PortRange(10250, 10250),)),
        ("10250,30000-32767", (PortRange(10250, 10250), NODEPORTS)),
        # Unsorted, overlapping and adjacent input comes back normalised.
        ("30000-31000, 31001-32767,10250,10250", (PortRange(10250, 10250), NODEPORTS)),
    ],
)
def test_parse_reserved_ports(text: str, expected: tuple[PortRange, ...]) -> None:
    assert parse_reserved_ports(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("8080,", "empty entry"),
        (",8080", "empty entry"),
        ("8080,,9000", "empty entry"),
        ("80a", "'80a' is not a port number"),
        ("9010-9000", "starts after it ends"),
        ("1-2-3", "'2-3' is not a port number"),
        ("65536", "above 65535"),
        ("8080;9000", "is not a port number"),
    ],
)
def test_parse_reserved_ports_errors(text: str, reason: str) -> None:
    with pytest.raises(PortParseError, match="cannot parse") as info:
        parse_reserved_ports(text)
    assert reason in str(info.value)


def test_format_reserved_ports_is_the_kernel_form() -> None:
    ranges = [NODEPORTS, PortRange(10250, 10250), PortRange(9000, 9010), PortRange(8080, 8080)]
    assert format_reserved_ports(ranges) == "8080,9000-9010,10250,30000-32767"
    assert format_reserved_ports([]) == ""


@given(any_sets)
def test_reserved_ports_round_trip(ranges: list[PortRange]) -> None:
    text = format_reserved_ports(ranges)
    assert parse_reserved_ports(text) == merge_ranges(ranges)
    assert format_reserved_ports(parse_reserved_ports(text)) == text


@given(st.text(alphabet="0123456789,- \t\n", max_size=30) | st.text(max_size=30))
def test_parsers_raise_only_port_parse_errors(text: str) -> None:
    for parse in (parse_port_range, parse_reserved_ports):
        with contextlib.suppress(PortParseError):
            parse(text)


# --- set operations ------------------------------------------------------------------------


def test_merge_coalesces_overlapping_and_adjacent() -> None:
    ranges = [PortRange(5, 9), PortRange(1, 3), PortRange(4, 4), PortRange(20, 30)]
    assert merge_ranges(ranges) == (PortRange(1, 9), PortRange(20, 30))


@given(small_sets)
def test_merge_preserves_ports_and_is_normalised(ranges: list[PortRange]) -> None:
    merged = merge_ranges(ranges)
    assert as_set(merged) == as_set(ranges)
    assert merge_ranges(merged) == merged
    for left, right in itertools.pairwise(merged):
        assert left.hi + 1 < right.lo  # sorted, with a real gap
    assert port_count(ranges) == len(as_set(ranges))


@given(small_sets, small_sets)
def test_set_operations_match_python_sets(left: list[PortRange], right: list[PortRange]) -> None:
    assert as_set(subtract_ranges(left, right)) == as_set(left) - as_set(right)
    assert as_set(intersect_ranges(left, right)) == as_set(left) & as_set(right)
    assert contains_all(left, right) == (as_set(right) <= as_set(left))


@given(any_sets, any_sets)
def test_merging_wanted_into_existing_never_drops_a_port(
    existing: list[PortRange], wanted: list[PortRange]
) -> None:
    merged = merge_ranges([*existing, *wanted])
    assert contains_all(merged, existing)
    assert contains_all(merged, wanted)
    # And adds nothing else.
    assert not subtract_ranges(merged, [*existing, *wanted])


def test_contains_all_edge_cases() -> None:
    assert contains_all([], [])
    assert contains_all([NODEPORTS], [])
    assert not contains_all([], [PortRange(1, 1)])
    assert contains_all([PortRange(10250, 10250), NODEPORTS], [NODEPORTS, PortRange(10250, 10250)])
    assert not contains_all([PortRange(30000, 32766)], [NODEPORTS])

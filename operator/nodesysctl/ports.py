"""Port-range math and the kernel's text formats for the two port sysctls.

Pure: no I/O and no Kubernetes. A set of ports is represented as a tuple of `PortRange`s; the
functions that return one always return it *normalised*: sorted, with overlapping and adjacent
ranges coalesced, which is also the form the kernel prints `ip_local_reserved_ports` in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MIN_PORT = 0
MAX_PORT = 65535


class PortParseError(ValueError):
    """A port value could not be parsed; the message names the value and why."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"cannot parse {value!r}: {reason}")
        self.value = value
        self.reason = reason


@dataclass(frozen=True, order=True)
class PortRange:
    """An inclusive range of ports `lo..hi`; a single port is `PortRange(p, p)`."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not (MIN_PORT <= self.lo <= MAX_PORT and MIN_PORT <= self.hi <= MAX_PORT):
            raise ValueError(f"ports must be in {MIN_PORT}..{MAX_PORT}, got {self.lo}-{self.hi}")
        if self.lo > self.hi:
            raise ValueError(f"range start {self.lo} is greater than its end {self.hi}")

    @classmethod
    def single(cls, port: int) -> PortRange:
        return cls(port, port)

    def __len__(self) -> int:
        return self.hi - self.lo + 1

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"

    def contains_port(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    def contains_range(self, other: PortRange) -> bool:
        return self.lo <= other.lo and other.hi <= self.hi

    def overlaps(self, other: PortRange) -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def intersection(self, other: PortRange) -> PortRange | None:
        if not self.overlaps(other):
            return None
        return PortRange(max(self.lo, other.lo), min(self.hi, other.hi))


PortSet = tuple[PortRange, ...]


def merge_ranges(ranges: Iterable[PortRange]) -> PortSet:
    """Sort and coalesce overlapping or adjacent ranges (`1-3,4-5` -> `1-5`)."""
    merged: list[PortRange] = []
    for current in sorted(ranges):
        if merged and current.lo <= merged[-1].hi + 1:
            last = merged[-1]
            merged[-1] = PortRange(last.lo, max(last.hi, current.hi))
        else:
            merged.append(current)
    return tuple(merged)


def port_count(ranges: Iterable[PortRange]) -> int:
    return sum(len(r) for r in merge_ranges(ranges))


def set_contains_port(ranges: Iterable[PortRange], port: int) -> bool:
    return any(r.contains_port(port) for r in ranges)


def intersect_ranges(left: Iterable[PortRange], right: Iterable[PortRange]) -> PortSet:
    """The ports present in both sets."""
    right_list = list(right)
    pieces = (a.intersection(b) for a in left for b in right_list)
    return merge_ranges(p for p in pieces if p is not None)


def subtract_ranges(ranges: Iterable[PortRange], removed: Iterable[PortRange]) -> PortSet:
    """The ports of `ranges` that are not in `removed`."""
    remaining = list(merge_ranges(ranges))
    for cut in merge_ranges(removed):
        next_remaining: list[PortRange] = []
        for r in remaining:
            if not r.overlaps(cut):
                next_remaining.append(r)
                continue
            if r.lo < cut.lo:
                next_remaining.append(PortRange(r.lo, cut.lo - 1))
            if cut.hi < r.hi:
                next_remaining.append(PortRange(cut.hi + 1, r.hi))
        remaining = next_remaining
    return tuple(remaining)


def contains_all(reserved: Iterable[PortRange], wanted: Iterable[PortRange]) -> bool:
    """True iff every port of `wanted` is in `reserved`."""
    return not subtract_ranges(wanted, reserved)


def _parse_port(text: str, whole: str) -> int:
    # int() alone would accept "+5", " 5", "5_000" and non-ASCII digits; the kernel does not.
    if not text.isascii() or not text.isdigit():
        raise PortParseError(whole, f"{text!r} is not a port number")
    port = int(text)
    if port > MAX_PORT:
        raise PortParseError(whole, f"port {port} is above {MAX_PORT}")
    return port


def parse_port_range(text: str) -> PortRange:
    """Parse `ip_local_port_range` as the kernel prints it (`32768\\t60999\\n`)."""
    fields = text.split()
    if len(fields) != 2:
        raise PortParseError(text, f"expected two port numbers, found {len(fields)} fields")
    lo, hi = (_parse_port(field, text) for field in fields)
    if lo > hi:
        raise PortParseError(text, f"the first port {lo} is greater than the second {hi}")
    return PortRange(lo, hi)


def format_port_range(port_range: PortRange) -> str:
    """The text to write to `ip_local_port_range`."""
    return f"{port_range.lo} {port_range.hi}"


def parse_reserved_ports(text: str) -> PortSet:
    """Parse `ip_local_reserved_ports` (`10250,30000-32767`, maybe empty); returns it normalised."""
    stripped = text.strip()
    if not stripped:
        return ()
    ranges: list[PortRange] = []
    for item in stripped.split(","):
        item = item.strip()
        if not item:
            raise PortParseError(text, "empty entry in the comma-separated list")
        lo_text, dash, hi_text = item.partition("-")
        lo = _parse_port(lo_text.strip(), text)
        hi = _parse_port(hi_text.strip(), text) if dash else lo
        if lo > hi:
            raise PortParseError(text, f"range {item!r} starts after it ends")
        ranges.append(PortRange(lo, hi))
    return merge_ranges(ranges)


def format_reserved_ports(ranges: Iterable[PortRange]) -> str:
    """The normalised comma list, as the kernel prints it; empty string for no ports."""
    return ",".join(str(r) for r in merge_ranges(ranges))

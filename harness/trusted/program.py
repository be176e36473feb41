"""Programs as text: split at the EVOLVE-BLOCK markers, compare with the pristine seed, splice.

Pure text work, safe in OpenEvolve's processes: nothing here imports torch or runs candidate code.
The program that runs is always the pristine seed's outside with the candidate's block spliced in.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

START = "# EVOLVE-BLOCK-START"
END = "# EVOLVE-BLOCK-END"
# Any line OpenEvolve itself would read as a marker, whatever its comment syntax.
MARKER_LIKE = re.compile(r"^\W*EVOLVE-BLOCK-(START|END)\b")


class FrozenRegionError(ValueError):
    pass


@dataclass(frozen=True)
class Parts:
    head: str  # text up to and including the START marker line
    block: str  # text strictly between the markers
    tail: str  # text from the END marker line on


def _marker_lines(lines: list[str], marker: str) -> list[int]:
    return [i for i, line in enumerate(lines) if line.strip() == marker]


def split(source: str) -> Parts:
    lines = source.splitlines(keepends=True)
    starts, ends = _marker_lines(lines, START), _marker_lines(lines, END)
    mentions = sum(1 for line in lines if MARKER_LIKE.match(line))
    if len(starts) != 1 or len(ends) != 1 or mentions != 2:
        raise FrozenRegionError(
            f"expected exactly one '{START}' line and one '{END}' line, found {len(starts)} and {len(ends)}"
            + (f" (and {mentions - len(starts) - len(ends)} other lines mentioning the markers)" if mentions > len(starts) + len(ends) else "")
        )
    s, e = starts[0], ends[0]
    if e < s:
        raise FrozenRegionError(f"'{END}' comes before '{START}'")
    return Parts("".join(lines[: s + 1]), "".join(lines[s + 1 : e]), "".join(lines[e:]))


def _normalise(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def first_difference(expected: str, got: str) -> str:
    a, b = _normalise(expected), _normalise(got)
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"line {i + 1} of the frozen text: expected {x!r}, found {y!r}"
    if len(a) != len(b):
        return f"the frozen text has {len(b)} lines instead of {len(a)}"
    return "no difference"


def splice(pristine: str, candidate: str) -> str:
    """The program to run: the pristine outside with the candidate's block. Raises FrozenRegionError
    when the candidate changed anything outside its block (trailing whitespace excepted)."""
    seed, cand = split(pristine), split(candidate)
    for name, expected, got in (("before the block", seed.head, cand.head), ("after the block", seed.tail, cand.tail)):
        if _normalise(expected) != _normalise(got):
            raise FrozenRegionError(f"text {name} was changed: {first_difference(expected, got)}")
    return seed.head + cand.block + seed.tail


def block_offset(pristine: str) -> int:
    """Line number (1-based) of the first block line in the spliced program, for error messages."""
    return split(pristine).head.count("\n") + 1


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()

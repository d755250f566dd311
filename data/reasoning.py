"""Reasoning labels: one canonical text format, its parser, and the dataset columns.

The policy is trained to write (and sometimes read) a short reasoning string before
its actions.  Training labels, prompts and the inference-time parser must agree on a
single format, otherwise the model learns one dialect and the parser expects another.
That format is (one line, wrapped here)::

    PLAN: a; b. SUBTASK: a. MOVE: move down.
    GRIPPER: [61,40] [60,44] [60,48] [59,52] [59,55].
    OBJECTS: red cube [50,40,62,52]; bowl [80,70,110,95].

* Segments appear in the order of ``REASONING_TAGS``, separated by one space, and each
  ends with ``"."``.  Empty fields are left out entirely, as are tags not selected by
  ``include`` (reasoning dropout).
* ``PLAN`` entries are joined by ``"; "``; ``GRIPPER`` points are ``[x,y]`` joined by
  single spaces (current position first, then up to 4 future ones, agentview pixels);
  ``OBJECTS`` entries are ``name [x1,y1,x2,y2]`` joined by ``"; "``.

Free text (plan entries, subtask, move, object names) must be non-empty, printable,
free of leading/trailing whitespace and must not contain any of ``. ; : [ ]``:

* ``.`` ends a segment, ``;`` separates plan entries and objects, ``[ ]`` delimit
  coordinates and ``:`` marks a tag.  Banning ``:`` is what lets the parser find tags
  without knowing the text between them.
* Whitespace at either end would be lost by the parser, and control characters such as
  newlines have no place in a one-line label.

Everything else (lowercase words, digits, spaces, hyphens, underscores, apostrophes,
commas, non-ASCII letters) is allowed.  ``format_reasoning`` and ``Reasoning.to_frame``
refuse values that break these rules, so ``parse_reasoning(format_reasoning(r)) == r``
holds for every value they accept.

The parser is lenient where generated text is harmlessly different from the canonical
form: tags may come in any order, tag names are case-insensitive, and whitespace around
separators and numbers is ignored.  Anything else is an error in strict mode, while
``strict=False`` (used on model output at inference) drops the offending segment and
keeps the rest.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from data.schema import (
    GRIPPER_PX_KEY,
    GRIPPER_TRACE_POINTS,
    MOVE_KEY,
    OBJECTS_KEY,
    PLAN_KEY,
    SUBTASK_KEY,
)

__all__ = [
    "REASONING_TAGS",
    "UNKNOWN_PX",
    "ObjectBox",
    "Reasoning",
    "ReasoningParseError",
    "format_reasoning",
    "parse_reasoning",
    "snap_pixels",
]

REASONING_TAGS = ("plan", "subtask", "move", "gripper", "objects")
"""Tags in canonical order; ``include`` in ``format_reasoning`` selects among these."""


UNKNOWN_PX = -1
"""Pixel value marking an unknown / off-image gripper point in ``reasoning.gripper_px``."""

FORBIDDEN_TEXT_CHARS = ".;:[]"

_TAG_RE = re.compile(r"\b([A-Za-z_]+)\s*:")
_BRACKET_RE = re.compile(r"\[([^\[\]]*)\]")
_INT_RE = re.compile(r"-?[0-9]+")

_INT16_MAX = int(np.iinfo(np.int16).max)


class ReasoningParseError(ValueError):
    """Raised by strict parsing; a ValueError so callers validating input can catch both."""


# --------------------------------------------------------------------------- values


def _as_int(value: Any, what: str) -> int:
    """Accept Python and numpy integers alike, but never silently truncate floats."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None


def _int_tuple(values: Iterable[Any], count: int, what: str) -> tuple[int, ...]:
    result = tuple(_as_int(v, what) for v in values)
    if len(result) != count:
        raise ValueError(f"{what} must have {count} integers, got {len(result)}: {result}")
    return result


def _as_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return str(value)  # drop str subclasses such as numpy.str_ so equality/repr are plain


@dataclasses.dataclass(frozen=True)
class ObjectBox:
    """A named object with its agentview pixel box ``(x1, y1, x2, y2)``."""

    name: str
    box: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        # Normalise lists / numpy values so equality and hashing behave like plain tuples.
        object.__setattr__(self, "name", _as_str(self.name, "ObjectBox.name"))
        object.__setattr__(self, "box", _int_tuple(self.box, 4, "ObjectBox.box"))


@dataclasses.dataclass(frozen=True)
class Reasoning:
    """Structured reasoning for one frame; every field may be empty.

    Construction normalises containers to tuples (so values built from lists or
    numpy arrays compare equal to parsed ones) and checks shapes, but not the text
    rules: those are enforced where text is written (``format_reasoning``,
    ``to_frame``), so that odd labels can still be loaded and inspected.
    """

    plan: tuple[str, ...] = ()
    subtask: str = ""
    move: str = ""
    gripper_px: tuple[tuple[int, int], ...] = ()
    objects: tuple[ObjectBox, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.plan, str):
            raise TypeError("plan must be a sequence of subtasks, not a single str")
        plan = tuple(_as_str(p, f"plan[{i}]") for i, p in enumerate(self.plan))
        points = tuple(_int_tuple(p, 2, f"gripper_px[{i}]") for i, p in enumerate(self.gripper_px))
        if len(points) > GRIPPER_TRACE_POINTS:
            raise ValueError(
                f"gripper_px holds at most {GRIPPER_TRACE_POINTS} points, got {len(points)}"
            )
        for i, obj in enumerate(self.objects):
            if not isinstance(obj, ObjectBox):
                raise TypeError(f"objects[{i}] must be an ObjectBox, got {type(obj).__name__}")
        object.__setattr__(self, "plan", plan)
        object.__setattr__(self, "subtask", _as_str(self.subtask, "subtask"))
        object.__setattr__(self, "move", _as_str(self.move, "move"))
        object.__setattr__(self, "gripper_px", points)
        object.__setattr__(self, "objects", tuple(self.objects))

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> Reasoning:
        """Read the ``reasoning.*`` columns of one dataset frame.

        Missing keys (or ``None``) give empty fields, so datasets without reasoning
        labels load as empty reasoning.  In ``reasoning.gripper_px`` a point with a
        negative coordinate (the writer uses ``UNKNOWN_PX == -1``) is unknown or
        off-image and is omitted.  Omission keeps the remaining points in order, so a
        hole in the middle shifts later points forward: ``Reasoning`` only records
        which points are known, not their original slots.
        """
        return cls(
            plan=_plan_from_frame(frame.get(PLAN_KEY)),
            subtask=_str_from_frame(frame.get(SUBTASK_KEY)),
            move=_str_from_frame(frame.get(MOVE_KEY)),
            gripper_px=_gripper_from_frame(frame.get(GRIPPER_PX_KEY)),
            objects=_objects_from_frame(frame.get(OBJECTS_KEY)),
        )

    def to_frame(self) -> dict[str, Any]:
        """Write the ``reasoning.*`` columns; ``Reasoning.from_frame`` inverts it exactly.

        Applies the same text rules as ``format_reasoning`` so that anything stored in
        a dataset can later be rendered as training text.
        """
        _validate(self)
        return {
            PLAN_KEY: "; ".join(self.plan),
            SUBTASK_KEY: self.subtask,
            MOVE_KEY: self.move,
            GRIPPER_PX_KEY: _gripper_to_frame(self.gripper_px),
            OBJECTS_KEY: json.dumps(
                [{"name": o.name, "box": list(o.box)} for o in self.objects],
                separators=(",", ":"),
            ),
        }


def snap_pixels(r: Reasoning, step: int) -> Reasoning:
    """``r`` with every gripper and box coordinate rounded to the nearest multiple of ``step``.

    Why: each coordinate is one token class, so with exact pixels a guess 2 px off costs as
    much as one 60 px off, and on a wide layout the decoder falls back to the layout's mean
    position.  Training on coarser targets (``step`` 8 gives 16 classes across a 128 px image)
    makes a near answer the right answer.  ``step`` 1 returns ``r`` unchanged; ties round half
    to even (numpy's rule), so the mapping is the same on every machine.
    """
    if step < 1:
        raise ValueError(f"pixel step must be an integer >= 1, got {step!r}")
    if step == 1:
        return r

    def snap(values: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(v) for v in np.rint(np.asarray(values, dtype=np.float64) / step) * step)

    return dataclasses.replace(
        r,
        gripper_px=tuple(snap(point) for point in r.gripper_px),
        objects=tuple(ObjectBox(o.name, snap(o.box)) for o in r.objects),
    )


# --------------------------------------------------------------------------- frames


def _str_from_frame(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _plan_from_frame(value: Any) -> tuple[str, ...]:
    text = _str_from_frame(value)
    if not text.strip():
        return ()
    steps = tuple(step.strip() for step in text.split(";"))
    if not all(steps):
        raise ValueError(f"{PLAN_KEY} {text!r} has an empty subtask between ';'")
    return steps


def _gripper_from_frame(value: Any) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    arr = np.asarray(value)
    if arr.size != 2 * GRIPPER_TRACE_POINTS:
        raise ValueError(
            f"{GRIPPER_PX_KEY} must hold {2 * GRIPPER_TRACE_POINTS} values, got shape {arr.shape}"
        )
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{GRIPPER_PX_KEY} must be integers, got {arr.tolist()}")
    pairs = arr.astype(np.int64).reshape(GRIPPER_TRACE_POINTS, 2).tolist()
    return tuple((x, y) for x, y in pairs if x >= 0 and y >= 0)


def _gripper_to_frame(points: Sequence[tuple[int, int]]) -> np.ndarray:
    out = np.full(2 * GRIPPER_TRACE_POINTS, UNKNOWN_PX, dtype=np.int16)
    for i, (x, y) in enumerate(points):
        if not (0 <= x <= _INT16_MAX and 0 <= y <= _INT16_MAX):
            raise ValueError(
                f"gripper_px[{i}] = {(x, y)} cannot be stored: coordinates must lie in "
                f"[0, {_INT16_MAX}] (negative values mean unknown in {GRIPPER_PX_KEY})"
            )
        out[2 * i : 2 * i + 2] = (x, y)
    return out


def _objects_from_frame(value: Any) -> tuple[ObjectBox, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        if not value.strip():
            return ()
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{OBJECTS_KEY} is not valid JSON: {exc}") from None
    if not isinstance(value, list):
        raise ValueError(f"{OBJECTS_KEY} must be a JSON list, got {type(value).__name__}")
    objects = []
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping) or set(entry) != {"name", "box"}:
            raise ValueError(
                f"{OBJECTS_KEY}[{i}] must be {{'name': str, 'box': [x1, y1, x2, y2]}}, "
                f"got {entry!r}"
            )
        objects.append(ObjectBox(name=entry["name"], box=tuple(entry["box"])))
    return tuple(objects)


# --------------------------------------------------------------------------- text rules


def _text_problem(value: str) -> str | None:
    """Why ``value`` would not survive formatting and parsing, or None if it would."""
    if not value:
        return "is empty"
    if value != value.strip():
        return "has leading or trailing whitespace"
    if not value.isprintable():
        return "contains a non-printable character"
    for char in FORBIDDEN_TEXT_CHARS:
        if char in value:
            return f"contains {char!r}"
    return None


def _check_text(field: str, value: str) -> None:
    problem = _text_problem(value)
    if problem is not None:
        raise ValueError(
            f"{field} {value!r} {problem}; reasoning text must be non-empty, printable, "
            f"unpadded and free of {' '.join(FORBIDDEN_TEXT_CHARS)} to round-trip"
        )


def _validate(r: Reasoning) -> None:
    """Check every field, not just the ones being written.

    Reasoning dropout picks random tag subsets; validating only the selected ones
    would make a bad label fail on some random step instead of the first.
    """
    for i, step in enumerate(r.plan):
        _check_text(f"plan[{i}]", step)
    if r.subtask:
        _check_text("subtask", r.subtask)
    if r.move:
        _check_text("move", r.move)
    for i, obj in enumerate(r.objects):
        _check_text(f"objects[{i}].name", obj.name)


# --------------------------------------------------------------------------- formatting


def _format_plan(r: Reasoning) -> str:
    return "; ".join(r.plan)


def _format_gripper(r: Reasoning) -> str:
    return " ".join(f"[{x},{y}]" for x, y in r.gripper_px)


def _format_objects(r: Reasoning) -> str:
    return "; ".join(f"{o.name} [{','.join(map(str, o.box))}]" for o in r.objects)


_FORMATTERS: dict[str, Callable[[Reasoning], str]] = {
    "plan": _format_plan,
    "subtask": lambda r: r.subtask,
    "move": lambda r: r.move,
    "gripper": _format_gripper,
    "objects": _format_objects,
}


def _resolve_include(include: Iterable[str] | None) -> frozenset[str]:
    if include is None:
        return frozenset(REASONING_TAGS)
    if isinstance(include, str):
        raise TypeError("include must be an iterable of tags, not a single str")
    tags = frozenset(include)
    unknown = sorted(tags - set(REASONING_TAGS))
    if unknown:
        raise ValueError(f"unknown reasoning tags {unknown}; expected some of {REASONING_TAGS}")
    return tags


def format_reasoning(r: Reasoning, include: Iterable[str] | None = None) -> str:
    """Render ``r`` in the canonical format the model is trained on.

    ``include`` selects tags for reasoning dropout; output order is always canonical
    whatever order ``include`` lists them in, so dropout never changes tag order.
    Raises ValueError naming the field if any text could not be parsed back.
    """
    tags = _resolve_include(include)
    _validate(r)
    segments = []
    for tag in REASONING_TAGS:
        body = _FORMATTERS[tag](r) if tag in tags else ""
        if body:
            segments.append(f"{tag.upper()}: {body}.")
    return " ".join(segments)


# --------------------------------------------------------------------------- parsing


@dataclasses.dataclass(frozen=True)
class _Segment:
    """A tagged piece of text, or stray text (``tag is None``) between segments."""

    tag: str | None
    body: str
    source: str
    terminated: bool = True


_EXPECTED = {
    "plan": "'PLAN: <subtask>; <subtask>.'",
    "subtask": "'SUBTASK: <text>.'",
    "move": "'MOVE: <text>.'",
    "gripper": f"'GRIPPER: [x,y] [x,y] ...' with at most {GRIPPER_TRACE_POINTS} points and a final '.'",
    "objects": "'OBJECTS: <name> [x1,y1,x2,y2]; <name> [x1,y1,x2,y2].'",
}
_TAG_LIST = ", ".join(f"{t.upper()}:" for t in REASONING_TAGS)


def _split_segments(text: str) -> Iterator[_Segment]:
    """Cut text at tags; a segment's body runs to the first '.', the rest is stray.

    Free text cannot contain ':' or '.', so neither can appear inside a valid body.
    """
    matches = list(_TAG_RE.finditer(text))
    lead = text[: matches[0].start()] if matches else text
    if lead.strip():
        yield _Segment(None, lead.strip(), lead.strip())
    for match, following in zip(matches, [*matches[1:], None], strict=False):
        end = following.start() if following else len(text)
        chunk = text[match.end() : end]
        head, dot, tail = chunk.partition(".")
        tag = match.group(1)
        if not dot:
            yield _Segment(tag, head, f"{tag}:{chunk}".strip(), terminated=False)
            continue
        yield _Segment(tag, head, f"{tag}:{head}.")
        if tail.strip():
            yield _Segment(None, tail.strip(), tail.strip())


def _parse_text(body: str) -> str:
    problem = _text_problem(body)
    if problem is not None:
        raise ValueError(f"text {body!r} {problem}")
    return body


def _parse_ints(inner: str, count: int) -> tuple[int, ...]:
    parts = [p.strip() for p in inner.split(",")]
    if len(parts) != count or not all(_INT_RE.fullmatch(p) for p in parts):
        raise ValueError(f"[{inner}] is not {count} comma-separated integers")
    return tuple(int(p) for p in parts)


def _parse_plan(body: str) -> tuple[str, ...]:
    return tuple(_parse_text(step.strip()) for step in body.split(";"))


def _parse_gripper(body: str) -> tuple[tuple[int, int], ...]:
    points, pos = [], 0
    for match in _BRACKET_RE.finditer(body):
        gap = body[pos : match.start()].strip()
        if gap:
            raise ValueError(f"unexpected {gap!r} between points")
        points.append(_parse_ints(match.group(1), 2))
        pos = match.end()
    rest = body[pos:].strip()
    if rest:
        raise ValueError(f"unexpected {rest!r} after the points")
    if len(points) > GRIPPER_TRACE_POINTS:
        raise ValueError(f"{len(points)} points, at most {GRIPPER_TRACE_POINTS} allowed")
    return tuple(points)


def _parse_object(entry: str) -> ObjectBox:
    name, bracket, rest = entry.strip().partition("[")
    if not bracket or not rest.endswith("]"):
        raise ValueError(f"object {entry.strip()!r} has no trailing [x1,y1,x2,y2] box")
    box = _parse_ints(rest[:-1], 4)
    return ObjectBox(name=_parse_text(name.strip()), box=box)


def _parse_objects(body: str) -> tuple[ObjectBox, ...]:
    return tuple(_parse_object(entry) for entry in body.split(";"))


_PARSERS: dict[str, Callable[[str], Any]] = {
    "plan": _parse_plan,
    "subtask": _parse_text,
    "move": _parse_text,
    "gripper": _parse_gripper,
    "objects": _parse_objects,
}
_EMPTY: dict[str, Any] = {"plan": (), "subtask": "", "move": "", "gripper": (), "objects": ()}


def _parse_segment(segment: _Segment) -> tuple[str, Any]:
    if segment.tag is None:
        raise ReasoningParseError(
            f"unexpected text {segment.source!r}; expected a tag ({_TAG_LIST}) or end of text"
        )
    tag = segment.tag.lower()
    if tag not in _PARSERS:
        raise ReasoningParseError(
            f"unknown tag {segment.tag!r} in segment {segment.source!r}; "
            f"expected one of {_TAG_LIST}"
        )
    if not segment.terminated:
        raise ReasoningParseError(
            f"segment {segment.source!r} does not end with '.'; expected {_EXPECTED[tag]}"
        )
    body = segment.body.strip()
    if not body:
        return tag, _EMPTY[tag]
    try:
        return tag, _PARSERS[tag](body)
    except (ValueError, TypeError) as exc:
        raise ReasoningParseError(
            f"malformed {tag.upper()} segment {segment.source!r}: {exc}; expected {_EXPECTED[tag]}"
        ) from None


def parse_reasoning(text: str, strict: bool = True) -> Reasoning:
    """Parse reasoning text, the inverse of ``format_reasoning``.

    Tags may be missing, repeated tags are an error, and order does not matter,
    because generated text is not guaranteed to follow the canonical order.
    With ``strict=False`` every malformed, unknown, duplicate or stray segment is
    skipped (the first occurrence of a tag wins), so one bad segment in a model's
    output never costs the fields that were generated correctly.
    """
    fields: dict[str, Any] = {}
    for segment in _split_segments(text):
        try:
            tag, value = _parse_segment(segment)
            if tag in fields:
                raise ReasoningParseError(
                    f"duplicate {tag.upper()} segment {segment.source!r}; each tag may appear once"
                )
        except ReasoningParseError:
            if strict:
                raise
            continue
        fields[tag] = value
    if "gripper" in fields:
        fields["gripper_px"] = fields.pop("gripper")
    return Reasoning(**fields)

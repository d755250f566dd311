from __future__ import annotations

import itertools
import json
import random
import string

import numpy as np
import pytest

from data.reasoning import (
    REASONING_TAGS,
    ObjectBox,
    Reasoning,
    ReasoningParseError,
    format_reasoning,
    parse_reasoning,
    snap_pixels,
)

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:  # pragma: no cover - hypothesis is optional
    HAVE_HYPOTHESIS = False

EXAMPLE = (
    "PLAN: a; b. SUBTASK: a. MOVE: move down. "
    "GRIPPER: [61,40] [60,44] [60,48] [59,52] [59,55]. "
    "OBJECTS: red cube [50,40,62,52]; bowl [80,70,110,95]."
)
EXAMPLE_REASONING = Reasoning(
    plan=("a", "b"),
    subtask="a",
    move="move down",
    gripper_px=((61, 40), (60, 44), (60, 48), (59, 52), (59, 55)),
    objects=(ObjectBox("red cube", (50, 40, 62, 52)), ObjectBox("bowl", (80, 70, 110, 95))),
)

FULL = Reasoning(
    plan=("pick up the red cube", "place it in the bowl"),
    subtask="pick up the red cube",
    move="move left down",
    gripper_px=((1, 2), (3, 4)),
    objects=(ObjectBox("akita black bowl", (0, 1, 2, 3)),),
)

# --------------------------------------------------------------------------- example


def test_example_parses_to_expected_fields() -> None:
    assert parse_reasoning(EXAMPLE) == EXAMPLE_REASONING


def test_example_reformats_identically() -> None:
    assert format_reasoning(parse_reasoning(EXAMPLE)) == EXAMPLE
    assert format_reasoning(EXAMPLE_REASONING) == EXAMPLE


def test_tags_are_canonical_order() -> None:
    assert REASONING_TAGS == ("plan", "subtask", "move", "gripper", "objects")


def test_empty_fields_are_omitted() -> None:
    assert format_reasoning(Reasoning()) == ""
    assert parse_reasoning("") == Reasoning()
    assert format_reasoning(Reasoning(move="stop")) == "MOVE: stop."
    assert "PLAN" not in format_reasoning(Reasoning(subtask="x", plan=()))


def test_constructor_normalises_lists_and_numpy() -> None:
    r = Reasoning(
        plan=["a"],
        gripper_px=np.array([[1, 2], [3, 4]], dtype=np.int16),
        objects=[ObjectBox("bowl", [np.int64(1), 2, 3, 4])],
    )
    assert r == Reasoning(
        plan=("a",), gripper_px=((1, 2), (3, 4)), objects=(ObjectBox("bowl", (1, 2, 3, 4)),)
    )
    assert type(r.gripper_px[0][0]) is int
    hash(r)


def test_constructor_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="at most 5"):
        Reasoning(gripper_px=[(0, 0)] * 6)
    with pytest.raises(ValueError, match="gripper_px\\[0\\]"):
        Reasoning(gripper_px=[(0, 0, 0)])
    with pytest.raises(ValueError, match="ObjectBox.box"):
        ObjectBox("bowl", (1, 2, 3))
    with pytest.raises(TypeError, match="plan"):
        Reasoning(plan="a; b")
    with pytest.raises(TypeError):
        Reasoning(gripper_px=[(1.5, 2)])


# --------------------------------------------------------------------------- round trip


ALPHABET = string.ascii_lowercase + string.digits + " -_',"


def _random_text(rng: random.Random) -> str:
    while True:
        s = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 20))).strip()
        if s:
            return s


def _random_reasoning(rng: random.Random) -> Reasoning:
    def maybe(make, empty):
        return make() if rng.random() < 0.8 else empty

    coord = lambda: rng.randint(-50, 600)  # noqa: E731 - negatives must survive text round trip
    return Reasoning(
        plan=maybe(lambda: tuple(_random_text(rng) for _ in range(rng.randint(1, 5))), ()),
        subtask=maybe(lambda: _random_text(rng), ""),
        move=maybe(lambda: _random_text(rng), ""),
        gripper_px=tuple((coord(), coord()) for _ in range(rng.randint(0, 5))),
        objects=maybe(
            lambda: tuple(
                ObjectBox(_random_text(rng), tuple(coord() for _ in range(4)))
                for _ in range(rng.randint(1, 4))
            ),
            (),
        ),
    )


def test_random_round_trip() -> None:
    rng = random.Random(1234)
    for _ in range(1000):
        r = _random_reasoning(rng)
        text = format_reasoning(r)
        assert parse_reasoning(text) == r, text
        assert parse_reasoning(text, strict=False) == r, text


def test_random_subset_round_trip() -> None:
    rng = random.Random(99)
    for _ in range(300):
        r = _random_reasoning(rng)
        include = [t for t in REASONING_TAGS if rng.random() < 0.5]
        parsed = parse_reasoning(format_reasoning(r, include=include))
        expected = Reasoning(
            plan=r.plan if "plan" in include else (),
            subtask=r.subtask if "subtask" in include else "",
            move=r.move if "move" in include else "",
            gripper_px=r.gripper_px if "gripper" in include else (),
            objects=r.objects if "objects" in include else (),
        )
        assert parsed == expected


# --------------------------------------------------------------------------- include


def test_include_drops_tags_and_still_parses() -> None:
    text = format_reasoning(FULL, include=["move", "gripper"])
    assert text == "MOVE: move left down. GRIPPER: [1,2] [3,4]."
    assert parse_reasoning(text) == Reasoning(move="move left down", gripper_px=((1, 2), (3, 4)))


def test_include_order_does_not_change_output_order() -> None:
    assert format_reasoning(FULL, include=("objects", "plan")) == format_reasoning(
        FULL, include=("plan", "objects")
    )
    assert format_reasoning(FULL, include=("objects", "plan")).startswith("PLAN: ")


def test_include_empty_gives_empty_string() -> None:
    assert format_reasoning(FULL, include=()) == ""


def test_include_rejects_unknown_tag() -> None:
    with pytest.raises(ValueError, match="gripper_px"):
        format_reasoning(FULL, include=["gripper_px"])
    with pytest.raises(TypeError):
        format_reasoning(FULL, include="plan")


# --------------------------------------------------------------------------- parse leniency


def test_out_of_order_tags_parse() -> None:
    segments = [s if s.endswith(".") else s + "." for s in EXAMPLE.split(". ")]
    assert len(segments) == 5
    for perm in itertools.permutations(segments):
        assert parse_reasoning(" ".join(perm)) == EXAMPLE_REASONING


def test_missing_tags_parse() -> None:
    assert parse_reasoning("GRIPPER: [1,2]. SUBTASK: grab it.") == Reasoning(
        subtask="grab it", gripper_px=((1, 2),)
    )


def test_whitespace_and_case_lenience() -> None:
    text = (
        "  move :  stop .\nGripper: [ 1 , 2 ]  [3,4] . "
        "objects: bowl[1, 2,3 ,4 ] ;  cup [5,6,7,8].  "
    )
    assert parse_reasoning(text) == Reasoning(
        move="stop",
        gripper_px=((1, 2), (3, 4)),
        objects=(ObjectBox("bowl", (1, 2, 3, 4)), ObjectBox("cup", (5, 6, 7, 8))),
    )


def test_empty_segment_parses_as_empty_field() -> None:
    assert parse_reasoning("PLAN: . MOVE: stop.") == Reasoning(move="stop")


# --------------------------------------------------------------------------- strict errors


@pytest.mark.parametrize(
    ("text", "offending", "expected_hint"),
    [
        ("GRIPPER: [1,2] [3]. MOVE: stop.", "GRIPPER: [1,2] [3].", "[x,y]"),
        ("GRIPPER: [1,2] oops [3,4].", "GRIPPER: [1,2] oops [3,4].", "[x,y]"),
        ("GRIPPER: [1,2] [1,2] [1,2] [1,2] [1,2] [1,2].", "GRIPPER:", "at most 5"),
        ("OBJECTS: bowl 1,2,3,4.", "OBJECTS: bowl 1,2,3,4.", "[x1,y1,x2,y2]"),
        ("OBJECTS: bowl [1,2,3,x].", "OBJECTS: bowl [1,2,3,x].", "[x1,y1,x2,y2]"),
        ("OBJECTS: [1,2,3,4].", "OBJECTS: [1,2,3,4].", "<name>"),
        ("PLAN: a;; b.", "PLAN: a;; b.", "PLAN: <subtask>; <subtask>."),
        ("PLAN: a [b].", "PLAN: a [b].", "PLAN:"),
        ("MOVE: stop", "MOVE: stop", "'.'"),
        ("FOO: bar. MOVE: stop.", "FOO: bar.", "PLAN:, SUBTASK:, MOVE:, GRIPPER:, OBJECTS:"),
        ("hello MOVE: stop.", "hello", "a tag"),
        ("MOVE: stop. garbage here", "garbage here", "a tag"),
        ("MOVE: stop. MOVE: go.", "MOVE: go.", "once"),
    ],
)
def test_strict_error_names_segment_and_expectation(
    text: str, offending: str, expected_hint: str
) -> None:
    with pytest.raises(ReasoningParseError) as info:
        parse_reasoning(text)
    message = str(info.value)
    assert offending in message
    assert expected_hint in message
    assert isinstance(info.value, ValueError)


def test_non_strict_skips_malformed_segments() -> None:
    text = "PLAN: a; b. GRIPPER: [1,2] [3]. junk. FOO: bar. MOVE: stop. OBJECTS: bowl [1,2,3,4"
    assert parse_reasoning(text, strict=False) == Reasoning(plan=("a", "b"), move="stop")


def test_non_strict_keeps_first_duplicate() -> None:
    assert parse_reasoning("MOVE: stop. MOVE: go.", strict=False) == Reasoning(move="stop")


def test_non_strict_handles_truncated_generation() -> None:
    truncated = EXAMPLE[: EXAMPLE.index("[59,52]") + 3]
    assert parse_reasoning(truncated, strict=False) == Reasoning(
        plan=("a", "b"), subtask="a", move="move down"
    )


# --------------------------------------------------------------------------- format rejections


@pytest.mark.parametrize(
    ("reasoning", "field"),
    [
        (Reasoning(plan=("a; b",)), "plan[0]"),
        (Reasoning(plan=("ok", "")), "plan[1]"),
        (Reasoning(plan=("ok", "a. b")), "plan[1]"),
        (Reasoning(subtask="pick up; place"), "subtask"),
        (Reasoning(subtask="done."), "subtask"),
        (Reasoning(subtask=" padded"), "subtask"),
        (Reasoning(move="move: left"), "move"),
        (Reasoning(move="two\nlines"), "move"),
        (Reasoning(objects=(ObjectBox("box [a]", (1, 2, 3, 4)),)), "objects[0].name"),
        (
            Reasoning(objects=(ObjectBox("cup", (1, 2, 3, 4)), ObjectBox("", (1, 2, 3, 4)))),
            "objects[1].name",
        ),
    ],
)
def test_format_rejects_ambiguous_text_naming_field(reasoning: Reasoning, field: str) -> None:
    with pytest.raises(ValueError) as info:
        format_reasoning(reasoning)
    assert str(info.value).startswith(field + " ")
    # Dropout must not hide a bad label: excluded fields are still validated.
    with pytest.raises(ValueError):
        format_reasoning(reasoning, include=())
    with pytest.raises(ValueError):
        reasoning.to_frame()


def test_format_accepts_documented_characters() -> None:
    r = Reasoning(
        plan=("pick up the 2nd red-cube", "put it in the bowl's left_side, gently"),
        objects=(ObjectBox("akita black bowl", (1, 2, 3, 4)),),
    )
    assert parse_reasoning(format_reasoning(r)) == r


# --------------------------------------------------------------------------- frames


def test_to_frame_layout() -> None:
    frame = FULL.to_frame()
    assert set(frame) == {
        "reasoning.plan",
        "reasoning.subtask",
        "reasoning.move",
        "reasoning.gripper_px",
        "reasoning.objects",
    }
    assert frame["reasoning.plan"] == "pick up the red cube; place it in the bowl"
    assert frame["reasoning.subtask"] == "pick up the red cube"
    assert frame["reasoning.move"] == "move left down"
    gripper = frame["reasoning.gripper_px"]
    assert isinstance(gripper, np.ndarray)
    assert gripper.dtype == np.int16
    assert gripper.shape == (10,)
    assert gripper.tolist() == [1, 2, 3, 4, -1, -1, -1, -1, -1, -1]
    assert frame["reasoning.objects"] == '[{"name":"akita black bowl","box":[0,1,2,3]}]'


def test_empty_to_frame() -> None:
    frame = Reasoning().to_frame()
    assert frame["reasoning.plan"] == ""
    assert frame["reasoning.objects"] == "[]"
    assert frame["reasoning.gripper_px"].tolist() == [-1] * 10
    assert Reasoning.from_frame(frame) == Reasoning()


def test_frame_round_trip_example() -> None:
    frame = EXAMPLE_REASONING.to_frame()
    assert frame["reasoning.gripper_px"].tolist() == [61, 40, 60, 44, 60, 48, 59, 52, 59, 55]
    assert Reasoning.from_frame(frame) == EXAMPLE_REASONING


def test_random_frame_round_trip() -> None:
    rng = random.Random(7)
    for _ in range(500):
        r = _random_reasoning(rng)
        r = Reasoning(
            plan=r.plan,
            subtask=r.subtask,
            move=r.move,
            gripper_px=tuple((abs(x), abs(y)) for x, y in r.gripper_px),
            objects=r.objects,
        )
        frame = r.to_frame()
        assert frame["reasoning.gripper_px"].dtype == np.int16
        assert frame["reasoning.gripper_px"].shape == (10,)
        json.loads(frame["reasoning.objects"])
        assert Reasoning.from_frame(frame) == r


def test_from_frame_omits_unknown_points() -> None:
    frame = {
        "reasoning.gripper_px": np.array([5, 6, -1, -1, 7, 8, -1, -1, -1, -1], dtype=np.int16),
    }
    # Holes collapse: the third slot becomes the second point.
    assert Reasoning.from_frame(frame).gripper_px == ((5, 6), (7, 8))
    all_unknown = {"reasoning.gripper_px": np.full(10, -1, dtype=np.int16)}
    assert Reasoning.from_frame(all_unknown).gripper_px == ()


def test_from_frame_accepts_plain_lists_and_missing_keys() -> None:
    frame = {
        "reasoning.plan": "a;b",
        "reasoning.gripper_px": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "reasoning.objects": [{"name": "cup", "box": [1, 2, 3, 4]}],
    }
    r = Reasoning.from_frame(frame)
    assert r == Reasoning(
        plan=("a", "b"),
        gripper_px=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10)),
        objects=(ObjectBox("cup", (1, 2, 3, 4)),),
    )
    assert Reasoning.from_frame({}) == Reasoning()


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        ({"reasoning.gripper_px": np.zeros(8, dtype=np.int16)}, "reasoning.gripper_px"),
        ({"reasoning.gripper_px": np.full(10, 0.5)}, "reasoning.gripper_px"),
        ({"reasoning.objects": "{not json"}, "reasoning.objects"),
        ({"reasoning.objects": '{"name":"cup"}'}, "reasoning.objects"),
        ({"reasoning.objects": '[{"name":"cup"}]'}, "reasoning.objects"),
        ({"reasoning.plan": "a;;b"}, "reasoning.plan"),
    ],
)
def test_from_frame_rejects_malformed(frame: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Reasoning.from_frame(frame)


@pytest.mark.parametrize("point", [(-1, 5), (5, -1), (40000, 5)])
def test_to_frame_rejects_unstorable_points(point: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=r"gripper_px\[1\]"):
        Reasoning(gripper_px=((1, 1), point)).to_frame()


# --------------------------------------------------------------------------- properties

if HAVE_HYPOTHESIS:
    texts = st.text(alphabet=ALPHABET, min_size=1, max_size=20).map(str.strip).filter(bool)
    ints = st.integers(-(10**6), 10**6)
    reasonings = st.builds(
        Reasoning,
        plan=st.lists(texts, max_size=5).map(tuple),
        subtask=st.one_of(st.just(""), texts),
        move=st.one_of(st.just(""), texts),
        gripper_px=st.lists(st.tuples(ints, ints), max_size=5).map(tuple),
        objects=st.lists(
            st.builds(ObjectBox, name=texts, box=st.tuples(ints, ints, ints, ints)), max_size=4
        ).map(tuple),
    )

    @settings(max_examples=300, deadline=None)
    @given(reasonings, st.sets(st.sampled_from(REASONING_TAGS)))
    def test_hypothesis_round_trip(r: Reasoning, include: set[str]) -> None:
        assert parse_reasoning(format_reasoning(r)) == r
        assert parse_reasoning(format_reasoning(r, include=include)) == parse_reasoning(
            format_reasoning(r, include=include), strict=False
        )

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.text(max_size=12), max_size=3).map(tuple),
        st.text(max_size=12),
        st.text(max_size=12),
        st.text(max_size=12),
    )
    def test_hypothesis_format_accepts_only_round_trippable(
        plan: tuple[str, ...], subtask: str, move: str, name: str
    ) -> None:
        objects = (ObjectBox(name, (1, 2, 3, 4)),)
        r = Reasoning(plan=plan, subtask=subtask, move=move, objects=objects)
        try:
            text = format_reasoning(r)
        except ValueError:
            return
        assert parse_reasoning(text) == r

    parser_alphabet = st.sampled_from(list("PLANMOVEGRIPER: .;[],-0123456789ab\n"))

    @settings(max_examples=500, deadline=None)
    @given(st.text(alphabet=parser_alphabet, max_size=60))
    def test_hypothesis_parser_never_crashes(text: str) -> None:
        try:
            parse_reasoning(text)
        except ReasoningParseError:
            pass
        parse_reasoning(text, strict=False)


# --------------------------------------------------------------------------- pixel snapping


def test_snap_pixels_rounds_every_coordinate_and_keeps_the_text() -> None:
    snapped = snap_pixels(EXAMPLE_REASONING, 8)
    assert snapped.gripper_px == (
        (64, 40),
        (64, 48),
        (64, 48),
        (56, 48),
        (56, 56),
    )  # 44/8 = 5.5 -> 6
    assert [o.box for o in snapped.objects] == [(48, 40, 64, 48), (80, 72, 112, 96)]
    assert (snapped.plan, snapped.subtask, snapped.move) == (
        EXAMPLE_REASONING.plan,
        EXAMPLE_REASONING.subtask,
        EXAMPLE_REASONING.move,
    )
    assert [o.name for o in snapped.objects] == ["red cube", "bowl"]
    assert snap_pixels(snapped, 8) == snapped, "snapping is idempotent"
    assert parse_reasoning(format_reasoning(snapped)) == snapped


def test_snap_pixels_step_one_is_identity_and_bad_steps_are_refused() -> None:
    assert snap_pixels(EXAMPLE_REASONING, 1) is EXAMPLE_REASONING
    assert snap_pixels(Reasoning(), 8) == Reasoning()
    with pytest.raises(ValueError, match="pixel step must be an integer >= 1, got 0"):
        snap_pixels(EXAMPLE_REASONING, 0)

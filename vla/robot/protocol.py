"""The request/reply contract between a robot and the policy server (numpy only, no torch).

One websocket connection carries, in order:

1. server -> client: one binary msgpack frame, the metadata dict (`PolicyServer.metadata`);
2. client -> server: a binary msgpack observation dict; server -> client: a binary msgpack
   reply, the policy's own `VLAPolicy.infer` dict for this one observation plus the server's
   timing (as openpi's server adds its ``server_timing``)::

       {"actions": float32 (H, 7), "reasoning": str | None,
        "timing": {"prefix_ms", "reasoning_ms", "denoise_ms", "total_ms"},
        "server_timing": {"infer_ms", "queue_ms", "batch_size"}}

   repeated.

An error reply is a *text* frame holding JSON ``{"error": {"type": ..., "message": ...}}`` and
the connection stays open for the next request. A text frame is what an openpi client treats as a
server error (it raises with the frame's text), so openpi clients read our errors correctly, and
our client parses the JSON into a `ServerError` with the type below. Two failures cannot be
answered in-band: a message over the size limit closes the connection with code 1009 (the rest of
the frame is never read, which is the point of the limit), and a bad token refuses the handshake
with HTTP 401. A connection that sends nothing for the server's `idle_timeout_s` (metadata) is
closed with code 1001; the client reconnects on its next request.

`RequestSpec.validate` is shared by the server (which must refuse anything malformed before
it reaches the model) and the client (which can fail fast, before a network round trip).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data.schema import STATE_KEY, TASK_KEY, rename_keys
from vla.robot.chunker import CallKind

PROTOCOL = "vla-msgpack/1 (openpi-compatible)"
# An optional request entry that is not an observation (see `RequestOptions`).
OPTIONS_KEY = "__options__"

# Error types of an error reply.
BAD_FRAME = "bad_frame"  # a text frame, or bytes that are not msgpack
INVALID_OBSERVATION = "invalid_observation"  # msgpack, but not an observation the model takes
INTERNAL = "internal"  # the model failed on a valid observation (a server bug: please report)
UNSUPPORTED = "unsupported"  # the checkpoint cannot do what was asked (think, trained act-only)
OVERLOADED = "overloaded"  # the server's queue is full: retry shortly (nothing was computed)
# the model's chunk was non-finite or outside the checkpoint's action range: never sent to a robot
UNSAFE_ACTIONS = "unsafe_actions"
CLOSE_MESSAGE_TOO_BIG = 1009  # websocket close code for a message over max_message_bytes
IDLE_CLOSE_CODE = 1001  # "going away": no request for the server's idle_timeout_s


class InvalidObservation(ValueError):
    """An observation that does not match the spec; the message names the key and what's expected."""


def error_reply(error_type: str, message: str) -> str:
    """The text frame of an error reply."""
    return json.dumps({"error": {"type": error_type, "message": message}})


def parse_error_reply(text: str) -> tuple[str, str]:
    """(type, message) of an error text frame; unknown text (e.g. an openpi traceback) is INTERNAL."""
    try:
        error = json.loads(text)["error"]
        return str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return INTERNAL, text


@dataclass(frozen=True)
class RequestOptions:
    """What a request may ask besides its observation, sent as ``{"__options__": {...}}``.

    `seed` makes the chunk reproducible: the initial noise is drawn from
    `torch.Generator().manual_seed(seed)`. `think` generates a chain of thought first (returned as
    "reasoning"); `reasoning` instead conditions on a chain the robot kept from an earlier reply
    (reasoning reuse: no decoding, one parallel pass). At most one of the two.
    """

    seed: int | None = None
    think: bool = False
    reasoning: str | None = None

    @property
    def kind(self) -> CallKind:
        """The kind of policy call this request needs (one batched call takes one kind)."""
        return "think" if self.think else "reuse" if self.reasoning is not None else "act"

    def to_dict(self) -> dict[str, Any]:
        """The wire form: only what differs from the defaults (an empty map asks for nothing)."""
        payload: dict[str, Any] = {}
        if self.seed is not None:
            payload["seed"] = self.seed
        if self.think:
            payload["think"] = True
        if self.reasoning is not None:
            payload["reasoning"] = self.reasoning
        return payload


@dataclass(frozen=True)
class RequestSpec:
    """What one request must hold, in the model's key names: the wire-level check the server runs
    before queueing and the client runs before sending. (The checkpoint's camera resolutions are
    `data.schema.ObservationSpec`, served beside it as metadata "observation"; the policy's image
    step resizes or refuses other shapes.)

    `key_map` renames a robot's keys to ours (e.g. {"observation/image":
    "observation.images.agentview", "prompt": "task"}) before anything is checked. Keys the spec
    does not name are ignored, so a robot may send more than the model reads.
    """

    image_keys: tuple[str, ...]
    state_dim: int
    state_key: str = STATE_KEY
    task_key: str = TASK_KEY
    key_map: Mapping[str, str] = field(default_factory=dict)
    max_image_side: int = 4096
    max_task_chars: int = 1024
    max_reasoning_chars: int = 8192  # a `reasoning` option longer than this is refused

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_keys": list(self.image_keys),
            "state_key": self.state_key,
            "state_dim": self.state_dim,
            "task_key": self.task_key,
            "key_map": dict(self.key_map),
            "max_image_side": self.max_image_side,
            "max_task_chars": self.max_task_chars,
            "max_reasoning_chars": self.max_reasoning_chars,
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> RequestSpec:
        return cls(
            image_keys=tuple(payload["image_keys"]),
            state_dim=int(payload["state_dim"]),
            state_key=str(payload["state_key"]),
            task_key=str(payload["task_key"]),
            key_map=dict(payload.get("key_map", {})),
            max_image_side=int(payload.get("max_image_side", 4096)),
            max_task_chars=int(payload.get("max_task_chars", 1024)),
            max_reasoning_chars=int(payload.get("max_reasoning_chars", 8192)),
        )

    def robot_key(self, key: str) -> str:
        """The robot's name for one of our keys (the key itself when not mapped)."""
        return next((robot for robot, ours in self.key_map.items() if ours == key), key)

    def _name(self, key: str) -> str:
        robot = self.robot_key(key)
        return repr(key) if robot == key else f"{robot!r} (mapped to {key!r})"

    def validate(self, message: Any) -> tuple[dict[str, Any], RequestOptions]:
        """A decoded request -> (observation in our keys, with only what the model reads; options).

        Raises `InvalidObservation` naming the first problem found.
        """
        if not isinstance(message, Mapping):
            raise InvalidObservation(
                f"a request must be a map of observation keys to values, got {_describe(message)}"
            )
        for key in message:
            if not isinstance(key, str):
                raise InvalidObservation(f"observation keys must be strings, got {key!r:.80}")
        try:  # the one key renamer the processor uses too
            renamed = rename_keys(message, self.key_map)
        except KeyError as error:  # two request keys land on one of ours
            raise InvalidObservation(str(error.args[0])) from None
        options = self._options(renamed.get(OPTIONS_KEY))
        needed = [*self.image_keys, self.state_key, self.task_key]
        missing = [key for key in needed if key not in renamed]
        if missing:
            raise InvalidObservation(
                f"the observation lacks {[self.robot_key(key) for key in missing]}; it has "
                f"{sorted(str(key) for key in message)[:32]}"
                + (f" (key map: {dict(self.key_map)})" if self.key_map else "")
            )
        observation: dict[str, Any] = {}
        for key in self.image_keys:
            image = renamed[key]
            if (
                not isinstance(image, np.ndarray)
                or image.dtype != np.uint8
                or image.ndim != 3
                or image.shape[2] != 3
                or not 1 <= image.shape[0] <= self.max_image_side
                or not 1 <= image.shape[1] <= self.max_image_side
            ):
                raise InvalidObservation(
                    f"{self._name(key)} must be a uint8 array of shape (H, W, 3) with "
                    f"1 <= H, W <= {self.max_image_side}; got {_describe(image)}"
                )
            observation[key] = image
        state = renamed[self.state_key]
        if (
            not isinstance(state, np.ndarray)
            or state.dtype.kind != "f"
            or state.dtype.itemsize not in (4, 8)
            or state.shape != (self.state_dim,)
        ):
            raise InvalidObservation(
                f"{self._name(self.state_key)} must be a float32 (or float64) array of shape "
                f"({self.state_dim},); got {_describe(state)}"
            )
        if not np.isfinite(state).all():
            raise InvalidObservation(
                f"{self._name(self.state_key)} holds NaN or Inf at indices "
                f"{np.flatnonzero(~np.isfinite(state)).tolist()}: {state.tolist()}"
            )
        observation[self.state_key] = state.astype(np.float32)
        task = renamed[self.task_key]
        if not isinstance(task, str) or len(task) > self.max_task_chars:
            raise InvalidObservation(
                f"{self._name(self.task_key)} must be a string of at most {self.max_task_chars} "
                f"characters; got {_describe(task)}"
            )
        observation[self.task_key] = task
        return observation, options

    def _options(self, options: Any) -> RequestOptions:
        if options is None:
            return RequestOptions()
        known = {"seed", "think", "reasoning"}
        if not isinstance(options, Mapping) or set(options) - known:
            raise InvalidObservation(
                f"{OPTIONS_KEY!r} must be a map with the optional keys {sorted(known)}; "
                f"got {options!r:.120}"
            )
        seed = options.get("seed")
        if isinstance(seed, np.integer):
            seed = int(seed)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63
        ):
            raise InvalidObservation(f"the seed must be an int in [0, 2**63), got {seed!r:.80}")
        think = options.get("think", False)
        if not isinstance(think, bool | np.bool_):
            raise InvalidObservation(f"'think' must be true or false, got {think!r:.80}")
        reasoning = options.get("reasoning")
        if reasoning is not None and (
            not isinstance(reasoning, str) or len(reasoning) > self.max_reasoning_chars
        ):
            raise InvalidObservation(
                f"'reasoning' must be a string of at most {self.max_reasoning_chars} characters; "
                f"got {_describe(reasoning)}"
            )
        if think and reasoning is not None:
            raise InvalidObservation(
                "ask for 'think' (generate a new chain) or pass 'reasoning' (reuse a chain), not both"
            )
        return RequestOptions(seed=seed, think=bool(think), reasoning=reasoning)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {tuple(value.shape)}"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return f"a {type(value).__name__} ({value!r:.60})"

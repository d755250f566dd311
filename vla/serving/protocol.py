"""The request/reply contract between a robot and the policy server (numpy only, no torch).

One websocket connection carries, in order:

1. server -> client: one binary msgpack frame, the metadata dict (`Metadata.to_dict()`);
2. client -> server: a binary msgpack observation dict; server -> client: a binary msgpack
   reply ``{"actions": float32 (H, 7), "server_timing": {...}}``; repeated.

An error reply is a *text* frame holding JSON ``{"error": {"type": ..., "message": ...}}`` and
the connection stays open for the next request. A text frame is what an openpi client treats as a
server error (it raises with the frame's text), so openpi clients read our errors correctly, and
our client parses the JSON into a `ServerError` with the type below. Two failures cannot be
answered in-band: a message over the size limit closes the connection with code 1009 (the rest of
the frame is never read, which is the point of the limit), and a bad token refuses the handshake
with HTTP 401.

`ObservationSpec.validate` is shared by the server (which must refuse anything malformed before
it reaches the model) and the client (which can fail fast, before a network round trip).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL = "vla-msgpack/1 (openpi-compatible)"
# An optional request entry that is not an observation: {"seed": int} makes the chunk
# reproducible (the initial noise is drawn from torch.Generator().manual_seed(seed)).
OPTIONS_KEY = "__options__"

# Error types of an error reply.
BAD_FRAME = "bad_frame"  # a text frame, or bytes that are not msgpack
INVALID_OBSERVATION = "invalid_observation"  # msgpack, but not an observation the model takes
INTERNAL = "internal"  # the model failed on a valid observation (a server bug: please report)
CLOSE_MESSAGE_TOO_BIG = 1009  # websocket close code for a message over max_message_bytes


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
class ObservationSpec:
    """What one observation must hold, in the model's key names.

    `key_map` renames a robot's keys to ours (e.g. {"observation/image":
    "observation.images.agentview", "prompt": "task"}) before anything is checked. Keys the spec
    does not name are ignored, so a robot may send more than the model reads.
    """

    image_keys: tuple[str, ...]
    state_dim: int
    state_key: str = "observation.state"
    task_key: str = "task"
    key_map: Mapping[str, str] = field(default_factory=dict)
    max_image_side: int = 4096
    max_task_chars: int = 1024

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_keys": list(self.image_keys),
            "state_key": self.state_key,
            "state_dim": self.state_dim,
            "task_key": self.task_key,
            "key_map": dict(self.key_map),
            "max_image_side": self.max_image_side,
            "max_task_chars": self.max_task_chars,
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> ObservationSpec:
        return cls(
            image_keys=tuple(payload["image_keys"]),
            state_dim=int(payload["state_dim"]),
            state_key=str(payload["state_key"]),
            task_key=str(payload["task_key"]),
            key_map=dict(payload.get("key_map", {})),
            max_image_side=int(payload.get("max_image_side", 4096)),
            max_task_chars=int(payload.get("max_task_chars", 1024)),
        )

    def robot_key(self, key: str) -> str:
        """The robot's name for one of our keys (the key itself when not mapped)."""
        return next((robot for robot, ours in self.key_map.items() if ours == key), key)

    def _name(self, key: str) -> str:
        robot = self.robot_key(key)
        return repr(key) if robot == key else f"{robot!r} (mapped to {key!r})"

    def validate(self, message: Any) -> tuple[dict[str, Any], int | None]:
        """A decoded request -> (observation in our keys, with only what the model reads; seed).

        Raises `InvalidObservation` naming the first problem found.
        """
        if not isinstance(message, Mapping):
            raise InvalidObservation(
                f"a request must be a map of observation keys to values, got {_describe(message)}"
            )
        renamed: dict[str, Any] = {}
        for key, value in message.items():
            if not isinstance(key, str):
                raise InvalidObservation(f"observation keys must be strings, got {key!r:.80}")
            ours = self.key_map.get(key, key)
            if ours in renamed:
                raise InvalidObservation(
                    f"two keys of the request map to {ours!r} (key map {dict(self.key_map)})"
                )
            renamed[ours] = value
        seed = _seed(renamed.get(OPTIONS_KEY))
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
        return observation, seed


def _seed(options: Any) -> int | None:
    if options is None:
        return None
    if not isinstance(options, Mapping) or set(options) - {"seed"}:
        raise InvalidObservation(
            f"{OPTIONS_KEY!r} must be a map with the optional key 'seed'; got {options!r:.120}"
        )
    seed = options.get("seed")
    if seed is None:
        return None
    if isinstance(seed, np.integer):
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise InvalidObservation(f"the seed must be an int in [0, 2**63), got {seed!r:.80}")
    return seed


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {tuple(value.shape)}"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return f"a {type(value).__name__} ({value!r:.60})"

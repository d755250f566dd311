"""What runs on the robot computer: numpy, msgpack and websockets only, never torch.

    from vla.robot import PolicyClient, Controller, ControllerConfig, Rate

Robot computers run a real-time stack, often on an old Python without CUDA wheels, so nothing in
this package may import torch (a test imports every module here with torch unimportable). The
pieces, one module each:

- `client`: `PolicyClient`, the websocket client of `vla serve` (openpi-compatible);
- `protocol`: the request/reply contract and `RequestSpec`, shared with the server;
- `msgpack_numpy`: the wire codec (numpy arrays in openpi's msgpack encoding, no pickle);
- `controller`: `Controller`, the control loop with asynchronous inference and a watchdog;
- `stitching`: `ChunkStitcher`, joining chunks that overlap and arrive late;
- `safety`: `SafetyLayer`, limits, per-step rate limits and the safe action;
- `chunker`: `ActionChunker`, the synchronous chunk -> per-step actions rules everyone shares.

The torch side, the policy server, is `vla.serving.server`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562), so `import vla.robot.chunker` (as the policy does) does not
# load the websocket client with it.
_HOMES = {
    "ActionChunker": "chunker",
    "ChunkerConfig": "chunker",
    "default_n_action_steps": "chunker",
    "PolicyClient": "client",
    "ServerError": "client",
    "Controller": "controller",
    "ControllerConfig": "controller",
    "Rate": "controller",
    "InvalidObservation": "protocol",
    "RequestSpec": "protocol",
    "SafetyConfig": "safety",
    "SafetyLayer": "safety",
    "ChunkStitcher": "stitching",
    "StitchConfig": "stitching",
}
__all__ = [
    "ActionChunker",
    "ChunkStitcher",
    "ChunkerConfig",
    "Controller",
    "ControllerConfig",
    "InvalidObservation",
    "RequestSpec",
    "PolicyClient",
    "Rate",
    "SafetyConfig",
    "SafetyLayer",
    "ServerError",
    "StitchConfig",
    "default_n_action_steps",
]

if TYPE_CHECKING:
    from vla.robot.chunker import ActionChunker, ChunkerConfig, default_n_action_steps
    from vla.robot.client import PolicyClient, ServerError
    from vla.robot.controller import Controller, ControllerConfig, Rate
    from vla.robot.protocol import InvalidObservation, RequestSpec
    from vla.robot.safety import SafetyConfig, SafetyLayer
    from vla.robot.stitching import ChunkStitcher, StitchConfig


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})

"""The policy: VLM backbone, action expert, reasoning, caching, policy API, checkpoints, serving.

    from vla import VLAPolicy, VLAConfig

`vla` never imports `sim`: the policy only sees observation dicts, which is what makes a
checkpoint deployable on a real robot. The names above are imported on first use (PEP 562
`__getattr__`), not when `vla` is: `vla.robot`, the robot computer's package, must import
without torch, and importing a subpackage runs this file first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {"VLAConfig": "vla.config", "VLAPolicy": "vla.policy"}  # name -> module defining it
__all__ = ["VLAConfig", "VLAPolicy"]

if TYPE_CHECKING:
    from vla.config import VLAConfig
    from vla.policy import VLAPolicy


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:  # AttributeError also lets `from vla import robot` find the subpackage
        raise AttributeError(f"module 'vla' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})

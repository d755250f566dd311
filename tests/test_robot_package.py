"""`vla.robot` runs on robot computers without torch; `vla` still offers the policy up front."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import vla.robot

ROBOT_MODULES = sorted(
    f"vla.robot.{module.name}" for module in pkgutil.iter_modules(vla.robot.__path__)
)

# Run before anything else in a fresh interpreter: every `import torch` (or torch.x) now fails,
# as it would on a robot computer where torch is not installed.
NO_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is not installed here (import of {name!r})")
        return None

sys.meta_path.insert(0, NoTorch())
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )


def assert_succeeds(code: str) -> None:
    """`code` runs to its end in a fresh interpreter (its asserts are the test)."""
    result = run_python(code + "\nprint('reached the end')\n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("reached the end")


def test_every_robot_module_imports_where_torch_is_unimportable() -> None:
    assert {"vla.robot.client", "vla.robot.controller", "vla.robot.protocol"} <= set(ROBOT_MODULES)
    assert_succeeds(
        NO_TORCH
        + f"""
import importlib
import vla.robot

for name in {ROBOT_MODULES!r}:
    importlib.import_module(name)
for name in vla.robot.__all__:  # the package's own names resolve too
    getattr(vla.robot, name)
assert "torch" not in sys.modules, "torch was imported"
outside = [m for m in sys.modules if m.startswith("vla.") and not m.startswith("vla.robot")]
assert not outside, f"vla.robot imported {{outside}}"
"""
    )


def test_the_guard_does_catch_a_torch_import() -> None:
    """The check above means something: the same guard makes the torch server fail to import."""
    result = run_python(NO_TORCH + "import vla.serving.server\n")
    assert result.returncode != 0 and "torch is not installed here" in result.stderr


def test_vla_offers_the_policy_and_config_without_importing_torch_until_asked() -> None:
    assert_succeeds(
        """
import sys
import vla

assert "torch" not in sys.modules, "import vla alone imported torch"
assert {"VLAPolicy", "VLAConfig"} <= set(dir(vla))
from vla import VLAConfig, VLAPolicy
import vla.config, vla.policy

assert VLAPolicy is vla.policy.VLAPolicy and VLAConfig is vla.config.VLAConfig
assert VLAConfig.named("tiny").action_horizon > 0
try:
    vla.NoSuchThing
except AttributeError as error:
    assert "NoSuchThing" in str(error)
else:
    raise AssertionError("an unknown name must raise AttributeError")
"""
    )


def test_vla_never_imports_sim() -> None:
    """DESIGN: the policy sees observation dicts only; the deploy demo wiring both is at the root."""
    root = Path(__file__).resolve().parents[1] / "vla"
    offenders = [
        f"{path.relative_to(root.parent)}:{number}"
        for path in sorted(root.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip().startswith(("import sim", "from sim"))
    ]
    assert offenders == []

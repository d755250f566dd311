"""Periodic closed-loop evaluation during training, as a Lightning callback.

Offline losses say little about whether a policy succeeds in closed loop, so training can roll the
current weights out in simulation every N steps and log success (and a video) next to the loss.
`vla` never imports the simulator: the callback takes an `evaluate(policy) -> report` function,
which train.py builds from `sim.runner.EnvRunner` (`runner.run(policy, policy.new_chunker)`). The report is `EvalMetrics.to_dict()`-shaped:
{"overall": {"success_rate": ...}, "tasks": [...], "episodes": [{"video": path | None}, ...]}.

The rollout runs on global rank 0 only; the other ranks wait at their next collective, so keep an
evaluation shorter than the process group's timeout (30 minutes by default).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch

from vla.policy import VLAPolicy

Evaluate = Callable[[VLAPolicy], Mapping[str, Any]]


class PeriodicEvaluation(L.Callback):
    def __init__(self, evaluate: Evaluate, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.evaluate = evaluate
        self.every_n_steps = every_n_steps
        self.history: list[dict[str, float]] = []  # (step, success) per evaluation, for tests

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps != 0 or not trainer.is_global_zero:
            return
        self.run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The final weights are evaluated too, unless the last step just was.
        if trainer.is_global_zero and (
            not self.history or self.history[-1]["step"] != trainer.global_step
        ):
            self.run(trainer, pl_module)

    @torch.no_grad()
    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Mapping[str, Any]:
        model = pl_module.model
        was_training = model.training
        # Rolled out with the policy API's default chunking (`policy.new_chunker`), exactly as
        # eval.py rolls out an exported checkpoint.
        policy = VLAPolicy(model, pl_module.processor, device=pl_module.device)
        try:
            report = self.evaluate(policy)
        finally:
            model.train(was_training)
        step = trainer.global_step
        metrics = {"eval/success_rate": float(report["overall"]["success_rate"])}
        for index, task in enumerate(report.get("tasks", [])):
            metrics[f"eval/task{index:02d}_success_rate"] = float(task["success_rate"])
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self.history.append({"step": step, "success_rate": metrics["eval/success_rate"]})
        self._log_video(trainer, report, step)
        return report

    @staticmethod
    def _log_video(trainer: L.Trainer, report: Mapping[str, Any], step: int) -> None:
        videos = [e["video"] for e in report.get("episodes", []) if e.get("video")]
        if not videos:
            return
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_video("eval/rollout", videos[:4], step=step)

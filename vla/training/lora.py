"""LoRA on the backbone (peft), and merging it back for export.

Fine-tuning a large backbone with low-rank adapters keeps its weights frozen and trains a few
million parameters instead. The exported checkpoint must not depend on peft: `merge_lora` folds
every adapter into its base weight and puts the plain `nn.Linear` back, so the export is an
ordinary `VLAModel` state dict.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(
    backbone: nn.Module, rank: int, alpha: float, targets: Sequence[str] = DEFAULT_TARGETS
) -> int:
    """Inject LoRA adapters into the backbone's decoder projections and freeze everything else
    in the backbone; returns the number of trainable adapter parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
    # only the decoder layers: the vision tower keeps its (frozen) weights
    inject_adapter_in_model(config, backbone.layers)
    trainable = 0
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad = "lora_" in name
        trainable += parameter.numel() if parameter.requires_grad else 0
    if trainable == 0:
        raise ValueError(f"no backbone module matched the LoRA targets {list(targets)}")
    return trainable


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base layer and remove peft's wrappers; returns how many."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
                merged += 1
    return merged

"""LoRA (Hu et al. 2021) on our model through ``peft``: W' = W + (alpha / r) · B·A on the target projections,
with A random and B zero at the start (so the wrapped model starts exactly at the base), only A and B trained.

peft fits our model as it is: its module names are HF Llama's (``q_proj``, ``down_proj``, …), and peft's LoRA
injection works on any ``torch.nn.Module``. ``merged`` folds the adapters back into plain weights, so the
export is the same Hugging Face layout as the base model (no peft needed to load it).

QLoRA (Dettmers et al. 2023) would keep the frozen base in 4-bit NF4 (bitsandbytes) and train the same adapters;
bitsandbytes' 4-bit kernels need a GPU, so it is not offered on the CPU path here.
"""

from __future__ import annotations

import copy

from torch import nn

from training.config import LoraConfig


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """``model`` with LoRA adapters on ``cfg.target_modules``; every other weight frozen."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules)
    )
    return get_peft_model(model, peft_cfg)


def merged(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its LoRA adapters merged into the weights (the model itself if it has none)."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()

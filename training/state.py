"""Training state beside the model weights, without pickle: optimizer tensors and RNG states in safetensors,
everything else (step, data position, MLflow run id, param-group hyperparameters) in JSON.

A checkpoint folder holds the Hugging Face model layout (``training.checkpoint``) plus::

    optimizer.safetensors   state.<param index>.<name> tensors (exp_avg, exp_avg_sq, step), rng.* states
    trainer_state.json      {"step": …, "data_position": {...}, "param_groups": [...], ...}
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


def save_training_state(folder: Path, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    opt = optimizer.state_dict()
    for index, values in opt["state"].items():
        for name, value in values.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{index}.{name}"] = tensor.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(folder / OPTIMIZER_FILE))
    doc = dict(state)
    doc["param_groups"] = opt["param_groups"]
    doc["rng_python"] = list(random.getstate()[1])
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    doc["rng_numpy"] = {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}
    (folder / STATE_FILE).write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")


def load_training_state(folder: Path, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore the optimizer (when given) and the RNGs; return the JSON state (step, data position, …)."""
    doc = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / OPTIMIZER_FILE))
    if optimizer is not None:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            if key.startswith("state."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = tensor
        optimizer.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    random.setstate((3, tuple(doc["rng_python"]), None))
    rng = doc["rng_numpy"]
    np.random.set_state(("MT19937", np.array(rng["keys"], dtype=np.uint32), rng["pos"], rng["has_gauss"], rng["gauss"]))
    return doc

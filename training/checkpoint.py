"""Checkpoints in the Hugging Face Llama layout: `model.safetensors` + `config.json` + `generation_config.json`
(+ tokenizer files), so `transformers.LlamaForCausalLM.from_pretrained(dir)` loads them as they are.

Loading goes through safetensors only: nothing here unpickles (no `torch.load`), so a checkpoint from an
untrusted place cannot run code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from training.model import LlamaModel, ModelConfig, RewardModel

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"  # sharded checkpoints written by transformers
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
_RESERVED = {WEIGHTS_NAME, WEIGHTS_INDEX_NAME, CONFIG_NAME, GENERATION_CONFIG_NAME}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def config_to_hf(
    cfg: ModelConfig,
    *,
    dtype: torch.dtype = torch.float32,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    architecture: str = "LlamaForCausalLM",
) -> dict:
    """The LlamaConfig JSON for cfg. Special-token ids are written even when None, so transformers does not fall
    back to Llama-2's defaults (bos 1, eos 2). ``architecture`` "LlamaForSequenceClassification" is a reward model
    (one label, pooled at the last non-pad token, which is why pad_token_id must be set)."""
    dtype_name = _dtype_name(dtype)
    labels = {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}} if architecture != "LlamaForCausalLM" else {}
    return labels | {
        "architectures": [architecture],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        # transformers >= 5 reads rope_parameters; 4.x reads the top-level rope_theta (5.x folds it in, no clash)
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "dtype": dtype_name,
        "use_cache": True,
    }


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a LlamaConfig JSON dict; raises ValueError for Llama variants this model does not implement."""
    if hf.get("model_type", "llama") != "llama":
        raise ValueError(f"model_type {hf.get('model_type')!r} is not 'llama'")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    unsupported = {
        "hidden_act": hf.get("hidden_act", "silu") != "silu",
        "attention_bias": bool(hf.get("attention_bias", False)),
        "mlp_bias": bool(hf.get("mlp_bias", False)),
        "rope_parameters.rope_type": rope_type != "default",
        "pretraining_tp": hf.get("pretraining_tp", 1) not in (1, None),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"unsupported Llama config fields {bad}: this model implements plain Llama only")
    dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or dim // n_heads
    if head_dim * n_heads != dim:
        raise ValueError(f"head_dim {head_dim} × num_attention_heads {n_heads} != hidden_size {dim}; not supported")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        dim=dim,
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        ffn_hidden=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=hf.get("initializer_range", 0.02),
    )


def save_pretrained(
    model: LlamaModel | RewardModel,
    cfg: ModelConfig,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    extra_files: dict[str, str | bytes | dict | list] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Path:
    """Write model + config (+ tokenizer files + extra files) to out_dir in the HF Llama layout; returns out_dir.
    A ``RewardModel`` is written as ``LlamaForSequenceClassification`` (its ``pad_id`` as pad_token_id).

    dtype: weights are cast to it on the way out (fp32 default; bf16 halves the size).
    tokenizer_dir: every regular file in it is copied (tokenizer.model, tokenizer_config.json, ...).
    extra_files: name -> content (str/bytes as is, dict/list as JSON), e.g. the training data position.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _dtype_name(dtype)  # fail early on an unsupported dtype

    model = _unwrap(model)
    state = {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        # one storage for both names: safetensors refuses shared tensors, and HF re-ties lm_head on load
        state.pop("lm_head.weight", None)
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})

    is_reward = isinstance(model, RewardModel)
    if is_reward:
        pad_token_id = model.pad_id
    special = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    architecture = "LlamaForSequenceClassification" if is_reward else "LlamaForCausalLM"
    _write_json(out / CONFIG_NAME, config_to_hf(cfg, dtype=dtype, architecture=architecture, **special))
    _write_json(out / GENERATION_CONFIG_NAME, {k: v for k, v in special.items() if v is not None})

    if tokenizer_dir is not None:
        for src in sorted(Path(tokenizer_dir).iterdir()):
            if src.is_file():
                if src.name in _RESERVED:
                    raise ValueError(f"tokenizer dir {tokenizer_dir} holds {src.name}, which would overwrite the model")
                shutil.copy2(src, out / src.name)
    for name, content in (extra_files or {}).items():
        if Path(name).name != name or name in _RESERVED:
            raise ValueError(f"extra file name {name!r} must be a plain file name other than {sorted(_RESERVED)}")
        if isinstance(content, dict | list):
            _write_json(out / name, content)
        elif isinstance(content, bytes):
            (out / name).write_bytes(content)
        else:
            (out / name).write_text(content, encoding="utf-8")
    return out


def load_pretrained(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[LlamaModel, ModelConfig]:
    """Load a checkpoint in the HF Llama layout (ours or one written by transformers) with safetensors only.

    dtype None keeps the stored dtype. Returns the model in eval mode and its config.
    """
    path = Path(path)
    cfg = config_from_hf(json.loads((path / CONFIG_NAME).read_text(encoding="utf-8")))
    state = read_safetensors_state(path)
    for key in [k for k in state if k.endswith("rotary_emb.inv_freq")]:  # a buffer old transformers saved
        del state[key]
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)  # transformers may write it; it must equal the embedding anyway
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model = LlamaModel(cfg, seed=None)
    stored_dtype = state["model.embed_tokens.weight"].dtype
    model.to(dtype=dtype or stored_dtype)
    model.load_state_dict(state, strict=True)
    if cfg.tie_embeddings:  # load_state_dict copies into the tied Parameter, so the tie survives
        assert model.lm_head.weight is model.model.embed_tokens.weight
    return model.to(device).eval(), cfg


def load_reward_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[RewardModel, ModelConfig]:
    """A reward model exported by ``save_pretrained`` (HF ``LlamaForSequenceClassification`` layout), in eval mode."""
    path = Path(path)
    hf = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    if "LlamaForSequenceClassification" not in hf.get("architectures", []) or hf.get("pad_token_id") is None:
        raise ValueError(f"{path} is not a reward model (LlamaForSequenceClassification with a pad_token_id)")
    cfg = config_from_hf(hf)
    model = RewardModel(cfg, pad_id=hf["pad_token_id"], seed=None)
    model.load_state_dict(read_safetensors_state(path), strict=True)
    return model.to(device).eval(), cfg


def read_safetensors_state(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint dir (single file or transformers' sharded index), read with safetensors."""
    path = Path(path)
    if (path / WEIGHTS_NAME).is_file():
        files = [path / WEIGHTS_NAME]
    elif (path / WEIGHTS_INDEX_NAME).is_file():
        index = json.loads((path / WEIGHTS_INDEX_NAME).read_text(encoding="utf-8"))
        files = [path / name for name in sorted(set(index["weight_map"].values()))]
    else:
        raise FileNotFoundError(f"no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in {path}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                state[key] = f.get_tensor(key)
    return state


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP (`.module`) or torch.compile (`._orig_mod`), whose keys carry no prefix."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _dtype_name(dtype: torch.dtype) -> str:
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"unsupported checkpoint dtype {dtype}; use one of {sorted(_DTYPES)}")


def _write_json(path: Path, obj: dict | list) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")

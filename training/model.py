"""A Llama-style decoder-only transformer you can read top to bottom.

Design choices (and why):

- **Hugging Face layout.** Module and parameter names equal `transformers.LlamaForCausalLM`'s state-dict keys
  (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`, ...), so a checkpoint written by
  `training.checkpoint.save_pretrained` loads into transformers with no renaming, and back. For the same reason
  q/k/v and gate/up stay separate `nn.Linear`s (no fused qkv) and nothing has a bias.
- **RMSNorm** (no mean subtraction, no bias) computed in fp32 and cast back, exactly like HF Llama, so logits
  agree to ~1e-6 in fp32 and the norm stays stable under bf16 autocast.
- **RoPE** in HF's `rotate_half` convention (first half / second half of each head, not interleaved pairs) so
  q_proj/k_proj weights map 1:1. cos/sin are computed once for `max_seq_len` positions and kept as non-persistent
  buffers: nothing is recomputed per step and nothing extra lands in the checkpoint.
- **SwiGLU MLP**: `down(silu(gate(x)) * up(x))`; hidden size defaults to 8/3·dim rounded up to `multiple_of`
  (keeps the FLOPs of a 4·dim GELU MLP).
- **Grouped-query attention** through `F.scaled_dot_product_attention`: `is_causal=True` when no mask is given
  (no T×T mask is ever materialised, and the fused CPU/GPU kernels apply); an explicit boolean or additive mask
  when one is given (packed documents, padding). `position_ids` may restart inside a row for packed sequences;
  `block_causal_mask(position_ids)` builds the matching block-diagonal causal mask.
- **Tied embeddings** optional: `lm_head.weight` is then the same Parameter as `model.embed_tokens.weight`.
- **Init** (nanoGPT/GPT-2): N(0, init_std) for every matrix, residual output projections (o_proj, down_proj)
  scaled by 1/sqrt(2·n_layers) so the residual stream's variance does not grow with depth, norms at 1. Drawn from
  a CPU generator in a fixed order, so a seed gives the same weights on any device.
- **KV cache** (``KVCache``): preallocated keys/values per layer, filled in place (no per-step concatenation);
  the forward takes it only from ``training.generation``, which always passes an explicit mask (left-padded
  prompts). Training never uses it. No dropout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

# name -> architecture; vocab_size comes from the tokenizer. Parameter counts assume a 32k vocabulary.
PRESETS: dict[str, dict] = {
    # ~4.9M (most of it the tied 32k embedding); fast enough for CPU tests
    "tiny": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, multiple_of=64, max_seq_len=1024, tie_embeddings=True),
    # ~25M
    "small": dict(dim=384, n_layers=8, n_heads=6, n_kv_heads=2, max_seq_len=1024, tie_embeddings=True),
    # GPT-2-small-like: 12 layers, d 768, 12 heads; ~110M at 32k vocab (124M at GPT-2's 50k)
    "124m": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, max_seq_len=2048, tie_embeddings=True),
    # GPT-2-medium-like: 24 layers, d 1024, 16 heads; ~340M at 32k vocab
    "350m": dict(dim=1024, n_layers=24, n_heads=16, n_kv_heads=16, max_seq_len=2048, tie_embeddings=True),
}


@dataclass
class ModelConfig:
    """Architecture of the decoder. Each field maps to a LlamaConfig field (training.checkpoint), except
    multiple_of, which only derives ffn_hidden."""

    vocab_size: int
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: same as n_heads (plain multi-head attention)
    ffn_hidden: int | None = None  # None: 8/3·dim rounded up to multiple_of
    multiple_of: int = field(default=256, compare=False)  # only used to derive ffn_hidden
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.ffn_hidden is None:
            if self.multiple_of < 1:
                raise ValueError(f"multiple_of must be >= 1, got {self.multiple_of}")
            hidden = int(8 * self.dim / 3)
            self.ffn_hidden = self.multiple_of * math.ceil(hidden / self.multiple_of)
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}); change one of them")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads}); "
                f"pick n_kv_heads among the divisors of {self.n_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim = dim / n_heads = {self.head_dim} must be even for RoPE; change dim or n_heads")
        if self.rope_theta <= 0 or self.norm_eps <= 0 or self.init_std <= 0:
            raise ValueError("rope_theta, norm_eps and init_std must be > 0")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def preset(cls, name: str, vocab_size: int, **overrides) -> ModelConfig:
        """A named size ("tiny", "small", "124m", "350m") for a given vocabulary; keyword overrides win."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; valid: {[f.name for f in fields(cls)]}")
        return cls(vocab_size=vocab_size, **{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 statistics even under bf16, as HF Llama does (the weights then agree bit for bit)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_seq_len, head_dim] in HF's layout (frequencies repeated for both halves)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, head_dim]; cos/sin: [T, head_dim] or [B, 1, T, head_dim]."""
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Keys and values of every layer, preallocated [B, kv_heads, capacity, head_dim] and filled in place;
    ``length`` positions are filled (the backbone advances it after each forward)."""

    def __init__(self, cfg: ModelConfig, batch: int, capacity: int, device: torch.device, dtype: torch.dtype) -> None:
        if capacity > cfg.max_seq_len:
            raise ValueError(f"a cache of {capacity} positions exceeds max_seq_len {cfg.max_seq_len}")
        shape = (batch, cfg.n_kv_heads, capacity, cfg.head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's k/v [B, kv_heads, T, hd] after the filled positions; all of them, as views."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: tuple[KVCache, int] | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # keys/values of every position so far (this call's written in place)
            k, v = cache[0].update(cache[1], k, v)
        if attn_mask is None:
            # enable_gqa: the kernel broadcasts the kv heads itself, no repeated k/v is materialised
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads)
        elif cache is not None and x.device.type == "cpu":
            # decoding on CPU: the math kernel broadcasts kv heads itself (no per-step copy of the whole cache)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=self.n_kv_heads != self.n_heads)
        else:
            # the masked GPU kernels (memory-efficient) lack GQA support, so repeat kv heads here, as HF does
            if self.n_kv_heads != self.n_heads:
                k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
                v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: tuple[KVCache, int] | None = None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """The `model.` prefix of HF's state dict: embeddings, layers, final norm (and RoPE tables, not saved). Its
    output, the normed last hidden states, feeds the LM head (``LlamaModel``) or a reward head (``RewardModel``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        cos, sin = rope_cos_sin(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """input_ids [B, T] -> normed last hidden states [B, T, dim]; arguments as in ``LlamaModel.forward``.

        With a ``cache`` the keys/values of ``input_ids`` are appended to it and attention covers every cached
        position: ``attn_mask`` [B, 1, T, cached + T] and ``position_ids`` must then be given."""
        T = input_ids.shape[1]
        if cache is not None and (attn_mask is None or position_ids is None):
            raise ValueError("a KV-cached forward needs explicit position_ids and attn_mask")
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.cfg.max_seq_len}")
        if position_ids is None:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        else:
            cos, sin = self.rope_cos[position_ids], self.rope_sin[position_ids]
            if position_ids.ndim == 2:  # [B, T, hd] -> [B, 1, T, hd], broadcast over heads
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        x = self.embed_tokens(input_ids)
        # cos/sin follow the activations' dtype (bf16 under .to(bfloat16)), as in HF
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if attn_mask is not None and attn_mask.ndim == 3:
            attn_mask = attn_mask.unsqueeze(1)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attn_mask, None if cache is None else (cache, i))
        if cache is not None:
            cache.length += T
        return self.norm(x)


class LlamaModel(nn.Module):
    """Decoder-only LM: `forward(input_ids) -> logits`; state-dict keys equal HF LlamaForCausalLM's."""

    def __init__(self, cfg: ModelConfig, seed: int | None = 0) -> None:
        """seed=None skips our init (for callers that load weights right after)."""
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if seed is not None:
            self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Deterministic GPT-2-style init; same seed -> same weights on every device."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        residual_std = self.cfg.init_std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():  # named_parameters() yields a tied weight once
            if p.ndim == 1:  # RMSNorm gains
                p.fill_(1.0)
                continue
            std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else self.cfg.init_std
            p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, std, generator=gen))

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, vocab].

        position_ids [B, T] or [T]: positions for RoPE (default 0..T-1); restart them at 0 for each packed
        document.
        attn_mask: boolean (True = may attend) or additive float mask, broadcastable to [B, heads, T, T]; a
        [B, T, T] mask is accepted too. It replaces the built-in causal mask, so it must be causal itself, and
        every query must be allowed at least itself (keep the diagonal), else sdpa returns NaN for that row.
        """
        return self.lm_head(self.model(input_ids, position_ids, attn_mask))

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied matrix counts once); exclude_embeddings drops the token embedding and an
        untied lm_head (Kaplan's "non-embedding" count)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.model.embed_tokens.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token, 6N + 12·L·d·T (PaLM appendix B, nanoGPT's MFU).

        N counts the weights every token is multiplied through: the non-embedding parameters plus the output
        projection (V·d, tied or not); the input embedding is a lookup and costs nothing. 12·L·d·T is the
        attention score and value matmuls (forward + backward) over a context of T.
        """
        c = self.cfg
        n_matmul = self.num_params(exclude_embeddings=True) + c.vocab_size * c.dim
        return 6 * n_matmul + 12 * c.n_layers * c.dim * seq_len


class RewardModel(nn.Module):
    """The decoder with a scalar head: ``forward(input_ids) -> rewards [B]``, read at each row's last non-pad
    token (where the whole prompt and response have been seen). State-dict keys equal HF's
    ``LlamaForSequenceClassification`` with ``num_labels=1`` (``model.*`` + ``score.weight``), so the exported
    checkpoint loads with ``AutoModelForSequenceClassification``."""

    def __init__(self, cfg: ModelConfig, pad_id: int, seed: int | None = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.pad_id = pad_id
        self.model = Backbone(cfg)
        self.score = nn.Linear(cfg.dim, 1, bias=False)
        if seed is not None:  # a fresh head (the backbone is usually loaded from an LM right after)
            gen = torch.Generator(device="cpu").manual_seed(seed)
            with torch.no_grad():
                self.score.weight.copy_(torch.empty(self.score.weight.shape).normal_(0.0, cfg.init_std, generator=gen))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T], right-padded with ``pad_id`` -> rewards [B] (fp32).

        The pooled position is HF's rule: the last position that is not ``pad_id`` (so a pad id inside the text
        would move it; our tokenizer never produces one). Right padding needs no attention mask: causal attention
        never lets a real token see the pads after it.
        """
        hidden = self.model(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (positions * (input_ids != self.pad_id)).argmax(dim=-1)
        pooled = hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last]
        return self.score(pooled).squeeze(-1).float()


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask [B, 1, T, T] for packed rows: a token attends to earlier tokens of its own document only.

    A document starts wherever its position id is 0 (positions restart per document).
    """
    doc = (position_ids == 0).cumsum(dim=-1)  # [B, T] document index within the row
    T = position_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=position_ids.device).tril()
    same_doc = doc.unsqueeze(-1) == doc.unsqueeze(-2)
    return (same_doc & causal).unsqueeze(1)

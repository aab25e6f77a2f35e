"""The Llama-style model and its HF-layout checkpoints: parity with transformers, safe loading, masking, training."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from training.checkpoint import config_from_hf, config_to_hf, load_pretrained, save_pretrained
from training.generation import generate
from training.model import LlamaModel, ModelConfig, block_causal_mask

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub access on test machines

VOCAB = 300


def tiny_cfg(**overrides) -> ModelConfig:
    # GQA (4 query heads share 2 kv heads) and a non-default rope_theta, so both must survive the round trip
    base = dict(
        vocab_size=VOCAB,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        multiple_of=32,
        max_seq_len=64,
        rope_theta=5000.0,
        norm_eps=1e-5,
    )
    return ModelConfig(**{**base, **overrides})


def ids(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


# (a) transformers loads our checkpoint and computes the same logits


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_transformers_loads_checkpoint_with_equal_logits(tmp_path, transformers, tie, attn):
    cfg = tiny_cfg(tie_embeddings=tie)
    model = LlamaModel(cfg, seed=1).eval()
    save_pretrained(model, cfg, tmp_path, bos_token_id=1, eos_token_id=2, pad_token_id=0)

    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation=attn, dtype=torch.float32).eval()
    assert hf.config.tie_word_embeddings is tie
    assert hf.config.num_key_value_heads == 2 and hf.config.rope_parameters["rope_theta"] == 5000.0
    assert (hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id) == (1, 2, 0)
    hf_state = hf.state_dict()
    for name, p in model.state_dict().items():  # every weight landed under the same name, none left at HF's init
        torch.testing.assert_close(hf_state[name], p, rtol=0, atol=0)

    x = ids(2, 48)
    positions = torch.arange(48).remainder(20).expand(2, -1)  # RoPE lookups at restarted positions agree too
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, rtol=0, atol=1e-4)
        torch.testing.assert_close(
            model(x, position_ids=positions), hf(x, position_ids=positions).logits, rtol=0, atol=1e-4
        )


def test_we_load_a_checkpoint_written_by_transformers(tmp_path, transformers):
    cfg = tiny_cfg(tie_embeddings=False)
    hf_cfg = transformers.LlamaConfig(
        **{k: v for k, v in config_to_hf(cfg).items() if k not in ("model_type", "dtype")}
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.save_pretrained(tmp_path)

    model, loaded_cfg = load_pretrained(tmp_path)
    assert loaded_cfg == cfg
    x = ids(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, rtol=0, atol=1e-4)


def test_greedy_generate_matches_transformers(tmp_path, transformers):
    cfg = tiny_cfg(tie_embeddings=True)
    model = LlamaModel(cfg, seed=3)
    save_pretrained(model, cfg, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = ids(1, 8, seed=5)
    ours = generate(model, prompt, max_new_tokens=10)
    theirs = hf.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours.shape == (1, 18)
    assert torch.equal(ours, theirs)


# (b) our loader round-trips exactly and never unpickles


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any unpickling during the test raises: a guard around the loader, not a stand-in for it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint loader must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_load_pretrained_round_trips_exactly_without_unpickling(tmp_path, tie, no_unpickling):
    cfg = tiny_cfg(tie_embeddings=tie)
    model = LlamaModel(cfg, seed=7)
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.model").write_bytes(b"\x00sentencepiece-bytes")
    (tok_dir / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    out = save_pretrained(
        model,
        cfg,
        tmp_path / "ckpt",
        tokenizer_dir=tok_dir,
        extra_files={"data_position.json": {"shard": 3, "offset": 1234}},
    )

    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "config.json",
        "data_position.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    assert (out / "tokenizer.model").read_bytes() == b"\x00sentencepiece-bytes"
    assert json.loads((out / "data_position.json").read_text()) == {"shard": 3, "offset": 1234}

    loaded, loaded_cfg = load_pretrained(out)
    assert loaded_cfg == cfg
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name
    if tie:
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    x = ids(2, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_bf16_checkpoint_holds_the_rounded_weights(tmp_path, no_unpickling):
    cfg = tiny_cfg()
    model = LlamaModel(cfg, seed=2)
    save_pretrained(model, cfg, tmp_path, dtype=torch.bfloat16)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    loaded, _ = load_pretrained(tmp_path)
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p.to(torch.bfloat16)), name
    as_fp32, _ = load_pretrained(tmp_path, dtype=torch.float32)
    assert as_fp32.lm_head.weight.dtype == torch.float32


def test_config_hf_round_trip_and_unsupported_variants():
    cfg = tiny_cfg(tie_embeddings=True)
    assert config_from_hf(config_to_hf(cfg)) == cfg
    legacy = {k: v for k, v in config_to_hf(cfg).items() if k != "rope_parameters"}  # transformers 4.x layout
    assert config_from_hf(legacy).rope_theta == 5000.0
    with pytest.raises(ValueError, match="attention_bias"):
        config_from_hf({**config_to_hf(cfg), "attention_bias": True})
    with pytest.raises(ValueError, match="rope_type"):
        config_from_hf({**config_to_hf(cfg), "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}})


# (c) causality and (d) packed documents


def test_future_tokens_do_not_change_earlier_logits():
    model = LlamaModel(tiny_cfg(), seed=0).eval()
    x = ids(2, 24)
    y = x.clone()
    y[:, 15:] = (y[:, 15:] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_packed_documents_with_reset_positions_match_each_document_alone():
    model = LlamaModel(tiny_cfg(), seed=0).eval()
    doc_a, doc_b = ids(1, 11, seed=1), ids(1, 17, seed=2)
    packed = torch.cat([doc_a, doc_b], dim=1)
    positions = torch.cat([torch.arange(11), torch.arange(17)]).unsqueeze(0)
    mask = block_causal_mask(positions)
    assert mask.shape == (1, 1, 28, 28) and not mask[0, 0, 11:, :11].any()
    with torch.no_grad():
        packed_logits = model(packed, position_ids=positions, attn_mask=mask)
        alone_a, alone_b = model(doc_a), model(doc_b)
        additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
        additive_logits = model(packed, position_ids=positions, attn_mask=additive[:, 0])  # [B, T, T] form
        shared_positions_logits = model(packed, position_ids=positions[0], attn_mask=mask)  # [T] positions
    torch.testing.assert_close(packed_logits[:, :11], alone_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(packed_logits[:, 11:], alone_b, rtol=0, atol=1e-5)
    torch.testing.assert_close(additive_logits, packed_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(shared_positions_logits, packed_logits, rtol=0, atol=0)


def test_sequence_longer_than_max_seq_len_is_refused():
    model = LlamaModel(tiny_cfg(max_seq_len=16), seed=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(ids(1, 17))


# (e) config validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(dim=66, n_heads=4), "divisible by n_heads"),
        (dict(n_heads=4, n_kv_heads=3), "divisible by n_kv_heads"),
        (dict(dim=60, n_heads=4), "must be even for RoPE"),
        (dict(n_layers=0), "n_layers must be a positive integer"),
    ],
)
def test_invalid_config_raises_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_cfg(**overrides)


def test_presets():
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("7b", vocab_size=32000)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.preset("tiny", vocab_size=32000, n_layer=3)
    with torch.device("meta"):  # shapes only: no memory, no init
        sizes = {
            name: LlamaModel(ModelConfig.preset(name, 32000), seed=None).num_params() / 1e6
            for name in ("tiny", "small", "124m", "350m")
        }
    assert 1 <= sizes["tiny"] <= 5 and 20 <= sizes["small"] <= 30
    assert 100 <= sizes["124m"] <= 130 and 320 <= sizes["350m"] <= 370
    big = ModelConfig.preset("124m", 32000)
    assert (big.n_layers, big.dim, big.n_heads) == (12, 768, 12)


def test_init_is_deterministic_per_seed():
    cfg = tiny_cfg()
    a, b, c = LlamaModel(cfg, seed=5), LlamaModel(cfg, seed=5), LlamaModel(cfg, seed=6)
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), name
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    emb = a.model.embed_tokens.weight
    assert abs(emb.std().item() - cfg.init_std) < 0.1 * cfg.init_std
    assert a.model.layers[0].mlp.down_proj.weight.std() < 0.7 * cfg.init_std  # residual projections scaled down
    assert torch.equal(a.model.norm.weight, torch.ones(cfg.dim))


# (f) training sanity


def test_a_few_adamw_steps_reduce_the_loss():
    cfg = tiny_cfg()
    model = LlamaModel(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = ids(4, 33, seed=9)
    x, y = batch[:, :-1], batch[:, 1:]
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x).view(-1, VOCAB), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(float(VOCAB))).item(), abs=0.5)  # ~uniform at init
    assert losses[-1] < 0.5 * losses[0]


# (g) parameter and FLOP counts by hand


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_num_params_and_flops_per_token_by_hand(tie):
    V, d, L, H, KV, T = VOCAB, 64, 2, 4, 2, 64
    cfg = tiny_cfg(tie_embeddings=tie)
    hidden = 32 * -(-(8 * d // 3) // 32)  # 8/3·d rounded up to multiple_of=32
    assert cfg.ffn_hidden == hidden == 192
    head_dim = d // H
    attn = d * H * head_dim + 2 * d * KV * head_dim + H * head_dim * d
    mlp = 3 * d * hidden
    per_layer = attn + mlp + 2 * d  # two RMSNorm gains
    non_embedding = L * per_layer + d  # + final norm
    embeddings = V * d if tie else 2 * V * d

    model = LlamaModel(cfg, seed=0)
    assert model.num_params() == non_embedding + embeddings
    assert model.num_params(exclude_embeddings=True) == non_embedding
    # 6N with N = every weight a token is multiplied through (lm_head included, lookup table not) + attention
    assert model.flops_per_token(T) == 6 * (non_embedding + V * d) + 12 * L * d * T


def test_save_pretrained_unwraps_a_data_parallel_model(tmp_path, no_unpickling):
    cfg = tiny_cfg()
    model = LlamaModel(cfg, seed=4)
    save_pretrained(torch.nn.DataParallel(model), cfg, tmp_path)  # keys would otherwise start with "module."
    loaded, _ = load_pretrained(tmp_path)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)

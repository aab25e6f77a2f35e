"""KV-cache sampling: greedy outputs equal transformers' ``generate`` on the exported checkpoint (batched prompts of
different lengths, left-padded, stopping at EOS); the cached forward equals the full forward; top-k/top-p keep what
they should."""

from __future__ import annotations

import os

import pytest
import torch

from training.checkpoint import save_pretrained
from training.generation import SamplingConfig, left_pad, process_logits, sample
from training.model import KVCache, LlamaModel, ModelConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32, max_seq_len=256, tie_embeddings=True)
PAD, BOS, EOS = 3, 1, 2


def _prompts(lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [[BOS] + torch.randint(4, vocab, (n - 1,), generator=gen).tolist() for n in lengths]


def _model(seed: int = 3) -> LlamaModel:
    return LlamaModel(ModelConfig(vocab_size=512, **TINY), seed=seed)


def test_cached_forward_equals_full_forward():
    model = _model().eval()
    prompts = _prompts([9, 5, 12], 512)
    ids, keep = left_pad(prompts, PAD)
    full_ids = torch.cat([ids, torch.randint(4, 512, (3, 4))], dim=1)
    keep = torch.cat([keep, torch.ones(3, 4, dtype=torch.bool)], dim=1)
    positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
    T = full_ids.shape[1]
    mask = (torch.ones(T, T, dtype=torch.bool).tril() & keep[:, None, None, :]) | torch.eye(T, dtype=torch.bool)
    with torch.no_grad():
        full = model(full_ids, positions, mask)
        cache = KVCache(model.cfg, 3, T, torch.device("cpu"), torch.float32)
        P = ids.shape[1]
        steps = [model.lm_head(model.model(full_ids[:, :P], positions[:, :P], mask[:, :, :P, :P], cache))]
        for t in range(P, T):
            steps.append(model.lm_head(model.model(full_ids[:, t : t + 1], positions[:, t : t + 1],
                                                   mask[:, :, t : t + 1, : t + 1], cache)))  # fmt: skip
    cached = torch.cat(steps, dim=1)
    real = keep[:, :, None].expand_as(full)  # pad positions' outputs are never used
    torch.testing.assert_close(cached[real], full[real], rtol=0, atol=1e-5)


def test_greedy_batched_generation_equals_transformers_generate(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = _model()
    save_pretrained(model, model.cfg, tmp_path, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompts = _prompts([7, 15, 3, 11], 512, seed=1)
    # an EOS the random model actually emits: the most frequent greedy token of a first pass
    first = sample(model, prompts, SamplingConfig(max_new_tokens=12, temperature=0), None, PAD)
    eos = int(first.completions[:, 3:].flatten().mode().values)
    ours = sample(model, prompts, SamplingConfig(max_new_tokens=24, temperature=0), eos, PAD)
    ids, keep = left_pad(prompts, PAD)
    theirs = hf.generate(ids, attention_mask=keep.long(), max_new_tokens=24, do_sample=False, eos_token_id=eos,
                         pad_token_id=PAD)  # fmt: skip
    assert torch.equal(ours.sequences, theirs)
    assert (ours.completions == eos).any(), "the test should exercise stopping at EOS"
    for row, completion in zip(ours.completions, ours.completion_lists(), strict=True):
        hits = (row == eos).nonzero()
        assert len(completion) == (int(hits[0]) + 1 if len(hits) else len(row))


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    kept = process_logits(logits, SamplingConfig(temperature=1.0, top_k=2)).isfinite()
    assert kept.tolist() == [[True, True, False, False, False]]
    probs = logits.softmax(-1)[0]  # 0.61, 0.22, 0.14, ...: top_p 0.7 needs the first two
    assert probs[0] < 0.7 < probs[:2].sum()
    kept = process_logits(logits, SamplingConfig(temperature=1.0, top_p=0.7)).isfinite()
    assert kept.tolist() == [[True, True, False, False, False]]
    kept = process_logits(logits, SamplingConfig(temperature=1.0, top_p=0.01)).isfinite()
    assert kept.tolist() == [[True, False, False, False, False]], "the most likely token always stays"


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    model = _model()
    prompts = _prompts([6, 9], 512, seed=2)
    greedy = sample(model, prompts, SamplingConfig(max_new_tokens=10, temperature=0), None, PAD).sequences
    top1 = sample(model, prompts, SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=1), None, PAD).sequences
    assert torch.equal(greedy, top1)
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.95)
    a = sample(model, prompts, cfg, None, PAD, torch.Generator().manual_seed(0)).sequences
    b = sample(model, prompts, cfg, None, PAD, torch.Generator().manual_seed(0)).sequences
    c = sample(model, prompts, cfg, None, PAD, torch.Generator().manual_seed(1)).sequences
    assert torch.equal(a, b) and not torch.equal(a, c)

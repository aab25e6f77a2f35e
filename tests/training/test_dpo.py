"""DPO in the one training loop, in process, on real HH-RLHF helpful-base pairs: the frozen reference's log-probs
computed once, then sigmoid-DPO steps raise the held-out chosen–rejected log-ratio margin and lower the held-out loss
(pairs never trained on). A sign error would fail the margins."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from conftest import DATA_DIR

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32, max_seq_len=512, tie_embeddings=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pipelines.imports import convert_preference
    from training.chat import ChatTemplate, TemplateConfig
    from training.data import is_held_out
    from training.dpo import encode_preference
    from training.tokenizer import load_tokenizer, train_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    lines = (DATA_DIR / "text" / "wiki_demo.txt").read_text(encoding="utf-8").splitlines()[:3000]
    train_tokenizer(lines, 3000, folder)
    tokenizer = load_tokenizer(folder)
    template = ChatTemplate(TemplateConfig(), tokenizer)
    train, held_out = [], []
    with gzip.open(DATA_DIR / "preference" / "hh_rlhf_helpful_base_test.jsonl.gz", "rt") as rows:
        for i, line in enumerate(rows):
            row = convert_preference(json.loads(line), {})[0]
            pair = encode_preference(template, row["prompt"], row["chosen"], row["rejected"], 256)
            if isinstance(pair, str):
                continue
            (held_out if is_held_out(str(i), 0.2) else train).append(pair)
            if len(train) >= 320 and len(held_out) >= 80:
                break
    return tokenizer, train[:320], held_out[:80]


def test_dpo_raises_held_out_margin_and_lowers_held_out_loss(setup):
    from training.config import OptimConfig
    from training.dpo import DPOBatch, dpo_batch_loss, pair_batch, preference_metrics, reference_logps
    from training.loop import Trainer
    from training.model import LlamaModel, ModelConfig
    from training.optim import build_optimizer

    tokenizer, train, held_out = setup
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **TINY)
    policy = LlamaModel(cfg, seed=0)
    reference = LlamaModel(cfg, seed=0).eval()
    train_refs = reference_logps(reference, train, tokenizer.pad_id)
    val_refs = reference_logps(reference, held_out, tokenizer.pad_id)
    before = preference_metrics(policy, held_out, val_refs, tokenizer.pad_id, 0.1, "sigmoid")
    assert abs(before["val/rewards/margins"]) < 1e-5, "policy = reference: every log-ratio is 0"
    batches = [pair_batch(train[i : i + 8], tokenizer.pad_id, train_refs[i : i + 8]) for i in range(0, 320, 8)]
    optim = OptimConfig(max_steps=40, lr=2e-3, warmup_steps=2, weight_decay=0.0, schedule="constant",
                        eval_every=1000, checkpoint_every=1000, log_every=1000)  # fmt: skip

    def loss_fn(model, batch: DPOBatch):
        return dpo_batch_loss(model, batch, beta=0.1, loss_type="sigmoid")[0], batch.n_tokens

    Trainer(policy, build_optimizer(policy, optim, "cpu"), optim, torch.device("cpu"), loss_fn).run(iter(batches))
    after = preference_metrics(policy, held_out, val_refs, tokenizer.pad_id, 0.1, "sigmoid")
    print({k: (round(before[k], 4), round(after[k], 4)) for k in after})
    # a random-init 2-layer policy moves the held-out margin clearly; its held-out accuracy stays near chance
    # (0.51 here), so it is printed, not asserted
    assert after["val/rewards/margins"] > 0.05, after
    assert after["val/rewards/chosen"] > after["val/rewards/rejected"], after
    assert after["val/loss"] < before["val/loss"], (before, after)

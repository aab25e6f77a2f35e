"""Our SFT and reward losses against TRL's trainers (TRL 1.x, the `bench` extra): the same exported checkpoint
(HF Llama layout, loaded by transformers on TRL's side, by us on ours), the same tokenised batch of real data,
TRL's loss through its trainer's own collator and ``compute_loss``: equal to 1e-4. No training is needed."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from conftest import DATA_DIR

pytest.importorskip("trl", reason="TRL parity needs the bench extra: pip install -e '.[bench]'")

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32, max_seq_len=512, tie_embeddings=True)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from training.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    lines = (DATA_DIR / "text" / "wiki_demo.txt").read_text(encoding="utf-8").splitlines()[:3000]
    train_tokenizer(lines, 3000, folder)
    return folder


def _trl_args(cls, tmp_path, **extra):
    return cls(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, per_device_train_batch_size=6,
               max_length=None, **extra)  # fmt: skip


def test_sft_loss_equals_trl_sft_trainer_with_assistant_only_loss(tok_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from pipelines.imports import convert_sft
    from training.chat import ChatTemplate, TemplateConfig, pad_rows
    from training.checkpoint import load_pretrained, save_pretrained
    from training.losses import sft_loss
    from training.model import LlamaModel, ModelConfig
    from training.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tok_dir)
    template = ChatTemplate(TemplateConfig(), tokenizer)
    rows = json.loads((DATA_DIR / "sft" / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))[:30]
    examples = [e for v in rows if not isinstance(e := template.encode(convert_sft(v, {})[0]["messages"],
                                                                       max_len=512), str)][:6]  # fmt: skip
    assert len(examples) == 6
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **TINY)
    save_pretrained(LlamaModel(cfg, seed=7), cfg, tmp_path / "ckpt", tok_dir, bos_token_id=1, eos_token_id=2,
                    pad_token_id=3)  # fmt: skip
    ours, _ = load_pretrained(tmp_path / "ckpt")
    batch = pad_rows(examples, tokenizer.pad_id)
    with torch.no_grad():
        our_loss = sft_loss(ours(batch.input_ids), batch.labels)

    theirs = LlamaForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    dataset = Dataset.from_list([{"input_ids": e.ids, "assistant_masks": e.mask} for e in examples])
    trainer = SFTTrainer(model=theirs, args=_trl_args(SFTConfig, tmp_path), train_dataset=dataset,
                         processing_class=AutoTokenizer.from_pretrained(tmp_path / "ckpt"))  # fmt: skip
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(examples))])
    assert torch.equal(trl_batch["labels"], batch.labels)  # TRL masks exactly our answer tokens
    with torch.no_grad():
        trl_loss = trainer.compute_loss(theirs, trl_batch)
    assert abs(our_loss.item() - trl_loss.item()) < 1e-4, (our_loss.item(), trl_loss.item())


def test_reward_loss_equals_trl_reward_trainer(tok_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from pipelines.imports import convert_preference
    from training.chat import ChatTemplate, TemplateConfig, pad_pairs
    from training.checkpoint import load_reward_model, save_pretrained
    from training.losses import pairwise_reward_loss
    from training.model import ModelConfig, RewardModel
    from training.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tok_dir)
    template = ChatTemplate(TemplateConfig(), tokenizer)
    pairs = []
    with gzip.open(DATA_DIR / "preference" / "hh_rlhf_helpful_base_test.jsonl.gz", "rt") as lines:
        for line in lines:
            row = convert_preference(json.loads(line), {})[0]
            encoded = template.encode_pair(row["prompt"], row["chosen"], row["rejected"], max_len=512)
            if not isinstance(encoded, str):
                pairs.append(encoded[:2])
            if len(pairs) == 6:
                break
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **TINY)
    save_pretrained(RewardModel(cfg, pad_id=tokenizer.pad_id, seed=5), cfg, tmp_path / "rm", tok_dir, bos_token_id=1,
                    eos_token_id=2)  # fmt: skip
    ours, _ = load_reward_model(tmp_path / "rm")
    with torch.no_grad():
        chosen, rejected = ours(pad_pairs(pairs, tokenizer.pad_id)).chunk(2)
        our_loss = pairwise_reward_loss(chosen, rejected)

    theirs = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    dataset = Dataset.from_list([{"chosen_ids": c, "rejected_ids": r} for c, r in pairs])
    trainer = RewardTrainer(model=theirs, args=_trl_args(RewardConfig, tmp_path), train_dataset=dataset,
                            processing_class=AutoTokenizer.from_pretrained(tmp_path / "rm"))  # fmt: skip
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    assert torch.equal(trl_batch["input_ids"], pad_pairs(pairs, tokenizer.pad_id))
    with torch.no_grad():
        trl_loss = trainer.compute_loss(theirs, trl_batch)
    assert abs(our_loss.item() - trl_loss.item()) < 1e-4, (our_loss.item(), trl_loss.item())

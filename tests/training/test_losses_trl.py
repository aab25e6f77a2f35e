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
    if "max_length" in cls.__dataclass_fields__:  # no truncation (GRPO's config has none)
        extra = {"max_length": None} | extra
    return cls(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, per_device_train_batch_size=6, **extra)


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


def _hh_pairs(n: int, template, max_len: int = 384, max_answer: int = 40) -> list[dict]:
    """Pairs with short answers: fp32 sums of hundreds of log-probs differ by ~1e-3 between any two exact
    implementations (TRL's fused head vs a plain forward), which a hinge with β = 0.1 turns into 1e-4."""
    from pipelines.imports import convert_preference
    from training.dpo import encode_preference

    pairs = []
    with gzip.open(DATA_DIR / "preference" / "hh_rlhf_helpful_base_test.jsonl.gz", "rt") as lines:
        for line in lines:
            row = convert_preference(json.loads(line), {})[0]
            encoded = encode_preference(template, row["prompt"], row["chosen"], row["rejected"], max_len)
            if not isinstance(encoded, str) and max(len(encoded["chosen"]), len(encoded["rejected"])) <= max_answer:
                pairs.append(encoded)
            if len(pairs) == n:
                return pairs
    return pairs


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dpo_loss_equals_trl_dpo_trainer(tok_dir, tmp_path, loss_type):
    """Policy and reference are different checkpoints (else every log-ratio is 0 and the variants coincide). The
    reference log-probs are precomputed on both sides (TRL's ``precompute_ref_log_probs``, our catalog attribute),
    and TRL is handed ours: a second fp32 forward path drifts by ~1e-5 relative on summed log-probs, which the
    hinge amplifies past 1e-4, while the policy's log-probs and the loss formula are TRL's own."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    from training.chat import ChatTemplate, TemplateConfig
    from training.checkpoint import load_pretrained, save_pretrained
    from training.dpo import dpo_batch_loss, pair_batch, reference_logps
    from training.model import LlamaModel, ModelConfig
    from training.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tok_dir)
    pairs = _hh_pairs(6, ChatTemplate(TemplateConfig(), tokenizer))
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **TINY)
    special = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    for name, seed in (("policy", 7), ("ref", 8)):
        save_pretrained(LlamaModel(cfg, seed=seed), cfg, tmp_path / name, tok_dir, **special)
    policy, _ = load_pretrained(tmp_path / "policy")
    reference, _ = load_pretrained(tmp_path / "ref")
    refs = reference_logps(reference, pairs, tokenizer.pad_id)
    with torch.no_grad():
        ours, _ = dpo_batch_loss(policy, pair_batch(pairs, tokenizer.pad_id, refs), beta=0.1, loss_type=loss_type)

    theirs = LlamaForCausalLM.from_pretrained(tmp_path / "policy").eval()
    text = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])  # the trainer wants one; unused
    args = _trl_args(DPOConfig, tmp_path, beta=0.1, loss_type=[loss_type], precompute_ref_log_probs=True)
    trainer = DPOTrainer(model=theirs, train_dataset=text, args=args,
                         processing_class=AutoTokenizer.from_pretrained(tmp_path / "policy"))  # fmt: skip
    examples = [
        {"prompt_ids": p["prompt"], "chosen_ids": p["chosen"], "rejected_ids": p["rejected"],
         "ref_chosen_logps": r[0], "ref_rejected_logps": r[1]}
        for p, r in zip(pairs, refs, strict=True)
    ]  # fmt: skip
    trl_batch = trainer.data_collator(examples)
    assert torch.equal(trl_batch["input_ids"], pair_batch(pairs, tokenizer.pad_id).input_ids)
    with torch.no_grad():
        trl_loss = trainer.compute_loss(theirs, trl_batch)
    assert abs(ours.item() - trl_loss.item()) < 1e-4, (ours.item(), trl_loss.item())
    assert ours.item() > 0


def test_grpo_loss_equals_trl_grpo_trainer(tok_dir, tmp_path):
    """TRL's GRPO loss (default ``dapo`` token-level mean, k3 KL with beta > 0, clipped ratio) on the same policy,
    prompts, completions, old and reference log-probs and advantages as our ``grpo_loss``."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from training.checkpoint import load_pretrained, save_pretrained
    from training.generation import SamplingConfig, sample
    from training.losses import group_advantages, grpo_loss
    from training.model import LlamaModel, ModelConfig
    from training.rl import completion_logps
    from training.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tok_dir)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **TINY)
    special = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    save_pretrained(LlamaModel(cfg, seed=7), cfg, tmp_path / "policy", tok_dir, **special)
    policy, _ = load_pretrained(tmp_path / "policy")
    reference = LlamaModel(cfg, seed=8)
    # equal-length prompts: TRL's logps use positions 0..T-1 with left padding, ours skip the pads
    prompts = [tokenizer.encode(t, bos=True)[:6] for t in ("The cat sat on", "Weather today is", "Paris is the")]
    generated = sample(policy, [p for p in prompts for _ in range(2)], SamplingConfig(max_new_tokens=12),
                       tokenizer.eos_id, tokenizer.pad_id, torch.Generator().manual_seed(0))  # fmt: skip
    mask = generated.completion_mask
    with torch.no_grad():
        old = completion_logps(policy, generated) + 0.05 * torch.randn(mask.shape)
        ref = completion_logps(reference, generated)
    advantages = group_advantages(torch.tensor([0.3, -1.0, 2.0, 0.5, 1.0, 1.0]), group_size=2)
    with torch.no_grad():
        logps = completion_logps(policy, generated)
        ours, _ = grpo_loss(logps, old, ref, advantages, mask, beta=0.04, clip=0.2)

    theirs = LlamaForCausalLM.from_pretrained(tmp_path / "policy").eval()
    trainer = GRPOTrainer(model=theirs, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                          args=_trl_args(GRPOConfig, tmp_path, beta=0.04, epsilon=0.2, num_generations=2),
                          train_dataset=Dataset.from_list([{"prompt": "a"}] * 6),
                          processing_class=AutoTokenizer.from_pretrained(tmp_path / "policy"))  # fmt: skip
    completions = generated.completions
    inputs = {"prompt_ids": generated.sequences[:, : generated.prompt_len],
              "prompt_mask": torch.ones_like(generated.sequences[:, : generated.prompt_len]),
              "completion_ids": completions, "completion_mask": mask, "advantages": advantages,
              "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}  # fmt: skip
    trainer.model.eval()  # eval mode: no gradient-accumulation rescaling of the loss
    with torch.no_grad():
        trl_loss = trainer.compute_loss(theirs, inputs)
    assert abs(ours.item() - trl_loss.item()) < 1e-4, (ours.item(), trl_loss.item())
    assert abs(ours.item()) > 1e-3

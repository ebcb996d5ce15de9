"""A tiny random Llama with a real chat tokenizer, built offline, for training tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ROOT / ".local" / "models" / "smollm2-135m-bf16"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NOTES = [f"note {i} about balcony compost" for i in range(6)]


def offline_tokenizer() -> PreTrainedTokenizerBase:
    """A word-level chat tokenizer built here, for checkouts without the converted SmolLM2."""
    words = " ".join([*NOTES, "user assistant system write a what is it for ? . , !"]).split()
    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {word: i for i, word in enumerate([*specials, *sorted(set(words))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        chat_template=CHATML,
    )


def tiny_policy(folder: Path) -> Path:
    """Save a 2-layer random Llama and its tokenizer (SmolLM2's when converted) into folder."""
    tokenizer = (
        AutoTokenizer.from_pretrained(SMOLLM2, local_files_only=True)
        if SMOLLM2.is_dir()
        else offline_tokenizer()
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

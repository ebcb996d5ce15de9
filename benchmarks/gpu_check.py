"""A short GPU smoke run: generation and one SFT + DPO training step on a tiny local model.

Run it through benchmarks/gpu_check.sh. Needs torch and transformers only: the model is built
from a small LlamaConfig with random weights and byte-level ids (no tokenizer, no download), so
it runs offline. Prints one JSON object with tokens/s and step times; never part of CI.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--new-tokens 128] [--steps 3]
"""

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass


@dataclass
class Args:
    device: str
    new_tokens: int
    steps: int
    batch: int
    seq: int
    beta: float


def parse() -> Args:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--beta", type=float, default=0.1)
    return Args(**vars(p.parse_args()))


def sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def tiny_model(torch, transformers, device: str):
    config = transformers.LlamaConfig(
        vocab_size=256 + 2,  # bytes, plus pad and eos
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        pad_token_id=256,
        eos_token_id=257,
        bos_token_id=257,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(device)


def time_generation(torch, model, args: Args) -> dict:
    prompt = torch.tensor([list(b"Summarise the document in three sentences.")] * 4)
    prompt = prompt.to(args.device)
    kwargs = dict(do_sample=False, pad_token_id=256, eos_token_id=None)
    model.eval()
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=8, min_new_tokens=8, **kwargs)  # warm-up
        sync(torch, args.device)
        started = time.perf_counter()
        out = model.generate(
            prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **kwargs
        )
        sync(torch, args.device)
    seconds = time.perf_counter() - started
    new = (out.shape[1] - prompt.shape[1]) * out.shape[0]
    return {
        "batch": out.shape[0],
        "new_tokens": new,
        "seconds": round(seconds, 4),
        "tokens_per_s": round(new / seconds, 1),
    }


def sequence_logp(torch, model, ids, labels_from: int):
    """Sum of log-probabilities of the tokens after labels_from, per sequence."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    targets = ids[:, 1:]
    logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp[:, labels_from - 1 :].sum(-1)


def time_training(torch, model, args: Args) -> dict:
    """SFT cross-entropy on the chosen reply plus a DPO loss against a frozen reference."""
    import copy

    reference = copy.deepcopy(model).eval().requires_grad_(False)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    prompt_len = args.seq // 2
    times, losses = [], []
    for step in range(args.steps + 1):  # the first step warms up kernels and is not timed
        prompt, good, bad = (
            torch.randint(0, 256, (args.batch, prompt_len), generator=g) for _ in range(3)
        )
        chosen, rejected = torch.cat([prompt, good], 1), torch.cat([prompt, bad], 1)
        chosen, rejected = chosen.to(args.device), rejected.to(args.device)
        sync(torch, args.device)
        started = time.perf_counter()
        both = torch.cat([chosen, rejected])
        logp = sequence_logp(torch, model, both, prompt_len)
        with torch.no_grad():
            ref = sequence_logp(torch, reference, both, prompt_len)
        margin = (logp[: args.batch] - ref[: args.batch]) - (logp[args.batch :] - ref[args.batch :])
        dpo = -torch.nn.functional.logsigmoid(args.beta * margin).mean()
        sft = -logp[: args.batch].mean() / prompt_len
        loss = sft + dpo
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        sync(torch, args.device)
        if step:
            times.append(time.perf_counter() - started)
            losses.append(round(loss.item(), 4))
    tokens = 2 * args.batch * args.seq
    mean = sum(times) / len(times)
    return {
        "steps": args.steps,
        "batch_pairs": args.batch,
        "seq": args.seq,
        "step_seconds": round(mean, 4),
        "train_tokens_per_s": round(tokens / mean, 1),
        "losses": losses,
    }


def main() -> int:
    args = parse()
    try:
        import torch
        import transformers
    except ImportError as exc:
        print(json.dumps({"skipped": f"{exc.name} is not installed"}))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device; pass --device cpu to run on the CPU"}))
        return 0
    model = tiny_model(torch, transformers, args.device)
    report = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "generation": time_generation(torch, model, args),
        "training_sft_dpo": time_training(torch, model, args),
    }
    if args.device.startswith("cuda"):
        report["max_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training throughput: the aistack pretrain path (megatron-core GPTModel, DDP, megatron
optimizer, 1F1B schedule, CPU device interception) vs a plain PyTorch GPT training loop of
the same shape, optimizer and batch, in one process on CPU.

    python benchmarks/bench_pretrain.py [--layers 4] [--hidden 256] [--seq 256] [--batch 8] [--steps 30]
    python benchmarks/bench_pretrain.py --seq 1024 --batch 4 --micro 4 --variants local,sdpa

Both: Llama-style blocks (RMSNorm, RoPE, SwiGLU, no biases, untied embeddings), AdamW
(betas 0.9/0.95, wd 0.1), grad clipping at 1.0, fp32, the same synthetic token batches.
Prints the median tokens/s of each (the first `--warmup` steps excluded) and the ratio.
aistack variants (`--variants`, comma-separated): `sdpa` (the default: SDPA core attention),
`local` (megatron's unfused DotProductAttention), `fused` (+ torch.compile'd fusions and
fused AdamW, the GPU default), `compile` (+ each layer compiled); plain: `plain`,
`plain-compile` (the plain model through torch.compile).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


# --- the plain PyTorch GPT ----------------------------------------------------------------


def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding, rotate-half form (as megatron's default), x: [b, heads, s, d]."""
    d, s = x.shape[-1], x.shape[-2]
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    freqs = torch.outer(torch.arange(s, dtype=torch.float32), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()


class Block(nn.Module):
    def __init__(self, h: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(h, eps=1e-5), nn.RMSNorm(h, eps=1e-5)
        self.qkv, self.proj = nn.Linear(h, 3 * h, bias=False), nn.Linear(h, h, bias=False)
        self.fc1, self.fc2 = nn.Linear(h, 2 * ffn, bias=False), nn.Linear(ffn, h, bias=False)

    def forward(self, x):
        b, s, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, h))
        gate, up = self.fc1(self.norm2(x)).chunk(2, dim=-1)
        return x + self.fc2(F.silu(gate) * up)


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, h: int, heads: int, ffn: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, h)
        self.blocks = nn.ModuleList(Block(h, heads, ffn) for _ in range(layers))
        self.norm = nn.RMSNorm(h, eps=1e-5)
        self.out = nn.Linear(h, vocab, bias=False)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))


def bench_plain(recipe, data_prefix: Path, steps: int, compiled: bool = False) -> list[float]:
    from aistack.model.dataset import BatchReader, build_datasets, tokenizer_for
    from aistack.model.layout import padded_vocab_size

    m, t = recipe.model, recipe.train
    torch.manual_seed(t.seed)
    vocab = padded_vocab_size(m.vocab_size, m, 1)
    model = PlainGPT(vocab, m.hidden_size, m.num_attention_heads, m.ffn_size, m.num_layers)
    forward = torch.compile(model) if compiled else model
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps)
    with tempfile.TemporaryDirectory() as cache:
        train, _ = build_datasets(recipe.data, m.seq_length, t.seed, steps * t.global_batch_size, t.global_batch_size,
                                  tokenizer_for(recipe.data, m), cache)
        reader = BatchReader(train, t.global_batch_size, t.micro_batch_size, 1, 0)
        times = []
        for step in range(steps):
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            n = reader.num_microbatches
            for batch in reader.microbatches(step):
                logits = forward(batch["tokens"])
                loss = F.cross_entropy(logits.view(-1, vocab), batch["labels"].view(-1)) / n
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            times.append(time.perf_counter() - start)
    return times


AISTACK_VARIANTS = {  # name -> recipe overrides
    "local": dict(model=dict(attention_backend="local"), train=dict(fused=False)),
    "sdpa": dict(model=dict(attention_backend="sdpa"), train=dict(fused=False)),
    "fused": dict(model=dict(attention_backend="sdpa"), train=dict(fused=True)),
    "compile": dict(model=dict(attention_backend="sdpa"), train=dict(fused=True, compile=True)),
}


def bench_aistack(recipe, steps: int) -> list[float]:
    from aistack.rundir import RunDir
    from aistack.runtime.task import TaskContext
    from aistack.model.train import train
    from aistack.track.metrics import MetricsFile

    with tempfile.TemporaryDirectory() as out:
        run = RunDir(Path(out))
        metrics = MetricsFile(run.task_dir("train", 0) / "metrics.jsonl")
        train(recipe, TaskContext(run, recipe, "pretrain", "train", 0, 1, metrics=metrics))
        records = metrics.read()
    return [r["step_time"] for r in records if "step_time" in r][:steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences per step)")
    parser.add_argument("--micro", type=int, default=8, help="micro-batch size")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--variants", default="sdpa,plain", help=f"comma-separated: {', '.join(AISTACK_VARIANTS)}, plain, plain-compile")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in AISTACK_VARIANTS and v not in ("plain", "plain-compile")]
    if unknown:
        parser.error(f"--variants: unknown {unknown}")

    from aistack.model.dataset import make_tiny_dataset
    from aistack.kinds.pretrain import PretrainRecipe

    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        prefix = make_tiny_dataset(Path(tmp) / "tiny", vocab_size=512, num_docs=2000)

        def recipe(overrides: dict | None = None):
            overrides = overrides or {}
            return PretrainRecipe.model_validate(dict(
                name="bench",
                model=dict(arch="llama", num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
                           seq_length=args.seq, vocab_size=512, **overrides.get("model", {})),
                data=dict(paths=[dict(path=str(prefix))], split="99,1,0"),
                train=dict(steps=args.steps, micro_batch_size=args.micro, global_batch_size=args.batch, precision="fp32",
                           warmup_steps=2, eval_every=10**6, eval_steps=1, **overrides.get("train", {})),
                checkpoint=dict(every=10**6),
            ))

        for name in variants:
            if name in AISTACK_VARIANTS:
                times[name] = bench_aistack(recipe(AISTACK_VARIANTS[name]), args.steps)
            else:
                times[name] = bench_plain(recipe(), prefix, args.steps, compiled=name == "plain-compile")
            print(f"{name}: median step {statistics.median(times[name][args.warmup:]) * 1e3:.1f} ms", flush=True)
    tokens = args.batch * args.seq
    tps = {name: tokens / statistics.median(t[args.warmup:]) for name, t in times.items()}
    print(f"shape: {args.layers} layers, hidden {args.hidden}, seq {args.seq}, batch {args.batch} "
          f"(micro {args.micro}), fp32, {torch.get_num_threads()} threads, steps {args.steps} (first {args.warmup} excluded)")
    base = tps.get("plain")
    for name, value in tps.items():
        label = name if name.startswith("plain") else f"aistack {name}"
        ratio = f"  x{value / base:.3f} of plain" if base else ""
        print(f"{label:<22} {value:10.0f} tokens/s (median step {tokens / value * 1e3:.1f} ms){ratio}")
    assert all(math.isfinite(v) for v in tps.values())


if __name__ == "__main__":
    main()

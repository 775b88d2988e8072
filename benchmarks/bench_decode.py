"""Decode on the CPU: eager (dynamic KV cache) vs static KV cache vs compiled static step.

    python benchmarks/bench_decode.py [--arch llama gpt2] [--layers 4] [--hidden 256] [--batches 1 8]
                                      [--prompt 32] [--gen 32] [--repeats 7] [--modes eager static compile]

A small transformers model with random weights (fp32), at a shape where the per-step host
overhead of eager decoding shows. Every mode of aistack.bench.decode that runs on a CPU
decodes the same prompts; the repeats alternate between the modes (a busy machine slows all
alike). Prints per (model, batch, mode) the median decode tokens/s, ms per step, the ratio
to eager, the one-off setup (compilation) and whether the greedy tokens equal eager's;
exits 1 if any differ. `graph` needs a GPU: not run here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from aistack.bench.decode import make_decoder


def build(arch: str, layers: int, hidden: int, vocab: int, positions: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    heads = max(1, hidden // 64)
    if arch == "llama":  # grouped-query attention, as Llama 3
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=positions)
        return LlamaForCausalLM(cfg).eval()
    cfg = GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=hidden, n_layer=layers, n_head=heads,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def measure(model, modes: list[str], batch: int, prompt_len: int, gen_len: int, repeats: int, vocab: int) -> list[dict]:
    prompt = torch.randint(1, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(1))
    decoders = {m: make_decoder(model, m, batch, prompt_len + gen_len) for m in modes}
    setup = {}
    for mode, decoder in decoders.items():
        start = time.perf_counter()
        decoder.prepare()
        decoder.generate(prompt, gen_len)  # warm-up
        setup[mode] = time.perf_counter() - start
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    tokens: dict[str, torch.Tensor] = {}
    for _ in range(repeats):
        for mode, decoder in decoders.items():
            tokens[mode], timing = decoder.generate(prompt, gen_len)
            seconds[mode].append(timing["decode_s"])
    steps = gen_len - 1
    eager = statistics.median(seconds["eager"]) if "eager" in seconds else None
    rows = []
    for mode in modes:
        med = statistics.median(seconds[mode])
        rows.append({"mode": mode, "tok_s": batch * steps / med, "ms_step": med / steps * 1e3,
                     "vs_eager": eager / med if eager else None, "setup_s": setup[mode],
                     "same_tokens": torch.equal(tokens[mode], tokens["eager"]) if "eager" in tokens else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["llama", "gpt2"], choices=["llama", "gpt2"])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--gen", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--modes", nargs="+", default=["eager", "static", "compile"], choices=["eager", "static", "compile"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = ["eager"] + [m for m in args.modes if m != "eager"]  # eager: the reference
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.layers} layers, hidden {args.hidden}, "
          f"vocab {args.vocab}, prompt {args.prompt}, {args.gen} new tokens, fp32, medians of {args.repeats}", flush=True)
    header = f"{'model':<6} {'batch':>5}  {'mode':<8} {'tok/s':>9} {'ms/step':>8} {'x eager':>8} {'setup s':>8}  tokens"
    print(header + "\n" + "-" * len(header))
    differ = []
    for arch in args.arch:
        model = build(arch, args.layers, args.hidden, args.vocab, args.prompt + args.gen)
        for batch in args.batches:
            for r in measure(model, modes, batch, args.prompt, args.gen, args.repeats, args.vocab):
                same = "reference" if r["mode"] == "eager" else ("= eager" if r["same_tokens"] else "DIFFER")
                if r["same_tokens"] is False:
                    differ.append(f"{arch} batch {batch} {r['mode']}")
                ratio = f"{r['vs_eager']:.2f}" if r["vs_eager"] else "-"
                print(f"{arch:<6} {batch:>5}  {r['mode']:<8} {r['tok_s']:>9.0f} {r['ms_step']:>8.2f} {ratio:>8} "
                      f"{r['setup_s']:>8.1f}  {same}", flush=True)
    print("greedy tokens: " + ("identical to eager in every mode" if not differ else "DIFFER in " + ", ".join(differ)))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

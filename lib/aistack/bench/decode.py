"""Greedy decoding of one batch, four ways (`bench.decode`):

    eager    today's loop: the model on one token per step over transformers' dynamic KV
             cache, or (kv_cache: false) on the whole sequence each step
    static   transformers' StaticCache, preallocated to prompt_len + gen_len for the batch,
             and a one-token step that reads its token from a static buffer and writes the
             next one back into it: fixed shapes and addresses, nothing allocated per token
    graph    that step captured once in a torch.cuda.CUDAGraph and replayed per token: one
             host call per token instead of a dozen kernel launches per layer (decode at
             small batch is host-bound in eager: step time flat from batch 1 to 32)
    compile  that step through torch.compile(mode="reduce-overhead", fullgraph=True,
             dynamic=False): inductor's fused kernels, replayed from CUDA graphs on a GPU;
             with coordinate_descent_tuning, so an M = 1 matmul is a multiply-reduce into
             which FP8 weight-only dequantization fuses (aistack.bench.fp8)

The static step on a CPU is the step the GPU captures, run as is: what the tests cover.
The prefill runs eagerly in every mode (once per generation). All modes give the same greedy
tokens where the arithmetic is the same: static attention reads max_len keys with the unused
ones masked (exactly zero weight), so the logits differ from eager by rounding alone.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from typing import Any

import torch

MODES = ("eager", "static", "graph", "compile")


def resolve(requested: str, device: torch.device, kv_cache: bool, fp8_mode: str | None = None) -> str:
    """The decode mode a point runs for `bench.decode: requested`. auto: `graph` on a GPU (no
    compiler needed, capture in seconds), but `compile` for FP8 weight-only points (only
    inductor fuses their dequantization into the GEMV; eager or captured, it is a kernel of its
    own that writes a BF16 copy of every weight); `static` on a CPU (no CUDA graphs there)."""
    if requested not in ("auto", *MODES):
        raise ValueError(f"bench.decode={requested!r}: one of auto, {', '.join(MODES)}")
    if not kv_cache:
        if requested in ("auto", "eager"):
            return "eager"
        raise ValueError(f"bench.decode={requested} decodes over a static KV cache, but bench.kv_cache is false (re-run the "
                         "whole sequence each step): set bench.decode to eager or auto, or bench.kv_cache to true")
    if requested == "auto":
        if device.type != "cuda":
            return "static"
        return "compile" if fp8_mode == "weight_only" else "graph"
    if requested == "graph" and device.type != "cuda":
        raise ValueError(f"bench.decode=graph captures a CUDA graph: it needs a GPU, and this is a {device.type.upper()}; "
                         "use static (the same step, not captured), compile or auto")
    return requested


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Seconds since start at each mark, the device synchronised first."""

    def __init__(self, device: torch.device):
        self.device = device
        sync(device)
        self.start = time.perf_counter()

    def mark(self) -> float:
        sync(self.device)
        return time.perf_counter() - self.start


def _timings(prefill: float, first: float, total: float) -> dict[str, float]:
    return {"prefill_s": prefill, "ttft_s": first, "decode_s": total - first, "e2e_s": total}


class EagerDecoder:
    """Today's loop, kept as it was: the baseline the other modes are measured against."""

    mode = "eager"
    setup_s = 0.0
    cuda_graph = False

    def __init__(self, model, kv_cache: bool = True):
        self.model, self.kv_cache = model, kv_cache
        self.device = next(model.parameters()).device

    def prepare(self) -> float:
        return 0.0

    def _step(self, ids: torch.Tensor, past: Any, sequence: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if self.kv_cache:
            out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
            return out.logits[:, -1], out.past_key_values
        out = self.model(input_ids=sequence, use_cache=False)
        return out.logits[:, -1], None

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, gen_len: int) -> tuple[torch.Tensor, dict[str, float]]:
        timer = Timer(self.device)
        logits, past = self._step(prompt, None, prompt)
        prefill = timer.mark()
        token = logits.argmax(-1, keepdim=True)
        token.cpu()  # the first token is on the host: what a server could stream
        first = time.perf_counter() - timer.start
        sequence = torch.cat([prompt, token], dim=1)
        for _ in range(gen_len - 1):
            logits, past = self._step(token, past, sequence)
            token = logits.argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, token], dim=1)
        total = timer.mark()
        return sequence[:, prompt.shape[1]:], _timings(prefill, first, total)


class StaticDecoder:
    """The static-cache step, run as is (static), replayed from a CUDA graph (graph) or compiled
    (compile). One decoder serves one (model, batch, max_len): build it once per sweep point,
    `prepare` it (the capture or compilation: setup_s), then `generate` as often as needed."""

    def __init__(self, model, batch: int, max_len: int, mode: str):
        if mode not in ("static", "graph", "compile"):
            raise ValueError(f"StaticDecoder: mode {mode!r} is not static, graph or compile")
        self.model, self.batch, self.max_len, self.mode = model, batch, max_len, mode
        self.device = next(model.parameters()).device
        if mode == "graph" and self.device.type != "cuda":
            raise ValueError("bench.decode=graph needs the model on a GPU")
        from transformers import StaticCache

        # transformers 5 (5.17 in the GPU image, 5.25 here): allocated on its first update, and
        # it counts positions itself in a device tensor, so a step takes no position argument.
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        # The cache argument is `past_key_values` in 5.17, `cache` in 5.25.
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.run = self.step
        self.setup_s: float | None = None
        self.cuda_graph = False  # whether a token is one graph replay (compile: unless inductor skipped it)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The last position's logits of `ids` fed through the static cache (appended to it)."""
        return self.model(input_ids=ids, **{self.cache_arg: self.cache}, use_cache=True).logits[:, -1]

    def step(self) -> None:
        """token <- the greedy token after it, in place: what the graph captures."""
        self.token.copy_(self.logits(self.token).argmax(-1, keepdim=True))

    def _reset(self) -> None:
        self.cache.reset()  # zeroes it in place (the length too): the captured addresses stay valid

    @torch.inference_mode()
    def prepare(self) -> float:
        """Capture or compile the step (seconds it took); nothing to do for static. The cache is
        reset before each warm-up step, so warm-ups never run past max_len."""
        if self.setup_s is not None:
            return self.setup_s
        start = time.perf_counter()
        self._reset()
        self.step()  # sizes the cache (transformers 5 allocates it on the first update)
        if self.mode == "graph":
            self.run, self.cuda_graph = self._capture(), True
        elif self.mode == "compile":
            from torch._dynamo.utils import counters

            skips = counters["inductor"]["cudagraph_skips"]
            self.run = self._compile()
            # inductor logs why it skipped (a CPU tensor, a mutated input...) and runs the kernels unreplayed
            self.cuda_graph = self.device.type == "cuda" and counters["inductor"]["cudagraph_skips"] == skips
        sync(self.device)
        self.setup_s = time.perf_counter() - start if self.mode != "static" else 0.0
        return self.setup_s

    def _capture(self):
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # cuBLAS handles and workspaces: made before, not inside, the capture
            for _ in range(2):
                self._reset()
                self.step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._reset()
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls (a data loader, NCCL's watchdog) do not break it
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.step()
        self.graph = graph  # kept alive with its memory pool
        return graph.replay

    def _compile(self):
        torch._dynamo.mark_static_address(self.token)  # mutated in place by the step: a static input of the CUDA graph
        compiled = torch.compile(self.step, mode="reduce-overhead", fullgraph=True, dynamic=False)
        with compile_settings():
            for _ in range(3):  # compile, record the CUDA graph, replay it once
                self._reset()
                compiled()
        return compiled

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, gen_len: int) -> tuple[torch.Tensor, dict[str, float]]:
        if prompt.shape[0] != self.batch or prompt.shape[1] + gen_len > self.max_len:
            raise ValueError(f"decoder for {self.batch} x {self.max_len} tokens got {tuple(prompt.shape)} + {gen_len}")
        self.prepare()
        tokens = torch.empty(self.batch, gen_len, dtype=torch.long, device=self.device)
        self._reset()
        timer = Timer(self.device)
        logits = self.logits(prompt)
        prefill = timer.mark()
        self.token.copy_(logits.argmax(-1, keepdim=True))
        self.token.cpu()  # the first token is on the host: what a server could stream
        first = time.perf_counter() - timer.start
        tokens[:, :1].copy_(self.token)
        with compile_settings() if self.mode == "compile" else contextlib.nullcontext():
            for i in range(1, gen_len):
                self.run()
                tokens[:, i : i + 1].copy_(self.token)
        total = timer.mark()
        return tokens, _timings(prefill, first, total)


@contextlib.contextmanager
def compile_settings():
    """inductor's coordinate-descent tuning (gpt-fast's and torchao's setting: M = 1 matmuls
    become fused multiply-reduces), and room for one compilation per sweep point: dynamo
    compiles the step again for every decoder (new cache, new shapes), and past its recompile
    limit (8) it would silently run the step eagerly."""
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
    with inductor.patch(coordinate_descent_tuning=True), dynamo.patch(**{limit: max(getattr(dynamo, limit), 256)}):
        yield


def make_decoder(model, mode: str, batch: int, max_len: int, kv_cache: bool = True):
    """The decoder for a resolved mode (see `resolve`)."""
    if mode == "eager":
        return EagerDecoder(model, kv_cache)
    if not kv_cache:
        raise ValueError(f"bench.decode={mode} needs bench.kv_cache: true")
    return StaticDecoder(model, batch, max_len, mode)

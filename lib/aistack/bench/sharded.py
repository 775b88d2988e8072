"""Greedy generation sharded over TP ranks (within a node) and PP stages (across nodes).

The path is megatron-core's own static-batch inference: GPTInferenceWrapper (which passes
activations between pipeline stages with torch.distributed send/recv and broadcasts the
last stage's logits to every stage), StaticInferenceContext (the KV cache: prefill once,
then one token per step) and TextGenerationController (greedy: top_k=1 is an argmax).
The model is the project's megatron GPTModel (aistack.model.gpt, local layers), one
pipeline stage per rank, loaded from an aistack checkpoint of any layout (dist checkpoints
reshard on load).

On a machine without a GPU the same code runs over gloo: aistack.model.cpu_compat maps
megatron's cuda tensors to the CPU, and `cpu_compat.inference_scope` neutralises what the inference
path adds to the CUDA assumptions (timing events, a cuda sampling generator, an is_cuda
assertion). Figures measured there are CPU figures, and the report says so.

FP8 is emulated here at any layout (quantize-dequantize with aistack.bench.fp8's e4m3
formula, as on one device): weights per output row (or per tensor), activations per
token. A row-parallel layer holds a slice of every row and of every token, so its amax is
the max over the TP group (one all-reduce): the scales, hence the numbers, are those of
one device.

Per point and layout: prefill time (until the last stage holds the prompt's logits),
TTFT (until the first token is on the first stage's host), decode tokens/s, and per stage
the time it computes and the time it waits (activations from the stage before, the
logits broadcast from the last stage, its own sends): the pipeline bubble.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from aistack import hardware
from aistack.bench import fp8 as fp8_lib
from aistack.bench import results as bench_results
from aistack.model import cpu_compat

LM_HEAD_NAMES = ("lm_head", "output_layer")  # the HF name the recipe's fp8.skip uses, and megatron's


# ----------------------------------------------------------------------------- the controller's tokenizer


class _Tokens:
    """What the controller asks of a tokenizer when it is given token ids: eod, detokenize."""

    def __init__(self, eod: int) -> None:
        self.eod = eod

    def detokenize(self, ids, **_k) -> str:
        return ""

    def tokenize(self, _text: str) -> list[int]:
        raise NotImplementedError("prompts are token ids")


# ----------------------------------------------------------------------------- timing


class StageClock:
    """Where one rank's time goes during one generation: compute vs waiting."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.waits = {"recv": 0.0, "send": 0.0, "logits": 0.0}  # activations in/out, the logits broadcast
        self.forward_s = 0.0  # run_one_forward_step: compute, recv and send
        self.forward_ends: list[float] = []  # seconds from start, one per step
        self.first_token: float | None = None  # seconds from start: the first token sampled on this host

    @property
    def wait_s(self) -> float:
        return sum(self.waits.values())

    @property
    def compute_s(self) -> float:
        return self.forward_s - self.waits["recv"] - self.waits["send"]

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.waits[what] += time.perf_counter() - t


@contextlib.contextmanager
def _timed_communication(clock: StageClock) -> Iterator[None]:
    """Count the time spent in megatron's pipeline communication as waiting."""
    from megatron.core.inference.model_inference_wrappers import abstract_model_inference_wrapper as wrapper_mod
    from megatron.core.inference.text_generation_controllers import text_generation_controller as controller_mod

    def timed(fn: Callable, what: str) -> Callable:
        def inner(*args, **kwargs):
            with clock.waiting(what):
                return fn(*args, **kwargs)

        return inner

    saved = {(wrapper_mod, "recv_from_prev_pipeline_rank_", "recv"): wrapper_mod.recv_from_prev_pipeline_rank_,
             (wrapper_mod, "send_to_next_pipeline_rank", "send"): wrapper_mod.send_to_next_pipeline_rank,
             (controller_mod, "broadcast_from_last_pipeline_stage", "logits"): controller_mod.broadcast_from_last_pipeline_stage}
    for (module, name, what), fn in saved.items():
        setattr(module, name, timed(fn, what))
    try:
        yield
    finally:
        for (module, name, _), fn in saved.items():
            setattr(module, name, fn)


# ----------------------------------------------------------------------------- the model


def build_stage(model_cfg: Any, tensor: int, pipeline: int, vocab_size: int, precision: str):
    """This rank's pipeline stage of the GPT (local layers), eval mode, padding logits masked.
    Megatron's parallel state must be initialised at (tensor, pipeline)."""
    from megatron.core import parallel_state as ps

    from aistack.model.config import ParallelConfig
    from aistack.model import gpt
    from aistack.model.layout import padded_vocab_size

    padded = padded_vocab_size(vocab_size, model_cfg, tensor)
    model = gpt.build_gpt(model_cfg, ParallelConfig(tensor=tensor, pipeline=pipeline),
                          pre_process=ps.is_pipeline_first_stage(ignore_virtual=True),
                          post_process=ps.is_pipeline_last_stage(ignore_virtual=True),
                          vocab_size=padded, precision=precision, use_te=False)
    if torch.cuda.is_available():
        model = model.cuda(torch.cuda.current_device())
    if ps.is_pipeline_last_stage(ignore_virtual=True) and padded > vocab_size:
        # The padding rows depend on the TP size: a padded token must never be the argmax.
        def mask_padding(_module, _args, logits):
            if isinstance(logits, torch.Tensor) and logits.shape[-1] == padded:
                logits[..., vocab_size:] = float("-inf")
            return logits

        model.register_forward_hook(mask_padding)
    return model.eval(), padded


def load_stage(path: str | Path, model) -> None:
    """The checkpoint's weights (saved at any TP/PP layout) into this rank's stage."""
    from aistack.model import checkpoint

    checkpoint.load(path, [model], restore_rng=False)


# ----------------------------------------------------------------------------- generation


class ShardedGenerator:
    """Greedy generation with megatron-core's static inference path on this rank's stage.
    Every rank of the TP x PP group calls `generate` with the same prompts."""

    def __init__(self, model, hidden_size: int, padded_vocab: int, vocab_size: int, dtype: torch.dtype,
                 max_batch: int, max_seq: int, eod: int):
        from megatron.core.inference.contexts import StaticInferenceContext
        from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
        from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import InferenceWrapperConfig
        from megatron.core.inference.text_generation_controllers.text_generation_controller import TextGenerationController

        self.vocab_size = vocab_size
        config = InferenceWrapperConfig(hidden_size=hidden_size, params_dtype=dtype, padded_vocab_size=padded_vocab,
                                        inference_batch_times_seqlen_threshold=-1,  # whole batch through each stage
                                        inference_max_requests=max_batch, inference_max_seq_length=max_seq)
        self.wrapper = GPTInferenceWrapper(model, config, StaticInferenceContext.from_config(config))
        with cpu_compat.host_generator():
            self.controller = TextGenerationController(self.wrapper, _Tokens(eod))
        self.clock = StageClock()
        forward = self.wrapper.run_one_forward_step

        def timed_forward(*args, **kwargs):
            t = time.perf_counter()
            out = forward(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.clock.forward_s += time.perf_counter() - t
            self.clock.forward_ends.append(time.perf_counter() - self.clock.start)
            return out

        self.wrapper.run_one_forward_step = timed_forward
        sample = self.controller.sample_from_logits

        def timed_sample(*args, **kwargs):
            out = sample(*args, **kwargs)
            if self.clock.first_token is None:
                out.cpu()  # the first token on the host: what a server could stream
                self.clock.first_token = time.perf_counter() - self.clock.start
            return out

        self.controller.sample_from_logits = timed_sample

    def generate(self, prompts: torch.Tensor, gen_len: int) -> tuple[torch.Tensor, dict[str, float]]:
        """(generated ids [batch, gen_len], this rank's timings in seconds)."""
        from megatron.core import parallel_state as ps
        from megatron.core.inference.inference_request import InferenceRequest
        from megatron.core.inference.sampling_params import SamplingParams

        params = SamplingParams(temperature=1.0, top_k=1, top_p=0.0, num_tokens_to_generate=gen_len)
        params.no_early_termination = True  # exactly gen_len tokens, as the single-device bench
        requests = OrderedDict((i, InferenceRequest(request_id=str(i), prompt="", sampling_params=params,
                                                    prompt_tokens=row.tolist(), arrival_time=time.time()))
                               for i, row in enumerate(prompts))
        dist.barrier(group=ps.get_model_parallel_group())
        self.clock.reset()
        with _timed_communication(self.clock):
            done = self.controller.generate_all_output_tokens_static_batch(requests)
        total = time.perf_counter() - self.clock.start
        tokens = torch.stack([r.generated_tokens.to("cpu", torch.long) for r in done.values()])
        c = self.clock
        return tokens, {"e2e_s": total, "ttft_s": c.first_token, "prefill_s": c.forward_ends[0], "wait_s": c.wait_s,
                        "compute_s": c.compute_s, **{f"wait_{k}_s": v for k, v in c.waits.items()}}

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Logits of every position (the last stage; None elsewhere): one prefill, no sampling."""
        w = self.wrapper
        w.prep_model_for_inference()
        inputs = w.prep_inference_input(ids.to(next(w.model.parameters()).device))
        w.inference_context.materialize_only_last_token_logits = False
        out = w.run_one_forward_step(w.get_batch_for_context_window(inputs, 0, ids.shape[1]))
        return None if out is None else out[..., : self.vocab_size].float().cpu()


def sharded_perplexity(gen: ShardedGenerator, encode: Callable[[str], list[int]], texts: list[str], max_len: int,
                       eos_id: int | None) -> dict[str, float]:
    """aistack.bench.quality.perplexity through the pipeline: the same windows, token-weighted."""
    from megatron.core import parallel_state as ps

    nll, count, size = 0.0, 0, 0
    for text in texts:
        size += len(text.encode("utf-8"))
        seq = ([eos_id] if eos_id is not None else []) + encode(text)
        for start in range(0, len(seq) - 1, max_len):
            window = torch.tensor(seq[start : start + max_len + 1])[None]
            if window.shape[1] < 2:
                continue
            logits = gen.logits(window[:, :-1])
            if logits is not None:
                nll += float(F.cross_entropy(logits[0], window[0, 1:], reduction="sum"))
            count += window.shape[1] - 1
    total = torch.tensor([nll], dtype=torch.float64)
    if not ps.is_pipeline_last_stage(ignore_virtual=True):
        total.zero_()
    dist.all_reduce(total, group=ps.get_pipeline_model_parallel_group())  # only the last stage holds the loss
    mean = float(total) / max(count, 1)
    return {"nll": mean, "perplexity": math.exp(mean), "bits_per_byte": float(total) / math.log(2) / max(size, 1),
            "tokens": count}


# ----------------------------------------------------------------------------- one layout


def _precision_models(cfg: Any, model, rebuild: Callable[[], Any]) -> dict[str, tuple[Any, dict | None]]:
    out: dict[str, tuple[Any, dict | None]] = {}
    for precision in cfg.precisions:
        if precision == "bf16":
            out["bf16"] = (model, None)
        else:  # a second copy of the stage (megatron modules hold process groups: no deepcopy)
            quant = rebuild()
            quant.load_state_dict(model.state_dict())
            # Emulated here, so bench.fp8.mode auto's per-batch choice (a speed choice) does not
            # apply: activations are quantized unless the mode is weight_only.
            activations = cfg.fp8.mode != "weight_only"
            out["fp8"] = (quant, fp8_lib.emulate_fp8(quant, cfg.fp8.scaling, activations, cfg.fp8.skip))
    return out


def _prompts(point: dict, vocab: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)  # as aistack.bench.generate.time_point
    return torch.randint(1, vocab, (point["batch"], point["prompt_len"]), generator=gen)


def run_layout(cfg: Any, source: Any, vocab: int, eod: int, tensor: int, pipeline: int, timed: bool = True,
               quality_texts: list[str] | None = None, encode: Callable | None = None,
               model: Any = None, padded: int | None = None) -> dict[str, Any]:
    """Every sweep point at one layout, on every rank of its model-parallel group (megatron's
    state initialised at (tensor, pipeline)); `model`: this rank's stage, loaded already.
    Returns {rows, tokens, fp8, quality}; rows hold every stage's figures."""
    from megatron.core import parallel_state as ps

    m = source.model_cfg
    max_seq = max(p["prompt_len"] + p["gen_len"] for p in cfg.points())
    if model is None:
        model, padded = build_stage(m, tensor, pipeline, vocab, "bf16")
        load_stage(source.path, model)
    models = _precision_models(cfg, model, lambda: build_stage(m, tensor, pipeline, vocab, "bf16")[0])
    gens = {p: ShardedGenerator(mod, m.hidden_size, padded, vocab, torch.bfloat16, max(cfg.batch_sizes),
                                max(max_seq, m.seq_length), eod) for p, (mod, _) in models.items()}
    quality: dict[str, Any] = {}
    if quality_texts is not None:
        for precision, gen in gens.items():
            quality[precision] = {f"text_{k}": v for k, v in
                                  sharded_perplexity(gen, encode, quality_texts, m.seq_length, eod).items()}
    rows, tokens = [], []
    stage, tp_rank = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
    for point in cfg.points():
        gen = gens[point["precision"]]
        prompts = _prompts(point, vocab, cfg.seed)
        for _ in range(cfg.warmup if timed else 0):
            gen.generate(prompts, point["gen_len"])
        runs = []
        for _ in range(cfg.repeats if timed else 1):
            out, timing = gen.generate(prompts, point["gen_len"])
            runs.append(timing)
        tokens.append(out)
        group = ps.get_model_parallel_group()
        per_rank = [None] * dist.get_world_size(group)
        dist.all_gather_object(per_rank, {"stage": stage, "tp_rank": tp_rank, "runs": runs}, group=group)
        rows.append(_row(point, tensor, pipeline, per_rank))
    return {"rows": rows, "tokens": tokens, "fp8": _merge_fp8(next((q for _, q in models.values() if q), None)),
            "quality": quality, "threads_per_rank": torch.get_num_threads()}


def _merge_fp8(report: dict | None) -> dict | None:
    """The FP8 report of the whole model: each stage quantized its own layers (once per TP rank)."""
    from megatron.core import parallel_state as ps

    group = ps.get_model_parallel_group()
    parts = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, (ps.get_tensor_model_parallel_rank(), report), group=group)
    stages = [r for tp_rank, r in parts if r is not None and tp_rank == 0]
    if not stages:
        return None
    merged = dict(stages[0])
    for key in ("layers", "weight_bytes_bf16", "weight_bytes_fp8"):
        merged[key] = sum(r[key] for r in stages)  # per TP rank 0: its share of each layer; the bytes are a shard's
    merged["skipped"] = sorted({name for r in stages for name in r["skipped"]})
    return merged


def _row(point: dict, tensor: int, pipeline: int, per_rank: list[dict]) -> dict[str, Any]:
    """Medians over repeats. Prefill: until the last stage holds the prompt's logits (its first
    forward step; all ranks start after a barrier). TTFT, decode and e2e: on global rank 0
    (first stage), which has each token on its host. Bubble: each stage's waiting time."""
    ranks = [r for r in per_rank if r is not None and r["runs"]]
    first = next(r for r in ranks if r["stage"] == 0 and r["tp_rank"] == 0)
    last = next(r for r in ranks if r["stage"] == pipeline - 1 and r["tp_rank"] == 0)

    def med(runs: list[dict], key: str) -> float:
        return float(np.median([run[key] for run in runs]))

    e2e = np.array([run["e2e_s"] for run in first["runs"]])
    decode_s = med(first["runs"], "e2e_s") - med(first["runs"], "ttft_s")
    decode_tokens = point["batch"] * (point["gen_len"] - 1)
    stages = []
    for s in range(pipeline):
        r = next(x for x in ranks if x["stage"] == s and x["tp_rank"] == 0)
        wait, total = med(r["runs"], "wait_s"), med(r["runs"], "e2e_s")
        stages.append({"stage": s, "wait_ms": wait * 1e3, "compute_ms": med(r["runs"], "compute_s") * 1e3,
                       **{f"wait_{k}_ms": med(r["runs"], f"wait_{k}_s") * 1e3 for k in ("recv", "send", "logits")},
                       "bubble_frac": wait / total if total > 0 else None})
    return {
        **point, "layout": f"TP{tensor}xPP{pipeline}", "tensor": tensor, "pipeline": pipeline,
        "prefill_ms": med(last["runs"], "prefill_s") * 1e3,
        "ttft_ms": med(first["runs"], "ttft_s") * 1e3,
        "decode_tok_s": decode_tokens / decode_s if decode_tokens and decode_s > 0 else None,
        "prefill_tok_s": point["batch"] * point["prompt_len"] / med(last["runs"], "prefill_s"),
        "throughput_tok_s": point["batch"] * point["gen_len"] / float(np.median(e2e)),
        "e2e_p50_ms": float(np.percentile(e2e, 50)) * 1e3, "e2e_p90_ms": float(np.percentile(e2e, 90)) * 1e3,
        "e2e_p99_ms": float(np.percentile(e2e, 99)) * 1e3, "repeats": len(first["runs"]), "kv_cache": True,
        "stages": stages,
        "bubble_ms_per_stage": "/".join(f"{s['wait_ms']:.1f}" for s in stages),
        "bubble_frac_per_stage": "/".join(f"{s['bubble_frac']:.2f}" if s["bubble_frac"] is not None else "n/a" for s in stages),
    }


# ----------------------------------------------------------------------------- the job


def run_sharded_bench(cfg: Any, work_dir: str | Path, out_dir: str | Path,
                      log: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """The bench job at bench.parallel = TP x PP (> 1): one rank per device, nodes = stages.
    With parallel.compare_single, the same points again at TP 1 x PP 1 on global rank 0 (the
    other ranks only help load the checkpoint): its tokens must be the sharded ones."""
    from aistack.bench.quality import read_texts
    from aistack.model.dist.megatron import destroy_model_parallel, init_model_parallel, set_seeds
    from aistack.eval.source import describe
    from aistack.eval.tasks import set_offline

    tp, pp = cfg.parallel.tensor, cfg.parallel.pipeline
    set_offline(cfg.offline)
    model = cfg.model_block.model_dump() if cfg.model_block is not None else None
    source = describe(cfg.model, model=model, tokenizer=cfg.tokenizer)
    if source.format == "hf":
        raise ValueError(f"bench.parallel TP {tp} x PP {pp} loads an aistack or NeMo checkpoint (any layout); "
                         f"{source.path} is a Hugging Face folder")
    if source.tokenizer is None:
        raise ValueError(f"{source.path}: no tokenizer (set bench.tokenizer)")
    encode, vocab, eod = _tokenizer(source)
    vocab = source.model_cfg.vocab_size or vocab
    text = cfg.quality.text or str(_project_tasks() / "tinylang" / "ppl.jsonl")
    texts = read_texts(text, cfg.quality.max_docs)
    for p in cfg.points():
        if p["prompt_len"] + p["gen_len"] > source.model_cfg.seq_length:
            raise ValueError(f"bench: prompt_len {p['prompt_len']} + gen_len {p['gen_len']} exceeds the model's "
                             f"{source.model_cfg.seq_length} positions")
    layout = init_model_parallel(tp, pp)
    try:
        cores = _share_cores()
        if layout.world_size != tp * pp:
            raise ValueError(f"bench.parallel TP {tp} x PP {pp} needs {tp * pp} ranks (nodes = PP, tasks per node = TP); "
                             f"this job has {layout.world_size}")
        with cpu_compat.inference_scope():
            set_seeds(cfg.seed)
            start = time.time()
            results = [run_layout(cfg, source, vocab, eod, tp, pp, quality_texts=texts, encode=encode)]
            _say(f"TP {tp} x PP {pp}: {len(results[0]['rows'])} points ({time.time() - start:.1f}s)")
            if cfg.parallel.compare_single:
                init_model_parallel(1, 1)
                set_seeds(cfg.seed)
                results.append(_single_on_rank0(cfg, source, vocab, eod, texts, encode, cores))
        if dist.get_rank() != 0:
            return {"rank": dist.get_rank(), "layout": f"TP{tp}xPP{pp}"}
        return _write_outputs(cfg, source, text, results, Path(out_dir), log)
    finally:
        destroy_model_parallel()


def _single_on_rank0(cfg: Any, source: Any, vocab: int, eod: int, texts: list[str], encode: Callable,
                     cores: int | None) -> dict[str, Any]:
    """TP 1 x PP 1 on global rank 0 (with the host's cores: the others wait); every rank joins
    the (collective) checkpoint load."""
    m = source.model_cfg
    model, padded = build_stage(m, 1, 1, vocab, "bf16")
    load_stage(source.path, model)
    out: dict[str, Any] = {"rows": [], "tokens": [], "fp8": None, "quality": {}}
    if dist.get_rank() == 0:
        start = time.time()
        if cores:
            torch.set_num_threads(cores)
        out = run_layout(cfg, source, vocab, eod, 1, 1, quality_texts=texts, encode=encode, model=model, padded=padded)
        _say(f"TP 1 x PP 1 (reference): {len(out['rows'])} points ({time.time() - start:.1f}s)")
    dist.barrier()
    return out


def _share_cores() -> int | None:
    """On a CPU, ranks on one host share its cores: one pool of threads each, not all cores
    each (oversubscribed threads would be the figure measured)."""
    import os
    import socket

    from aistack.model import cpu_compat

    if not cpu_compat.needed():
        return None
    hosts = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = min(cores, os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // hosts.count(socket.gethostname())))
    return cores


def _project_tasks() -> Path:
    from aistack.eval import tasks

    return tasks.project_tasks() if hasattr(tasks, "project_tasks") else tasks.PROJECT_TASKS


def _tokenizer(source: Any) -> tuple[Callable[[str], list[int]], int, int]:
    from tokenizers import Tokenizer as HFTokenizer

    from aistack.model.dataset import Tokenizer

    tok = HFTokenizer.from_file(str(source.tokenizer))
    meta = Tokenizer.from_file(source.tokenizer)
    return (lambda text: tok.encode(text, add_special_tokens=False).ids), meta.vocab_size, meta.eod


def _say(message: str) -> None:
    if dist.get_rank() == 0:
        print(message, flush=True)


def _write_outputs(cfg: Any, source: Any, text: str, results: list[dict], out: Path,
                   log: Callable[[int, dict], None] | None) -> dict[str, Any]:
    sharded = results[0]
    single = results[1] if len(results) > 1 else None
    fp8 = sharded["fp8"] or {"backend": "-", "emulated": False, "scaling": "-", "activations": False, "layers": 0, "skipped": []}
    for i, row in enumerate(sharded["rows"]):
        row["fp8_mode"] = fp8["backend"] if row["precision"] == "fp8" else "-"
        if single is not None:
            row["tokens_match_single"] = bool(torch.equal(sharded["tokens"][i], single["tokens"][i]))
            row["tokens_differing"] = int((sharded["tokens"][i] != single["tokens"][i]).sum())
    for row in single["rows"] if single else []:
        row["fp8_mode"] = fp8["backend"] if row["precision"] == "fp8" else "-"
    rows = sharded["rows"] + (single["rows"] if single else [])
    for i, row in enumerate(rows):
        if log:
            log(i, {f"{row['layout']}/{row['precision']}/{k}": v for k, v in row.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def quality_of(result: dict) -> dict[str, Any]:
        q = dict(result["quality"])
        if "bf16" in q and "fp8" in q:
            q["delta_fp8_minus_bf16"] = {k: q["fp8"][k] - q["bf16"][k] for k in q["bf16"]}
            q["delta_fp8_minus_bf16"]["text_perplexity_rel"] = q["fp8"]["text_perplexity"] / q["bf16"]["text_perplexity"] - 1
        return q

    layout = sharded["rows"][0]["layout"]
    quality = {"text": text, "task": None, **quality_of(sharded), "layouts": {layout: quality_of(sharded)}}
    if single:
        quality["layouts"][single["rows"][0]["layout"]] = quality_of(single)
    device = hardware.device_name(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"),
                         sharded.get("threads_per_rank"))
    meta = {"model": str(cfg.model), "device": device, "cpu_figures": device.startswith("CPU"), "roofline_device": None,
            "kv_cache": True, "repeats": cfg.repeats, "fp8": fp8, "quality": quality,
            "parallel": {"tensor": cfg.parallel.tensor, "pipeline": cfg.parallel.pipeline},
            "inference_path": "megatron.core.inference static batch (GPTInferenceWrapper, StaticInferenceContext KV cache, "
                              "TextGenerationController, greedy)",
            "tokens_match_single": (all(r["tokens_match_single"] for r in sharded["rows"]) if single else None)}
    out.mkdir(parents=True, exist_ok=True)
    bench_results.write_table(out, rows, meta, bench_results.SHARDED_COLUMNS)
    plot_rows = [{**r, "precision": f"{r['precision']} {r['layout']}"} for r in rows]
    plot = bench_results.plot_throughput(out, plot_rows, f"{Path(str(cfg.model)).name}, {layout}, on {device}"
                           + (" (CPU figures)" if meta["cpu_figures"] else "") + (" (FP8 emulated)" if fp8["emulated"] else ""))
    report = bench_results.write_sharded_markdown(out, rows, meta)
    return {"csv": str(out / "results.csv"), "json": str(out / "results.json"), "plot": str(plot), "report": str(report),
            "points": len(sharded["rows"]), "layout": layout, "fp8": fp8, "quality": quality,
            "tokens_match_single": meta["tokens_match_single"]}

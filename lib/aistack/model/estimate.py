"""What a training recipe (pretrain, sft, distill) will cost, before it runs: parameters,
memory per device, FLOPs, pipeline bubble, time per step and GPU-hours. Pure arithmetic (no
torch import): `aistack plan` stays fast.

Conventions, so the figures can be checked against the literature:
- parameters: megatron-core's GPTModel with the local layer spec (what aistack.model.gpt
  builds), the vocabulary padded to make_vocab_size_divisible_by x TP (model.layout);
- memory: Megatron mixed precision (bf16 weights, fp32 main grads as our DDP config sets
  grad_reduce_in_fp32, Adam's fp32 master copy + 2 moments = 12 bytes/param), the
  distributed optimizer sharding those 12 bytes over DP (Megatron's distrib_optimizer.md);
- activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models" (34sbh + 5as^2b per layer at 16 bits), generalised to GQA and a
  gated MLP; 1F1B keeps p micro-batches in flight on the first stage. The 5as^2b scores
  term is unfused attention (the local layer spec); flash/fused attention (Transformer
  Engine) keeps no scores, which the "selective" figure shows;
- FLOPs: aistack.model.flops, Megatron-LM's num_floating_point_operations (causal attention
  counted over half the s x s matrix, no recompute: model FLOPs, what MFU is measured
  against), the same function the training loop's logged TFLOP/s and MFU use;
- online logit distillation: the frozen teacher's weights (whole model at the student's TP,
  PP 1, in the training precision) on every device, its forward FLOPs in the step's.
Not included: CUDA context and allocator fragmentation (a few GiB), communication buffers,
an online teacher's transient activations and gathered logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aistack.hardware import DEVICES, GPU, lookup
from aistack.model.flops import online_teacher, step_flops
from aistack.model.layout import check_layout, padded_vocab_size

GiB = 2**30


# One device table for MFU, these estimates and the roofline: aistack.hardware.
Device = GPU
DEFAULT_DEVICE = "H100"
RECOMPUTE_MODES = ("none", "selective", "full")


@dataclass(frozen=True)
class Params:
    embedding: int  # word embeddings (+ learned positions)
    per_layer: int
    final_norm: int
    output: int  # the output layer when untied; 0 when it shares the embedding
    num_layers: int

    @property
    def total(self) -> int:
        return self.embedding + self.num_layers * self.per_layer + self.final_norm + self.output


@dataclass
class Estimate:
    vocab_size: int | None  # unpadded; None: unknown (no model.vocab_size, no tokenizer file)
    padded_vocab_size: int
    params: Params
    world_size: int
    tp: int
    pp: int
    dp: int
    vpp: int
    microbatches: int  # per pipeline per step
    precision: str
    recompute: str
    distributed_optimizer: bool
    peak_stage: int  # the pipeline stage with the most memory (the figures below are its)
    params_per_device: int
    weights_gib: float
    grads_gib: float
    optimizer_gib: dict[str, float]  # "replicated" / "distributed" (over DP)
    activations_gib: dict[str, float]  # per recompute mode, all micro-batches in flight
    activations_per_microbatch_gib: dict[str, float]  # per recompute mode, one micro-batch of the stage
    flops_per_step: float  # the student's forward + backward, plus an online teacher's forward
    tokens_per_step: int
    bubble: float  # fraction of a step the pipeline idles
    device: Device | None
    mfu: float
    steps: int = 0  # train.steps
    teacher_flops_per_step: float = 0.0  # an online teacher's forward (inside flops_per_step)
    teacher_params: int = 0  # an online teacher's, whole model (0: no teacher in the training job)
    teacher_params_per_device: int = 0
    teacher_weights_gib: float = 0.0  # frozen: weights only, no grads or optimizer state
    notes: list[tuple[str, str]] = field(default_factory=list)  # (figure, value) rows on what is left out
    warnings: list[str] = field(default_factory=list)

    @property
    def memory_gib(self) -> float:
        """Per device with the recipe's optimizer and recompute choices (and an online teacher)."""
        opt = self.optimizer_gib["distributed" if self.distributed_optimizer else "replicated"]
        return self.weights_gib + self.grads_gib + opt + self.activations_gib[self.recompute] + self.teacher_weights_gib

    @property
    def step_seconds(self) -> float | None:
        """At `mfu` of the device's dense peak (MFU is end to end: the bubble is inside it)."""
        if self.device is None or self.precision not in self.device.tflops:
            return None
        return self.flops_per_step / (self.world_size * self.device.tflops[self.precision] * 1e12 * self.mfu)

    @property
    def gpu_hours(self) -> float | None:
        """The training job's train.steps at step_seconds on world_size devices."""
        return None if self.step_seconds is None else self.step_seconds * self.steps * self.world_size / 3600

    @property
    def fits(self) -> bool | None:
        return None if self.device is None else self.memory_gib <= self.device.memory_gib


# --- parameters ---------------------------------------------------------------------------


def _kv_size(model: Any) -> int:
    return model.hidden_size // model.num_attention_heads * (model.num_query_groups or model.num_attention_heads)


def layer_params(model: Any) -> tuple[int, int]:
    """(split across TP ranks, replicated on each) parameters of one transformer layer."""
    h, f, kv = model.hidden_size, model.ffn_size, _kv_size(model)
    llama = model.arch == "llama"
    fc1_out = 2 * f if llama else f  # SwiGLU's fc1 is [gate; up]
    split = h * (h + 2 * kv) + h * h + h * fc1_out + f * h
    replicated = 2 * (h if llama else 2 * h)  # two norms (LayerNorm has a bias)
    if not llama:
        split += (h + 2 * kv) + fc1_out  # column-parallel biases shard with their rows
        replicated += 2 * h  # row-parallel biases (proj, fc2) are whole on every rank
    return split, replicated


def count_params(model: Any, padded_vocab_size: int) -> Params:
    h = model.hidden_size
    split, replicated = layer_params(model)
    return Params(
        embedding=padded_vocab_size * h + (model.seq_length * h if model.arch == "gpt2" else 0),
        per_layer=split + replicated,
        final_norm=h if model.arch == "llama" else 2 * h,
        output=0 if model.tied_embeddings else padded_vocab_size * h,
        num_layers=model.num_layers,
    )


def _stage_params(model: Any, tp: int, pp: int, vocab: int, stage: int) -> int:
    """Parameters one rank of this pipeline stage holds."""
    h = model.hidden_size
    split, replicated = layer_params(model)
    n = model.num_layers // pp * (split // tp + replicated)
    if stage == 0:
        n += vocab * h // tp + (model.seq_length * h if model.arch == "gpt2" else 0)
    if stage == pp - 1:
        n += h if model.arch == "llama" else 2 * h
        # The last stage needs the output projection: its own (untied), or with PP a copy of
        # the word embeddings that megatron keeps in sync (tied).
        if not model.tied_embeddings or pp > 1:
            n += vocab * h // tp
    return n


# --- activations (Korthikanti et al. 2022) ------------------------------------------------


def layer_activation_bytes(model: Any, micro_batch: int, tp: int, sequence_parallel: bool, recompute: str,
                           act_bytes: int = 2) -> float:
    """Activation memory of one transformer layer for one micro-batch on one TP rank.

    At 16 bits and for GPT (MHA, 4h GELU MLP) this is the paper's
    sbh(10 + 24/t + 5as/(ht)) without sequence parallelism, sbh/t (34 + 5as/h) with it,
    34sbh/t with selective recompute (the attention scores are recomputed), 2sbh/t with full.
    """
    s, b, h, a, f = model.seq_length, micro_batch, model.hidden_size, model.num_attention_heads, model.ffn_size
    sp = tp if sequence_parallel else 1  # sequence parallelism splits what TP alone leaves whole
    if recompute == "full":
        return act_bytes * s * b * h / sp  # only each layer's input is kept
    # Outside the TP region: two norm inputs, QKV and fc1 inputs (act_bytes each), two 1-byte dropout masks.
    outside = (4 * act_bytes + 2) * h
    # Inside it: Q, K, V, the projection input; the MLP's activation input and output
    # (SwiGLU: gate and up, silu(gate), the product going into fc2).
    mlp = 4 * f if model.arch == "llama" else 2 * f
    inside = act_bytes * (2 * h + 2 * _kv_size(model) + mlp)
    # Softmax output, its dropout mask (1 byte) and dropout output: a x s per token.
    scores = 0 if recompute == "selective" else (2 * act_bytes + 1) * a * s
    return s * b * (outside / sp + (inside + scores) / tp)


def _stage_activation_bytes(model: Any, parallel: Any, micro_batch: int, microbatches: int, vocab: int, stage: int,
                            recompute: str, act_bytes: int) -> tuple[float, float]:
    """(all micro-batches in flight, one micro-batch) activation bytes of a stage's rank."""
    tp, pp, vpp = parallel.tensor, parallel.pipeline, parallel.virtual_pipeline or 1
    sp = tp if parallel.sequence_parallel and tp > 1 else 1
    sbh = model.seq_length * micro_batch * model.hidden_size
    one = model.num_layers // pp * layer_activation_bytes(model, micro_batch, tp, sp > 1, recompute, act_bytes)
    # 1F1B: stage i starts p - i forward passes before its first backward.
    in_flight = min(pp - stage, microbatches)
    interleave = 1 + (pp - 1) / (pp * vpp) if vpp > 1 and stage == 0 else 1.0
    total = one * in_flight * interleave
    if stage == 0:
        total += in_flight * sbh / sp  # embedding dropout mask
    if stage == pp - 1:
        # final norm and output-layer inputs, fp32 logits for the vocab-parallel cross entropy
        last = 2 * act_bytes * sbh / sp + 4 * model.seq_length * micro_batch * vocab / tp
        total, one = total + last, one + last
    return total, one


# --- bubble -------------------------------------------------------------------------------


def bubble_fraction(pp: int, microbatches: int, vpp: int = 1) -> float:
    """Idle fraction of a 1F1B step: (p-1)/(m*v + p - 1) (Narayanan et al. 2021)."""
    return (pp - 1) / (microbatches * vpp + pp - 1)


# --- the estimate -------------------------------------------------------------------------


def resolve_precision(precision: str, gpus_per_node: int) -> str:
    if precision == "auto":  # as aistack.model.gpt resolves it on the node
        return "bf16" if gpus_per_node > 0 else "fp32"
    return precision


def device_for(*constraints: str | None) -> str | None:
    """The DEVICES key a Slurm constraint ("h100", "gpu&h200") names, if any."""
    gpu = lookup(*constraints)
    return gpu.key if gpu else None


def recipe_tokenizer(data: dict) -> str | None:
    """The tokenizer a run trained with, from its recipe data: data.tokenizer (pretrain, SFT,
    logit distillation), chat.tokenizer (logit distillation on chat records) or
    sequence.tokenizer (sequence-level distillation)."""
    return next((block["tokenizer"] for block in (data.get("data"), data.get("chat"), data.get("sequence"))
                 if block and block.get("tokenizer")), None)


def tokenizer_file(recipe: Any) -> Path | None:
    """The recipe's tokenizer (a tokenizer.json, or a folder holding one) if it exists."""
    path = recipe_tokenizer(recipe.model_dump(mode="json"))
    if not path:
        return None
    path = Path(path)
    path = path / "tokenizer.json" if path.is_dir() else path
    return path if path.is_file() else None


def vocab_size_of(recipe: Any) -> int | None:
    """model.vocab_size, else the tokenizer file's (with added tokens), else None."""
    if recipe.model.vocab_size:
        return recipe.model.vocab_size
    path = tokenizer_file(recipe)
    if path:
        from tokenizers import Tokenizer  # Rust extension: fast to import, no torch

        return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    return None


def estimate(recipe: Any, resources: Any = None, device: str | None = None, mfu: float = 0.4,
             file: str | Path = "recipe") -> Estimate:
    """Figures for the training job of a pretrain, sft or distill recipe (they share the
    model, parallel and train blocks) on `resources` (default: its own) and `device` (a
    DEVICES key; default: H100 when the recipe asks for GPUs, none on CPU)."""
    resources = resources or recipe.resources
    check_layout(recipe, file, resources.world_size)
    m, p, t = recipe.model, recipe.parallel, recipe.train
    tp, pp, vpp = p.tensor, p.pipeline, p.virtual_pipeline or 1
    world = resources.world_size
    dp = world // (tp * pp)
    microbatches = t.global_batch_size // (dp * t.micro_batch_size)
    precision = resolve_precision(t.precision, resources.gpus_per_node)
    if device is None and resources.gpus_per_node > 0:
        device = DEFAULT_DEVICE
    warnings: list[str] = []

    vocab = vocab_size_of(recipe)
    if vocab is None:
        warnings.append("vocabulary size unknown (no model.vocab_size, tokenizer file not found): embedding not counted")
    padded = padded_vocab_size(vocab, m, tp) if vocab else 0

    # Bytes per parameter: weights, main grads (fp32 either way), Adam (master copy + 2 moments).
    w_bytes, opt_bytes = (4, 8) if precision == "fp32" else (2, 12)
    act_bytes = 4 if precision == "fp32" else 2

    def stage_bytes(stage: int) -> float:
        n = _stage_params(m, tp, pp, padded, stage)
        acts, _ = _stage_activation_bytes(m, p, t.micro_batch_size, microbatches, padded, stage, p.recompute, act_bytes)
        return n * (w_bytes + 4 + (opt_bytes / dp if p.distributed_optimizer else opt_bytes)) + acts

    peak = max(range(pp), key=stage_bytes) if pp > 1 else 0
    n_dev = _stage_params(m, tp, pp, padded, peak)
    acts = {mode: _stage_activation_bytes(m, p, t.micro_batch_size, microbatches, padded, peak, mode, act_bytes)
            for mode in RECOMPUTE_MODES}
    flops = step_flops(recipe, vocab or 0, tp)
    teacher = _teacher(recipe, vocab, tp, w_bytes, warnings)
    est = Estimate(
        vocab_size=vocab, padded_vocab_size=padded, params=count_params(m, padded), world_size=world,
        tp=tp, pp=pp, dp=dp, vpp=vpp, microbatches=microbatches, precision=precision, recompute=p.recompute,
        distributed_optimizer=p.distributed_optimizer, peak_stage=peak, params_per_device=n_dev,
        weights_gib=n_dev * w_bytes / GiB, grads_gib=n_dev * 4 / GiB,
        optimizer_gib={"replicated": n_dev * opt_bytes / GiB, "distributed": n_dev * opt_bytes / dp / GiB},
        activations_gib={k: v[0] / GiB for k, v in acts.items()},
        activations_per_microbatch_gib={k: v[1] / GiB for k, v in acts.items()},
        flops_per_step=flops["total"], tokens_per_step=t.global_batch_size * m.seq_length,
        bubble=bubble_fraction(pp, microbatches, vpp), device=DEVICES[device] if device else None, mfu=mfu,
        steps=t.steps, teacher_flops_per_step=flops["teacher"], **teacher, notes=_notes(recipe), warnings=warnings,
    )
    if est.fits is False:
        est.warnings.append(f"{est.memory_gib:.1f} GiB per device exceeds the {est.device.name}'s "
                            f"{est.device.memory_gib:.1f} GiB: more TP/PP, recompute or the distributed optimizer")
    if est.device and precision not in est.device.tflops:
        est.warnings.append(f"the {est.device.name} has no {precision} tensor cores: no time estimate")
    return est


def _teacher(recipe: Any, vocab: int | None, tp: int, w_bytes: int, warnings: list[str]) -> dict[str, Any]:
    """An online teacher's parameters and weight memory per device: the whole model at the
    student's TP, PP 1 (aistack.post.objectives.load_teacher), frozen in the training precision."""
    tm = online_teacher(recipe)
    if tm is None:
        return {}
    tp_problems = [f"teacher.model.{key} {n} is not divisible by parallel.tensor {tp}"
                   for key, n in (("num_attention_heads", tm.num_attention_heads), ("num_query_groups", tm.num_query_groups))
                   if n and n % tp]
    warnings.extend(f"{problem}: the online teacher runs at the student's TP" for problem in tp_problems)
    if recipe.parallel.pipeline > 1:
        warnings.append("online distillation needs parallel.pipeline=1 (the teacher runs whole beside each student "
                        "rank): use logit.source=offline with pipeline parallelism")
    padded = padded_vocab_size(vocab, tm, tp) if vocab else 0
    per_device = _stage_params(tm, tp, 1, padded, 0)
    return {"teacher_params": count_params(tm, padded).total, "teacher_params_per_device": per_device,
            "teacher_weights_gib": per_device * w_bytes / GiB}


def _notes(recipe: Any) -> list[tuple[str, str]]:
    """Rows on the teacher's work that these figures leave out (distill offline and sequence)."""
    if getattr(recipe, "kind", None) != "distill" or online_teacher(recipe) is not None:
        return []
    if recipe.method == "logit":
        return [("teacher", f"offline: its top-{recipe.logit.top_k} logits are written by the teacher_logits job "
                            "(not in these figures, which are the student's training job)")]
    return [("teacher", "sequence-level: its answers are generated by the generate job (not in these figures, "
                        "which are the student's finetuning job)")]


def rows(est: Estimate) -> list[tuple[str, str]]:
    """(figure, value) rows for `aistack plan`."""
    g = lambda x: f"{x:.3g}"  # noqa: E731
    p = est.params
    out = [
        ("layout", f"TP {est.tp} x PP {est.pp} x DP {est.dp} = {est.world_size}"
                   + (f", {est.vpp} virtual stages" if est.vpp > 1 else "") + f", {est.microbatches} micro-batches/step"),
        ("parameters", f"{_si(p.total)} (embedding {_si(p.embedding)}, {_si(p.per_layer)}/layer x {p.num_layers}, "
                       f"output {_si(p.output) if p.output else 'tied'}; vocab {est.vocab_size} -> {est.padded_vocab_size})"),
        (f"per device (stage {est.peak_stage})", f"{_si(est.params_per_device)} params, {est.precision}"),
        ("weights + grads GiB", f"{g(est.weights_gib)} + {g(est.grads_gib)}"),
        ("optimizer GiB", f"{g(est.optimizer_gib['replicated'])} replicated, {g(est.optimizer_gib['distributed'])} distributed"
                          + f" (using {'distributed' if est.distributed_optimizer else 'replicated'})"),
        ("activations GiB", ", ".join(f"{g(v)} {k}" for k, v in est.activations_gib.items()) + f" (using {est.recompute})"),
        ("  of which 1 micro-batch", ", ".join(f"{g(v)} {k}" for k, v in est.activations_per_microbatch_gib.items())),
        *([("teacher (frozen, online)", f"{_si(est.teacher_params)} params, {_si(est.teacher_params_per_device)} per device "
                                        f"(TP {est.tp}, PP 1), weights {g(est.teacher_weights_gib)} GiB")]
          if est.teacher_params else []),
        ("memory per device GiB", g(est.memory_gib) + (
            f" of {g(est.device.memory_gib)} on {est.device.name}: {'fits' if est.fits else 'DOES NOT FIT'}" if est.device else "")),
        ("FLOPs per step", f"{est.flops_per_step:.3e} ({_si(est.tokens_per_step)} tokens"
                           + (f"; teacher forward {est.teacher_flops_per_step:.3e}" if est.teacher_flops_per_step else "")
                           + ")"),
        ("pipeline bubble", f"{est.bubble:.1%}"),
    ]
    if est.step_seconds:
        tps = est.tokens_per_step / est.step_seconds
        out.append(("time per step", f"{est.step_seconds:.2f} s at MFU {est.mfu:.0%} ({_si(tps)} tokens/s)"))
        hours = f"{est.gpu_hours:,.0f}" if est.gpu_hours >= 10 else g(est.gpu_hours)
        out.append(("GPU-hours", f"{hours} for {est.steps:,} steps at MFU {est.mfu:.0%}"))
    return out + est.notes


def _si(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))

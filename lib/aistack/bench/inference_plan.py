"""Inference memory per device and the smallest layout that serves a model, before it runs.

Pure arithmetic on the model's shape (no torch import): `aistack plan` prints it for a
`kind: bench` recipe. For a TP x PP layout, one TP rank of the pipeline stage with the most
memory holds:

- weights: every Linear of the transformer layers, TP-sharded (Megatron's split: QKV and
  fc1 by output rows, the projection and fc2 by input columns), at 2 bytes per parameter in
  BF16 and 1 byte in FP8 plus its fp32 scales (one per output row, or one per tensor); the
  word embeddings (vocab-parallel, on the first stage), norms and biases stay BF16, and so
  do the Linear layers `bench.fp8.skip` names (the LM head by default). The LM head sits on
  the last stage; a tied one shares the embedding only when both are on one stage in BF16.
  When TP exceeds the KV heads, each rank keeps one KV head: its K and V weights (and cache)
  are replicated, as vLLM and Megatron do;
- KV cache: 2 (K and V) x layers of the stage x KV heads per rank x head dim x
  (prompt + generated tokens) x batch x 2 bytes (the cache stays BF16 in both precisions);
- activations, a simple upper bound: inference keeps no activations between layers, so the
  peak is one layer's prefill working set for batch x prompt tokens held at once (residual
  stream and norm output 2h, Q/K/V and attention output of the rank, the MLP's intermediate
  values: gate, up and their product for a gated MLP, fc1 and GELU outputs otherwise) at
  2 bytes per value, plus the last stage's BF16 logits at every prompt position (the
  benchmark's prefill asks for all of them). Attention scores are not materialised
  (flash / SDPA kernels).

A layout fits when that total is at most (1 - headroom) of the GPU's memory: the headroom
(10% unless told) is for the CUDA context, the allocator's fragmentation and NCCL buffers.
TP stays within a node (at most its GPUs, dividing the attention heads) and PP goes across
nodes: each pipeline stage is one node. The smallest layout is the one with the fewest
stages (nodes), then the smallest TP that fits.

Decode roofline: a generated token moves every weight and the KV cache through HBM once.
The stages of the pipeline work one after the other on a token (no micro-batch overlap),
the ranks of a stage in parallel, so one decode step of the batch takes at least

    sum over stages of max(bytes read by one rank / HBM bandwidth, FLOPs of one rank / peak)

with the KV read at the mean context of the decode (prompt + gen / 2), as bench.roofline
does for one device. Communication is not counted: these are upper bounds on tokens/s,
per sequence (1 / step) and for the batch (batch / step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aistack.hardware import GPU, lookup

GiB = 2**30
DEFAULT_HEADROOM = 0.10
DEFAULT_GPU = "H100"  # when the recipe and the profile name none
DEFAULT_GPUS_PER_NODE = 8  # when the profile says none
PRECISIONS = ("bf16", "fp8")


@dataclass(frozen=True)
class Shape:
    """What the arithmetic needs of a model (aistack.kinds.pretrain.ModelConfig's fields)."""

    arch: str  # "llama": gated MLP, RMSNorm, no biases; "gpt2": GELU MLP, LayerNorm, biases, learned positions
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tied: bool
    positions: int  # learned position embeddings (gpt2), and the longest sequence

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def of(cls, model: Any) -> "Shape":
        if not model.vocab_size:
            raise ValueError("the model block has no vocab_size: the embedding and LM head cannot be counted")
        return cls(model.arch, model.num_layers, model.hidden_size, model.num_attention_heads,
                   model.num_query_groups or model.num_attention_heads, model.ffn_size, model.vocab_size,
                   model.tied_embeddings, model.seq_length)


@dataclass(frozen=True)
class Linear:
    name: str  # transformers' module name (what bench.fp8.skip matches)
    rows: int  # output features on one TP rank
    cols: int  # input features on one TP rank
    row_parallel: bool  # split by input columns: its bias is whole on every rank


def tp_problem(shape: Shape, tp: int) -> str | None:
    """Why `tp` cannot shard this model's attention, or None."""
    if shape.heads % tp:
        return f"TP {tp} must divide the {shape.heads} attention heads"
    if shape.kv_heads % tp and tp % shape.kv_heads:
        return f"TP {tp} must divide the {shape.kv_heads} KV heads or be a multiple of them"
    return None


def kv_heads_per_rank(shape: Shape, tp: int) -> int:
    """KV heads one TP rank holds: a share of them, or one replicated head when TP > KV heads."""
    return max(1, shape.kv_heads // tp)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def layer_linears(shape: Shape, tp: int) -> list[Linear]:
    """The Linear layers of one transformer layer as one TP rank holds them."""
    h, hd, kv = shape.hidden, shape.head_dim, kv_heads_per_rank(shape, tp)
    q, f = h // tp, _ceil(shape.ffn, tp)
    if shape.arch == "gpt2":  # Conv1D layers; c_attn is Q, K and V together
        return [Linear("attn.c_attn", q + 2 * kv * hd, h, False), Linear("attn.c_proj", h, q, True),
                Linear("mlp.c_fc", f, h, False), Linear("mlp.c_proj", h, f, True)]
    return [Linear("self_attn.q_proj", q, h, False), Linear("self_attn.k_proj", kv * hd, h, False),
            Linear("self_attn.v_proj", kv * hd, h, False), Linear("self_attn.o_proj", h, q, True),
            Linear("mlp.gate_proj", f, h, False), Linear("mlp.up_proj", f, h, False),
            Linear("mlp.down_proj", h, f, True)]


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    """As bench.fp8.quantize_model matches module names (per-layer entries are not told apart)."""
    return any(name == s or name.endswith("." + s) for s in skip)


def linear_bytes(lin: Linear, fp8: bool, scaling: str, skip: tuple[str, ...]) -> int:
    n = lin.rows * lin.cols
    if not fp8 or _skipped(lin.name, skip):
        return 2 * n
    return n + (4 * lin.rows if scaling == "row" else 4)


def layer_bytes(shape: Shape, tp: int, fp8: bool, scaling: str = "row", skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Weight bytes of one transformer layer on one TP rank: Linear weights, biases, norms."""
    linears = layer_linears(shape, tp)
    total = sum(linear_bytes(lin, fp8, scaling, skip) for lin in linears)
    if shape.arch == "gpt2":
        total += 2 * sum(shape.hidden if lin.row_parallel else lin.rows for lin in linears)  # biases
        total += 2 * 2 * 2 * shape.hidden  # two LayerNorms, weight and bias
    else:
        total += 2 * 2 * shape.hidden  # two RMSNorms
    return total


def stage_layers(layers: int, pp: int, stage: int) -> int:
    """Layers of a stage: an even split, the first stages taking one more when it is uneven."""
    return layers // pp + (1 if stage < layers % pp else 0)


def stage_weight_bytes(shape: Shape, tp: int, pp: int, stage: int, fp8: bool, scaling: str = "row",
                       skip: tuple[str, ...] = ("lm_head",)) -> int:
    h = shape.hidden
    vocab = _ceil(shape.vocab, tp)  # vocab-parallel embedding and LM head
    total = stage_layers(shape.layers, pp, stage) * layer_bytes(shape, tp, fp8, scaling, skip)
    first, last = stage == 0, stage == pp - 1
    if first:
        total += 2 * vocab * h + (2 * shape.positions * h if shape.arch == "gpt2" else 0)
    if last:
        total += 2 * h * (2 if shape.arch == "gpt2" else 1)  # final norm
        head = Linear("lm_head", vocab, h, False)
        head_fp8 = fp8 and not _skipped("lm_head", skip)
        if not (shape.tied and first and not head_fp8):  # else it is the embedding itself
            total += linear_bytes(head, fp8, scaling, skip)
    return total


def stage_kv_bytes(shape: Shape, tp: int, pp: int, stage: int, batch: int, context: float) -> float:
    """K and V of every layer of the stage, for `context` tokens of `batch` sequences, BF16."""
    return 2 * stage_layers(shape.layers, pp, stage) * kv_heads_per_rank(shape, tp) * shape.head_dim * context * batch * 2


def stage_activation_bytes(shape: Shape, tp: int, pp: int, stage: int, batch: int, prompt_len: int) -> int:
    """The bound of the module doc: one layer's prefill working set, plus the logits on the last stage."""
    h, hd = shape.hidden, shape.head_dim
    f = _ceil(shape.ffn, tp)
    attention = h // tp + 2 * kv_heads_per_rank(shape, tp) * hd + h // tp  # Q, K, V, attention output
    mlp = 3 * f if shape.arch == "llama" else 2 * f
    total = batch * prompt_len * 2 * (2 * h + attention + mlp)
    if stage == pp - 1:
        total += batch * prompt_len * _ceil(shape.vocab, tp) * 2
    return total


def stage_decode_flops(shape: Shape, tp: int, pp: int, stage: int, batch: int, context: float) -> float:
    """FLOPs of one decode step on one rank: 2 per weight of each Linear, plus QK^T and AV."""
    macs = stage_layers(shape.layers, pp, stage) * sum(lin.rows * lin.cols for lin in layer_linears(shape, tp))
    if stage == pp - 1:
        macs += _ceil(shape.vocab, tp) * shape.hidden
    attention = 4 * stage_layers(shape.layers, pp, stage) * (shape.hidden // tp) * context
    return batch * (2 * macs + attention)


@dataclass(frozen=True)
class Layout:
    """One precision on one TP x PP layout: the rank of the stage with the most memory."""

    precision: str
    tp: int
    pp: int
    stage: int  # the stage with the most memory (its rank's figures below)
    weights_bytes: int
    kv_bytes: float
    activation_bytes: int
    usable_bytes: float
    decode_step_s: float  # lower bound on one decode step of the batch
    decode_bound: str  # "HBM" or "compute": what bounds the slowest stage's step
    batch: int

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def nodes(self) -> int:
        return self.pp  # one stage per node

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + self.kv_bytes + self.activation_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.usable_bytes

    @property
    def tok_s_per_sequence(self) -> float:
        return 1 / self.decode_step_s

    @property
    def tok_s_batch(self) -> float:
        return self.batch / self.decode_step_s


@dataclass(frozen=True)
class InferencePlan:
    shape: Shape
    params: int  # every parameter of the model (the LM head once when tied)
    weights_bytes: dict[str, int]  # the whole model per precision (one copy)
    kv_bytes: float  # the whole KV cache at the longest context of the largest batch
    batch: int
    prompt_len: int
    gen_len: int
    gpu: GPU
    gpu_assumed: bool  # the profile named no GPU: DEFAULT_GPU
    gpus_per_node: int
    headroom: float
    requested: dict[str, Layout]  # per precision at the recipe's layout (bench.parallel)
    smallest: dict[str, Layout | None]  # per precision: the smallest layout that fits; None: none does
    warnings: list[str] = field(default_factory=list)

    @property
    def usable_bytes(self) -> float:
        return self.gpu.memory_gib * GiB * (1 - self.headroom)


def count_params(shape: Shape) -> int:
    """Parameters of the whole model: layers (with biases and norms), embeddings, final norm, LM head."""
    h = shape.hidden
    per_layer = sum(lin.rows * lin.cols for lin in layer_linears(shape, 1))
    if shape.arch == "gpt2":
        per_layer += sum(lin.rows for lin in layer_linears(shape, 1)) + 4 * h
        embedding, final_norm = (shape.vocab + shape.positions) * h, 2 * h
    else:
        per_layer += 2 * h
        embedding, final_norm = shape.vocab * h, h
    return shape.layers * per_layer + embedding + final_norm + (0 if shape.tied else shape.vocab * h)


def layout(shape: Shape, precision: str, tp: int, pp: int, batch: int, prompt_len: int, gen_len: int, gpu: GPU,
           headroom: float = DEFAULT_HEADROOM, scaling: str = "row", skip: tuple[str, ...] = ("lm_head",)) -> Layout:
    """Memory per device and the decode bound of one precision on one TP x PP layout."""
    problem = tp_problem(shape, tp)
    if problem:
        raise ValueError(problem)
    if not 1 <= pp <= shape.layers:
        raise ValueError(f"PP {pp} must be between 1 and the {shape.layers} layers")
    fp8 = precision == "fp8"
    context, mean_context = prompt_len + gen_len, prompt_len + gen_len / 2

    def memory(stage: int) -> tuple[int, float, int]:
        return (stage_weight_bytes(shape, tp, pp, stage, fp8, scaling, skip),
                stage_kv_bytes(shape, tp, pp, stage, batch, context),
                stage_activation_bytes(shape, tp, pp, stage, batch, prompt_len))

    peak = max(range(pp), key=lambda s: sum(memory(s)))
    peak_flops = gpu.fp8_flops if fp8 and gpu.fp8_flops else gpu.bf16_flops
    step, bound, slowest = 0.0, "HBM", -1.0
    for stage in range(pp):
        read = stage_weight_bytes(shape, tp, pp, stage, fp8, scaling, skip) + stage_kv_bytes(shape, tp, pp, stage, batch, mean_context)
        hbm_s = read / gpu.hbm_bytes_per_s
        compute_s = stage_decode_flops(shape, tp, pp, stage, batch, mean_context) / peak_flops
        stage_s = max(hbm_s, compute_s)
        step += stage_s
        if stage_s > slowest:
            slowest, bound = stage_s, "HBM" if hbm_s >= compute_s else "compute"
    weights, kv, acts = memory(peak)
    return Layout(precision, tp, pp, peak, weights, kv, acts, gpu.memory_gib * GiB * (1 - headroom), step, bound, batch)


def tp_choices(shape: Shape, gpus_per_node: int) -> list[int]:
    return [tp for tp in range(1, gpus_per_node + 1) if tp_problem(shape, tp) is None]


def smallest_layout(shape: Shape, precision: str, batch: int, prompt_len: int, gen_len: int, gpu: GPU,
                    gpus_per_node: int, headroom: float = DEFAULT_HEADROOM, scaling: str = "row",
                    skip: tuple[str, ...] = ("lm_head",)) -> Layout | None:
    """The fewest pipeline stages (nodes), then the smallest TP within a node, that fit; None if none does."""
    for pp in range(1, shape.layers + 1):
        for tp in tp_choices(shape, gpus_per_node):
            candidate = layout(shape, precision, tp, pp, batch, prompt_len, gen_len, gpu, headroom, scaling, skip)
            if candidate.fits:
                return candidate
    return None


def inference_plan(model: Any, precisions: list[str] | tuple[str, ...], batch: int, prompt_len: int, gen_len: int,
                   gpu: GPU | None = None, gpus_per_node: int | None = None, tp: int = 1, pp: int = 1,
                   headroom: float = DEFAULT_HEADROOM, scaling: str = "row",
                   skip: tuple[str, ...] | list[str] = ("lm_head",)) -> InferencePlan:
    """The figures `aistack plan` prints for a bench recipe: `model` is a pretrain ModelConfig
    (or a Shape), `gpu` an aistack.hardware entry (None: the H100, said so)."""
    shape = model if isinstance(model, Shape) else Shape.of(model)
    skip = tuple(skip)
    warnings: list[str] = []
    gpu_assumed = gpu is None
    gpu = gpu or lookup(DEFAULT_GPU)
    if gpus_per_node is None or gpus_per_node < 1:
        gpus_per_node = DEFAULT_GPUS_PER_NODE
        warnings.append(f"the profile has no GPUs per node: {gpus_per_node} assumed")
    if tp > gpus_per_node:
        warnings.append(f"TP {tp} spans more than a node's {gpus_per_node} GPUs: TP traffic would leave NVLink")
    if prompt_len + gen_len > shape.positions:
        warnings.append(f"prompt {prompt_len} + generated {gen_len} tokens exceed the model's {shape.positions} positions")
    if "fp8" in precisions and not gpu.fp8_flops:
        warnings.append(f"the {gpu.name} has no FP8 tensor cores: FP8 saves memory there, its speed is BF16's at best")
    args = dict(batch=batch, prompt_len=prompt_len, gen_len=gen_len, gpu=gpu, headroom=headroom, scaling=scaling, skip=skip)
    requested = {p: layout(shape, p, tp, pp, **args) for p in precisions}
    smallest = {p: smallest_layout(shape, p, gpus_per_node=gpus_per_node, **args) for p in precisions}
    for p, found in smallest.items():
        if found is None:
            warnings.append(f"{p}: no layout of at most {gpus_per_node} TP ranks x {shape.layers} stages fits")
    weights = {p: stage_weight_bytes(shape, 1, 1, 0, p == "fp8", scaling, skip) for p in precisions}
    return InferencePlan(shape, count_params(shape), weights, stage_kv_bytes(shape, 1, 1, 0, batch, prompt_len + gen_len),
                         batch, prompt_len, gen_len, gpu, gpu_assumed, gpus_per_node, headroom, requested, smallest, warnings)


def of_recipe(recipe: Any, profile: Any) -> InferencePlan | None:
    """The plan of a bench recipe on a cluster profile: the sweep's largest batch and longest
    prompt and generation (the most memory); None when the recipe gives no model shape."""
    cfg = recipe.bench
    if cfg.model_block is None or not cfg.model_block.vocab_size:
        return None
    constraint = (profile.sbatch_defaults or {}).get("constraint") if profile is not None else None
    gpu = lookup(recipe.resources.constraint, constraint)
    plan = inference_plan(cfg.model_block, cfg.precisions, max(cfg.batch_sizes), max(cfg.prompt_lengths), max(cfg.gen_lengths),
                          gpu=gpu, gpus_per_node=profile.gpus_per_node if profile is not None else None,
                          tp=cfg.parallel.tensor, pp=cfg.parallel.pipeline, scaling=cfg.fp8.scaling, skip=cfg.fp8.skip)
    if not cfg.kv_cache:
        plan.warnings.append("bench.kv_cache is false: these figures assume the KV cache")
    return plan


# --- printing -------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:,.1f}" if x >= 10 else f"{x:.3g}"


def _gib(n: float) -> str:
    return _fmt(n / GiB)


def _si(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def columns(plan: InferencePlan) -> list[tuple[str, Layout | None]]:
    """(header, layout) per precision: the recipe's layout and the smallest that fits (once when the same)."""
    out: list[tuple[str, Layout | None]] = []
    for p, asked in plan.requested.items():
        best = plan.smallest[p]
        if best is not None and (best.tp, best.pp) == (asked.tp, asked.pp):
            out.append((f"{p} TP {asked.tp} x PP {asked.pp} (recipe, smallest fit)", asked))
            continue
        out.append((f"{p} TP {asked.tp} x PP {asked.pp} (recipe)", asked))
        out.append((f"{p} TP {best.tp} x PP {best.pp} (smallest fit)" if best else f"{p} (no layout fits)", best))
    return out


def rows(plan: InferencePlan) -> list[list[str]]:
    """Figure rows of the inference table, one column per layout of `columns`."""
    layouts = [lay for _, lay in columns(plan)]
    figures = [
        ("nodes (GPUs)", lambda x: f"{x.nodes} ({x.gpus})"),
        ("weights GiB", lambda x: _gib(x.weights_bytes)),
        ("KV cache GiB", lambda x: _gib(x.kv_bytes)),
        ("activations GiB", lambda x: _gib(x.activation_bytes)),
        ("total GiB per GPU", lambda x: _gib(x.total_bytes)),
        (f"fits in {_gib(plan.usable_bytes)} GiB", lambda x: "yes" if x.fits else "NO"),
        ("decode tok/s per sequence", lambda x: _fmt(x.tok_s_per_sequence)),
        (f"decode tok/s, batch {plan.batch}", lambda x: f"{x.tok_s_batch:,.0f}"),
        ("decode bound", lambda x: x.decode_bound),
    ]
    return [[name] + [fmt(lay) if lay is not None else "-" for lay in layouts] for name, fmt in figures]


def summary(plan: InferencePlan) -> str:
    """One line: the smallest layout per precision."""
    parts = []
    for p, best in plan.smallest.items():
        if best is None:
            parts.append(f"{p} none")
        else:
            parts.append(f"{p} TP {best.tp} x PP {best.pp} on {best.nodes} node{'s' if best.nodes > 1 else ''} "
                         f"({best.gpus} GPU{'s' if best.gpus > 1 else ''}, {_gib(best.total_bytes)} GiB per GPU)")
    return "smallest layout that fits: " + "; ".join(parts)


def print_plan(console: Any, plan: InferencePlan | None) -> None:
    """The inference table of `aistack plan` (rich console)."""
    from rich.table import Table

    if plan is None:
        console.print("inference memory: no model shape (bench.model_block with a vocab_size) to plan with")
        return
    s, gpu = plan.shape, plan.gpu
    title = (f"inference per GPU: {_si(plan.params)} params ({s.layers} layers, hidden {s.hidden}, "
             f"{s.heads} heads, {s.kv_heads} KV heads), batch {plan.batch}, prompt {plan.prompt_len} + gen {plan.gen_len} "
             f"tokens, {gpu.name}{' (assumed)' if plan.gpu_assumed else ''}, {plan.gpus_per_node} GPUs/node")
    table = Table(title=title)
    table.add_column("figure")
    for header, _ in columns(plan):
        table.add_column(header)
    for row in rows(plan):
        table.add_row(*row)
    console.print(table)
    console.print(summary(plan), soft_wrap=True)
    whole = ", ".join(f"{p} {_fmt(n / 1e9)} GB" for p, n in plan.weights_bytes.items())
    console.print(f"whole model: weights {whole}; KV cache {_fmt(plan.kv_bytes / 1e9)} GB. A layout fits when its total "
                  f"is at most {1 - plan.headroom:.0%} of the {gpu.memory_gib:.1f} GiB of a GPU; TP within a node, one node "
                  f"per pipeline stage. Decode: bytes read per token / HBM {gpu.hbm_bytes_per_s / 1e12:.2f} TB/s (or FLOPs / "
                  f"peak, when larger), stages in sequence, no communication: upper bounds.", soft_wrap=True)
    for warning in plan.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True)

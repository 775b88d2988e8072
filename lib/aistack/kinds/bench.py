"""`kind: bench`: generation speed and quality of a model in BF16 and in FP8.

    bench:
      model: runs/gpt-125m-abc          # an aistack checkpoint/run (exported to HF first) or an HF folder
      precisions: [bf16, fp8]
      batch_sizes: [1, 8, 32]
      prompt_lengths: [128, 512]
      gen_lengths: [128]

One job loops over the sweep points (see `plan` below for why).
FP8 runs per point as weight-only (small batches: FP8 weights, BF16 matmuls) or W8A8 (FP8
GEMMs on the tensor cores of an sm_89/sm_90 GPU through torch._scaled_mm; elsewhere the
same quantization is emulated, quantize-dequantize), `bench.fp8.mode`; quality is measured
for each mode a sweep uses, everywhere, and speed only where FP8 is real; the report says
which. Decode steps run eagerly, over a static KV cache, captured in a CUDA graph or
compiled (`bench.decode`, aistack.bench.decode); each point reports the mode it ran.

`aistack plan` also prints the memory per device (weights, KV cache, activations) of each
precision at `parallel` (TP x PP) and at the smallest layout that fits the profile's GPU,
with the decode roofline (aistack.bench.inference_plan); it needs `model_block` with a
vocab_size. `model: random` (with a model_block) plans a model of that shape with no
checkpoint at all: a 405B-class layout is planned without building anything. The job
itself loads a checkpoint (it refuses `random`); at TP x PP > 1 it generates sharded, one
rank per device (aistack.bench.sharded: nodes = PP stages, tasks per node = TP).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from aistack.kinds.evaluate import DataTask, ExistingFile, TaskName, expand_checkpoints
from aistack.kinds.pretrain import ModelConfig
from aistack.recipe.kinds import JobSpec, KindSpec
from aistack.recipe.load import LoadedRecipe
from aistack.recipe.schema import Recipe, StrictModel


class FP8Config(StrictModel):
    scaling: Literal["tensor", "row"] = Field(default="row", description="weight scales: one per tensor or one per output row")
    mode: Literal["auto", "weight_only", "w8a8"] = Field(
        default="auto", description="weight_only: FP8 weights dequantized into a BF16 matmul (fused into the GEMV under "
                                    "bench.decode: compile); w8a8: activations quantized per token too, FP8 GEMMs "
                                    "(torch._scaled_mm, row-wise); auto: weight_only up to weight_only_max_batch, w8a8 above")
    weight_only_max_batch: int = Field(
        default=1, ge=0, description="auto's largest batch for weight_only: inductor turns only an M = 1 matmul into the "
                                     "multiply-reduce that reads FP8 weights; at M > 1 the dequantization is a kernel of its "
                                     "own writing a BF16 copy of each weight (slower than BF16)")
    backend: Literal["auto", "scaled_mm", "te", "emulate"] = Field(default="auto", description="how w8a8 runs; auto: scaled_mm on "
                                                                                              "sm_89+, emulation elsewhere")
    skip: list[str] = Field(default_factory=lambda: ["lm_head"], description="Linear modules (name suffixes) kept in BF16")

    @model_validator(mode="before")
    @classmethod
    def _activations_is_mode(cls, data: Any) -> Any:
        """bench.fp8.activations, the key before bench.fp8.mode: true is w8a8, false weight_only
        (recipes saved in older run directories still load)."""
        if not isinstance(data, dict) or "activations" not in data:
            return data
        data = dict(data)
        value = data.pop("activations")
        if not isinstance(value, bool):
            raise ValueError(f"bench.fp8.activations={value!r}: true or false (an old key; use bench.fp8.mode)")
        if "mode" in data:
            raise ValueError(f"bench.fp8.activations={str(value).lower()} and bench.fp8.mode={data['mode']}: give only "
                             "bench.fp8.mode (activations: true is mode w8a8, false weight_only)")
        data["mode"] = "w8a8" if value else "weight_only"
        return data

    def mode_at(self, batch: int) -> str:
        """The FP8 mode a point of `batch` sequences runs."""
        from aistack.bench.fp8 import mode_for_batch

        return mode_for_batch(self.mode, batch, self.weight_only_max_batch)


class QualityConfig(StrictModel):
    text: ExistingFile | None = Field(default=None, description="held-out text (.jsonl with a 'text' field, or .txt); null: tinylang's")
    task: TaskName | None = Field(default="tinylang_mc", description="an lm-eval task scored in BF16 and FP8 (or a data_tasks "
                                                                      "name); null: none")
    data_tasks: dict[TaskName, DataTask] = Field(default_factory=dict, description="tasks built from local jsonl files, as "
                                                 "evaluate.data_tasks (chat prompts with the checkpoint's chat template)")
    limit: int | None = Field(default=None, ge=1, description="documents of the task")
    max_docs: int = Field(default=200, ge=1, description="documents of held-out text")


RANDOM = "random"  # bench.model: no checkpoint, a model_block shape (planning only)


class InferenceParallel(StrictModel):
    tensor: int = Field(default=1, ge=1, le=64, description="TP ranks (within a node), dividing the attention heads")
    pipeline: int = Field(default=1, ge=1, le=1024, description="PP stages (one node each), at most the layers")
    compare_single: bool = Field(default=False, description="at TP x PP > 1, also run every point at TP 1 x PP 1 on "
                                                            "rank 0 and report whether the greedy tokens are identical")


class BenchConfig(StrictModel):
    model: str = Field(description="aistack checkpoint / pretrain run or NeMo 2 checkpoint (exported to HF), a Hugging Face model folder, "
                                   "or 'random' (model_block's shape, for `aistack plan` only)")
    model_block: ModelConfig | None = Field(default=None, description="the architecture; null: the pretrain run's model block")
    tokenizer: ExistingFile | None = Field(default=None, description="tokenizer.json; null: the run's data.tokenizer or the HF folder's")
    precisions: list[Literal["bf16", "fp8"]] = Field(default_factory=lambda: ["bf16", "fp8"], min_length=1)
    fp8: FP8Config = Field(default_factory=FP8Config)
    parallel: InferenceParallel = Field(default_factory=InferenceParallel,
                                        description="the TP x PP layout `aistack plan` sizes and the job runs at")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 4, 16], min_length=1)
    prompt_lengths: list[int] = Field(default_factory=lambda: [128], min_length=1)
    gen_lengths: list[int] = Field(default_factory=lambda: [64], min_length=1)
    repeats: int = Field(default=5, ge=1, description="timed repeats per point (p50/p90/p99 over them)")
    warmup: int = Field(default=1, ge=0)
    kv_cache: bool = Field(default=True, description="decode with the KV cache (prefill once, one token per step)")
    decode: Literal["auto", "eager", "static", "graph", "compile"] = Field(
        default="auto", description="how decode steps run (aistack.bench.decode): eager (dynamic cache), static (static cache), "
                                    "graph (its step replayed from a CUDA graph), compile (torch.compile reduce-overhead); auto: "
                                    "graph on a GPU (compile for FP8 weight-only points), static on a CPU, eager without kv_cache")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quality: QualityConfig = Field(default_factory=QualityConfig)
    offline: bool = True
    seed: int = 1234

    @field_validator("model")
    @classmethod
    def _resolve(cls, spec: str) -> str:
        return spec if spec == RANDOM else expand_checkpoints(spec, all_steps=False)[0]

    @model_validator(mode="after")
    def _decode_fits(self):
        if self.decode in ("static", "graph", "compile"):
            if not self.kv_cache:
                raise ValueError(f"bench.decode={self.decode} decodes over a static KV cache, but bench.kv_cache is false: set "
                                 "bench.decode to eager or auto, or bench.kv_cache to true")
            if self.parallel.tensor * self.parallel.pipeline > 1:
                raise ValueError(f"bench.decode={self.decode} is for one device; at parallel.tensor x parallel.pipeline > 1 "
                                 "megatron's engine decodes: set bench.decode to auto or eager")
        if self.decode == "graph" and self.device == "cpu":
            raise ValueError("bench.decode=graph captures a CUDA graph, and bench.device is cpu: use static, compile or auto")
        return self

    @model_validator(mode="after")
    def _shape_and_layout(self):
        m = self.model_block
        if self.model == RANDOM and (m is None or not m.vocab_size):
            raise ValueError("model: random needs model_block with a vocab_size (the shape to plan)")
        tp, pp = self.parallel.tensor, self.parallel.pipeline
        if m is not None:
            from aistack.bench.inference_plan import Shape, tp_problem

            kv = m.num_query_groups or m.num_attention_heads
            problem = tp_problem(Shape(m.arch, m.num_layers, m.hidden_size, m.num_attention_heads, kv, m.ffn_size,
                                       m.vocab_size or 0, m.tied_embeddings, m.seq_length), tp)
            if problem:
                raise ValueError(f"parallel.tensor: {problem}")
            if pp > m.num_layers:
                raise ValueError(f"parallel.pipeline: PP {pp} must be at most the {m.num_layers} layers")
        return self

    @field_validator("batch_sizes", "prompt_lengths", "gen_lengths")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError(f"positive integers (got {values})")
        return values

    def points(self) -> list[dict]:
        """The sweep: precision-major, so one quantized model serves all its points."""
        return [{"precision": p, "batch": b, "prompt_len": s, "gen_len": g}
                for p in self.precisions for b in self.batch_sizes for s in self.prompt_lengths for g in self.gen_lengths]


class BenchRecipe(Recipe):
    kind: Literal["bench"] = "bench"
    bench: BenchConfig

    NON_IDENTITY_KEYS = ()


def plan(loaded: LoadedRecipe) -> list[JobSpec]:
    """One job that loops over the sweep points (BF16 and FP8 x batch x prompt x output length).

    Why one job and not an array of one task per point: a point takes seconds, while loading
    (and exporting, and quantizing) the model and warming the GPU (CUDA context, cuBLAS
    heuristics, allocator) take longer than that; and BF16 vs FP8 are only comparable on the
    same GPU, which one job guarantees and an array spread over nodes does not.
    """
    par = loaded.recipe.bench.parallel
    # TP x PP > 1 (aistack.bench.sharded): one multi-node job, nodes = PP stages, tasks per node = TP.
    res = loaded.recipe.resources.model_copy(update={"nodes": par.pipeline, "tasks_per_node": par.tensor})
    return [JobSpec("bench", "bench_run", 1, res)]


SPEC = KindSpec("bench", BenchRecipe, plan, outputs={"output": "report.md", "csv": "results.csv"}, report="benchmark")

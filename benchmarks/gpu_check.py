"""`make gpu-check`: aistack's GPU paths, run once on one NVIDIA GPU, left behind as one table.

    python benchmarks/gpu_check.py                 # on the GPU machine (make gpu-check sets it up)
    python benchmarks/gpu_check.py --cpu --tiny    # the same script on a CPU: tiny shapes, FP8 emulated
    python benchmarks/gpu_check.py --tiny          # tiny shapes on the GPU: a one-minute smoke

    python benchmarks/gpu_check.py --time-limit 450   # make gpu-check: no section starts after 7.5 min
    python benchmarks/gpu_check.py --only probe,data,bench-8b   # one part of the sweep

Sections (a failing one is recorded in its row and the rest go on; exit 1 if any failed). Every
figure is written to the JSON as soon as it is measured: a run cut off still leaves them.
  probe      30 seconds: C compiler (Triton needs one), triton / transformers versions, a tiny
             torch.compile on the device
  pretrain   recipes/pretrain/gpt-125m.yaml through `aistack run --on local` (submitit task,
             torch.distributed through aistack.model.dist.init as on Slurm), bf16, the shipped kernel
             defaults: tokens/s, TFLOP/s, MFU, peak CUDA memory, loss falling
  baseline   a plain PyTorch GPT-2 of the same shape and batch (SDPA, bf16 autocast), eager (P0)
             and torch.compile'd (P1): the ratios
  train-variants  the training path's kernels side by side (TRAIN_VARIANTS: T0 megatron's local
             attention, T1 + SDPA, T2 + fusions and fused AdamW, T3 + compiled layers), each against
             P0 and P1; which one ships as the default and which was fastest
  resume     the run's mid-way checkpoint resumed: the resumed steps' losses equal the first ones
  layout     its last checkpoint loaded on the CPU at TP=2 (two gloo ranks): the same val loss
  export     `aistack export RUN --to hf`: transformers' logits equal aistack's (fp32, on the GPU)
  bench-125m recipes/bench/gpt-125m-h100.yaml (kind: bench) on the export: BF16 vs FP8
             (torch._scaled_mm, row-wise scales), decode tokens/s at batch 1/8/32, prefill, TTFT,
             memory, HBM roofline fraction, perplexity on held-out text
  bench-8b   decode of a Llama-3-8B-shaped model with random weights at batch 1 and 8, variant
             by variant (gpu_check_models.DECODE_VARIANTS: D0 eager, D1 static KV cache + CUDA
             graph, D2 + torch.compile, D3 + FP8 weight-only, D4 + FP8 W8A8 row-wise)
  nccl       the NCCL communicator the training task created, and its TP=1/PP=1 steps
Data is made here: the tinylang corpus (aistack.eval.tinylang) in Megatron's indexed format,
trained at the 125M shape with the recipe's 50257-token embedding; no download, no W&B.
Checks (must hold) fail the run; goals are reported beside the figures, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import gpu_check_env as env  # noqa: E402

PRETRAIN = REPO / "recipes" / "pretrain" / "gpt-125m.yaml"
BENCH = REPO / "recipes" / "bench" / "gpt-125m-h100.yaml"
TOKENIZER = REPO / "recipes" / "eval" / "tasks" / "tinylang" / "tokenizer.json"
TE_LINE = "Transformer Engine: not installed, megatron-core local spec"


@dataclass(frozen=True)
class Sizes:
    """How much of each section runs: the full ~125M/8B shapes (8 minutes on an H100) or tiny ones."""

    model: tuple[str, ...]  # recipe overrides on top of gpt-125m.yaml
    steps: int  # training steps; checkpoints at steps/2 and steps
    timed_after: int  # steps left out of the medians (warm-up)
    plain_steps: int
    docs: int  # tinylang training documents
    heldout_docs: int
    batches: tuple[int, ...]
    prompt_len: int
    gen_len: int
    repeats: int
    llama: str  # LLAMA3_8B or LLAMA_TINY in gpu_check_models
    llama_gen_len: int
    variant_steps: int  # training steps of each train-variants run


FULL = Sizes(model=(), steps=60, timed_after=10, plain_steps=25, docs=4000, heldout_docs=200, batches=(1, 8, 32),
             prompt_len=128, gen_len=64, repeats=3, llama="LLAMA3_8B", llama_gen_len=32, variant_steps=30)
TINY = Sizes(model=("model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4", "model.seq_length=64",
                    "model.vocab_size=512", "train.micro_batch_size=4", "train.global_batch_size=8", "train.lr=3e-3",
                    "train.min_lr=3e-4"),
             steps=12, timed_after=3, plain_steps=6, docs=400, heldout_docs=20, batches=(1, 8, 32), prompt_len=8, gen_len=4,
             repeats=1, llama="LLAMA_TINY", llama_gen_len=4, variant_steps=6)

# The training path's kernel variants, each adding to the one before (recipe overrides).
TRAIN_VARIANTS = {
    "T0": ("megatron local attention, no fusions", ("model.attention_backend=local", "train.fused=false")),
    "T1": ("+ SDPA attention", ("model.attention_backend=sdpa", "train.fused=false")),
    "T2": ("+ fusions, fused AdamW, prefetch", ("model.attention_backend=sdpa", "train.fused=true")),
    "T3": ("+ each layer compiled", ("model.attention_backend=sdpa", "train.fused=true", "train.compile=true")),
}
COMPILED = {"T2", "T3", "P1"}  # torch.compile on a CPU takes minutes and says nothing of the GPU: GPU only unless asked


@dataclass
class Row:
    section: str
    figure: str
    value: str
    goal: str = ""
    met: bool | None = None  # None: no goal, or not measurable here
    kind: str = "info"  # check: must hold (fails the run) | goal: reported | info


@dataclass
class Check:
    """The state of one gpu-check: where it writes, what earlier sections left for later ones."""

    out: Path
    sizes: Sizes
    gpu: bool
    compile_on_cpu: bool = False
    header: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    rows: list[Row] = field(default_factory=list)
    sections: dict[str, dict] = field(default_factory=dict)
    found: dict[str, Any] = field(default_factory=dict)  # run dirs, folders, figures passed on

    @property
    def json_path(self) -> Path:
        return self.out / "gpu-check.json"

    def report(self, done: bool = False) -> dict[str, Any]:
        return {"header": self.header, "gpu": self.gpu, "sizes": asdict(self.sizes), "complete": done,
                "seconds": round(time.time() - self.started, 1), "ok": all(s.get("ok") is not False for s in self.sections.values()),
                "rows": [asdict(r) for r in self.rows], "sections": self.sections}

    def save(self, done: bool = False) -> None:
        """The JSON as it stands (atomically): called after every figure, so a run the device's
        time limit cuts off still returns what it measured."""
        tmp = self.json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.report(done), indent=1, default=str))
        tmp.replace(self.json_path)

    def figure(self, section: str, key: str, value: Any) -> None:
        self.sections.setdefault(section, {})[key] = value
        self.save()

    def runs_compiled(self) -> bool:
        return self.gpu or self.compile_on_cpu

    @property
    def work(self) -> Path:
        return self.out / "work"

    @property
    def device(self):
        import torch

        return torch.device("cuda" if self.gpu else "cpu")

    def need(self, key: str) -> Any:
        if key not in self.found:
            raise RuntimeError(f"skipped: needs {key}, which an earlier section did not produce")
        return self.found[key]


# --- running aistack -----------------------------------------------------------------------


@contextlib.contextmanager
def _environ(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def tasks_get_the_gpu():
    """aistack's local executor starts its tasks with gpus_per_node=0, which submitit turns into
    CUDA_VISIBLE_DEVICES="" (no GPU). Until it passes the recipe's GPUs, give the task this GPU."""
    from submitit.local import local

    original = local.start_controller
    mine = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]

    def start_controller(*args, cuda_devices: str = "", **kwargs):
        return original(*args, cuda_devices=cuda_devices or mine, **kwargs)

    local.start_controller = start_controller
    try:
        yield
    finally:
        local.start_controller = original


def aistack_run(recipe: Path, overrides: list[str], root: Path, gpu: bool) -> Path:
    """`aistack run RECIPE ... --on local` (the CLI, in this process); the run directory."""
    from aistack.cli import main

    with tasks_get_the_gpu() if gpu else _environ(CUDA_VISIBLE_DEVICES=""):
        code = main(["run", str(recipe), *overrides, f"output.root={root}", "--on", "local"])
    runs = sorted(p.parent for p in root.glob("*/recipe.yaml"))
    if code != 0 or len(runs) != 1:
        tail = _log_tail(runs[0]) if runs else ""
        raise RuntimeError(f"aistack run {recipe.name} exited {code}{': ' + tail if tail else ''}")
    return runs[0]


def _logs(run: Path) -> list[Path]:
    return sorted(p for p in run.glob("jobs/*/logs/*") if p.suffix in (".out", ".err"))


def _log_tail(run: Path, lines: int = 6) -> str:
    errs = [p for p in _logs(run) if p.suffix == ".err"]
    text = errs[-1].read_text(errors="replace").strip().splitlines() if errs else []
    return " | ".join(text[-lines:])


def task_dir(run: Path) -> Path:
    return run / "jobs" / "train" / "tasks" / "00000"


def metrics(run: Path) -> list[dict]:
    from aistack.track.metrics import read_metrics

    return read_metrics(task_dir(run) / "metrics.jsonl")


def trace(records: list[dict], key: str = "loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in records if key in r}


def pretrain_overrides(check: Check, *extra: str) -> list[str]:
    s = check.sizes
    return [f"data.paths=[{{path: {check.need('corpus')}}}]", f"data.tokenizer={TOKENIZER}", "tracking.mode=disabled",
            f"train.steps={s.steps}", f"train.warmup_steps={max(1, s.steps // 6)}", f"train.eval_every={s.steps}",
            "train.eval_steps=1", "train.log_every=1", "train.precision=bf16", f"checkpoint.every={s.steps // 2}",
            "checkpoint.keep=2", *s.model, *extra]


# --- formatting ------------------------------------------------------------------------------


def num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def layout_name(layout: dict) -> str:
    return f"tp{layout['tp']} pp{layout['pp']} dp{layout['dp']}"


def goal(section: str, figure: str, value: float | None, shown: str, target: str, ok: Callable[[float], bool],
         measurable: bool = True) -> Row:
    met = ok(value) if value is not None and measurable else None
    return Row(section, figure, shown, target if measurable else f"{target} (GPU only)", met, "goal")


def check_row(section: str, figure: str, shown: str, target: str, met: bool) -> Row:
    return Row(section, figure, shown, target, bool(met), "check")


# --- sections -----------------------------------------------------------------------------------


def section_probe(check: Check) -> list[Row]:
    """What compiled kernels need, checked in seconds before minutes of GPU time depend on it."""
    import importlib.metadata as md

    import torch

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    cc = next((shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    found = {"c_compiler": cc, "triton": version("triton"), "transformers": version("transformers"),
             "megatron-core": version("megatron-core"), "torch": torch.__version__}
    check.figure("probe", "versions", found)
    compiled, error = None, None
    start = time.perf_counter()
    try:
        f = torch.compile(lambda x: torch.nn.functional.silu(x) * x + 1)
        x = torch.randn(64, 64, device=check.device)
        compiled = bool(torch.allclose(f(x), torch.nn.functional.silu(x) * x + 1, atol=1e-5))
    except Exception as err:  # reported: compiled variants will fail the same way
        error = f"{type(err).__name__}: {str(err)[:200]}"
    seconds = time.perf_counter() - start
    check.figure("probe", "compile", {"ok": compiled, "error": error, "seconds": round(seconds, 2)})
    check.found["compiles"] = bool(compiled)
    return [Row("probe", "C compiler (Triton and inductor need one)", cc or "NONE"),
            Row("probe", "torch / triton / transformers / megatron-core",
                f"{found['torch']} / {found['triton']} / {found['transformers']} / {found['megatron-core']}"),
            Row("probe", f"torch.compile of a tiny function on the {'GPU' if check.gpu else 'CPU'}",
                f"ok in {seconds:.1f} s" if compiled else f"FAILED: {error or 'wrong result'}")]


def section_data(check: Check) -> list[Row]:
    from aistack.eval import tinylang

    data = check.work / "data"
    corpus = tinylang.write_corpus(data / "tinylang", num_docs=check.sizes.docs)
    heldout = data / "heldout.jsonl"
    heldout.write_text("".join(json.dumps(d) + "\n" for d in tinylang.ppl_docs(n=check.sizes.heldout_docs)))
    check.found.update(corpus=corpus, heldout=heldout)
    return [Row("data", "tinylang corpus (Megatron indexed) + held-out text", f"{check.sizes.docs} docs, {check.sizes.heldout_docs} held out")]


def section_pretrain(check: Check) -> list[Row]:
    s = check.sizes
    if check.gpu:
        os.environ.setdefault("NCCL_DEBUG", "VERSION")  # the task's log then names the NCCL it initialised
    run = aistack_run(PRETRAIN, pretrain_overrides(check), check.work / "runs" / "pretrain", check.gpu)
    records = metrics(run)
    check.found.update(run=run, loss=trace(records), val_loss=trace(records, "val_loss"))
    kernels = json.loads((task_dir(run) / "DONE").read_text())["result"]["kernels"]
    timed = [r for r in records if "step_time" in r and r["step"] > s.timed_after]
    if not timed:
        raise RuntimeError(f"no timed steps in {task_dir(run) / 'metrics.jsonl'}")

    def median(key: str) -> float | None:
        values = [r[key] for r in timed if key in r]
        return statistics.median(values) if values else None

    loss = check.found["loss"]
    first, last = loss[1], statistics.mean([loss[k] for k in sorted(loss)[-5:]])
    mem = max((r.get("mem_allocated_gb", 0.0) for r in timed), default=None) if check.gpu else None
    figures = {"tokens_per_s": median("tokens_per_s"), "tflops": median("tflops_per_device"), "mfu": median("mfu"),
               "peak_mem_gib": mem, "loss_first": first, "loss_last5": last, "steps": len(loss), "timed_steps": len(timed),
               "kernels": kernels}
    check.found["megatron"] = figures
    check.sections["pretrain"] = figures
    sec = "pretrain"
    return [
        Row(sec, f"megatron-core tokens/s (median of {len(timed)} steps), shipped defaults: {_kernels(kernels)}",
            num(figures["tokens_per_s"])),
        Row(sec, "megatron-core TFLOP/s per GPU", num(figures["tflops"])),
        goal(sec, "megatron-core MFU (bf16 dense peak)", figures["mfu"], pct(figures["mfu"]), ">= 35% (H100)",
             lambda v: v >= 0.35, check.gpu),
        Row(sec, "megatron-core peak CUDA memory", "n/a (CPU)" if mem is None else f"{mem:.2f} GiB"),
        check_row(sec, "training loss: step 1 -> mean of last 5", f"{first:.3f} -> {last:.3f}", "decreases", last < first - 0.05),
    ]


def _kernels(kernels: dict) -> str:
    return f"{kernels['attention']} attention" + (", fused" if kernels["fused"] else "") + (", compiled" if kernels["compile"] else "")


def _shape_of(check: Check):
    from aistack.model.layout import padded_vocab_size
    from aistack.recipe import load_recipe

    recipe = load_recipe(str(PRETRAIN), pretrain_overrides(check, "output.root=unused")).recipe
    m = recipe.model
    vocab = padded_vocab_size(m.vocab_size, m, 1)  # as megatron pads it (TP=1)
    return recipe, vocab, dict(vocab=vocab, h=m.hidden_size, heads=m.num_attention_heads, ffn=m.ffn_size, layers=m.num_layers,
                               seq=m.seq_length)


def section_baseline(check: Check) -> list[Row]:
    from aistack import hardware
    from aistack.model.flops import num_floating_point_operations

    from gpu_check_models import train_plain_gpt2

    s = check.sizes
    recipe, vocab, shape = _shape_of(check)
    m, t = recipe.model, recipe.train
    gpu = hardware.current()
    flops_per_token = num_floating_point_operations(m, vocab, 1) / m.seq_length  # the convention training logs with
    ours = check.found.get("megatron", {}).get("tokens_per_s")
    sec = "baseline"
    rows = []
    for key, compiled in (("P0", False), ("P1", True)):
        what = f"plain PyTorch GPT-2{' + torch.compile' if compiled else ''} ({key})"
        if compiled and not check.runs_compiled():
            rows.append(Row(sec, f"{what} tokens/s", "not run on the CPU (GPU only)"))
            continue
        plain = train_plain_gpt2(shape, t.micro_batch_size, t.global_batch_size, s.plain_steps,
                                 min(s.timed_after, s.plain_steps // 2), t.lr, check.device, compiled=compiled)
        plain["tflops"] = flops_per_token * plain["tokens_per_s"] / 1e12
        plain["mfu"] = plain["tflops"] / gpu.tflops["bf16"] if gpu else None
        plain["ratio_megatron_over_plain"] = ours / plain["tokens_per_s"] if ours else None
        check.found[key] = plain["tokens_per_s"]
        if key == "P0":
            check.sections[sec] = dict(plain)  # the P0 figures at the top level, as before
        check.figure(sec, key, plain)
        mem = plain["peak_mem_gib"]
        rows += [
            Row(sec, f"{what} tokens/s (SDPA, bf16 autocast, {t.micro_batch_size}x{t.global_batch_size // t.micro_batch_size} "
                     f"x {m.seq_length})", num(plain["tokens_per_s"])
                + (f" (first step, compiling: {plain['first_step_s']:.1f} s)" if compiled else "")),
            Row(sec, f"{what} TFLOP/s, MFU; peak CUDA memory",
                f"{num(plain['tflops'])}, {pct(plain['mfu'])}; " + ("n/a (CPU)" if mem is None else f"{mem:.2f} GiB")),
        ]
        target, bound = (">= 1.0", 1.0) if key == "P0" else (">= 0.9", 0.9)
        rows.append(goal(sec, f"megatron-core (shipped defaults) / {key} tokens/s", plain["ratio_megatron_over_plain"],
                         num(plain["ratio_megatron_over_plain"]), target, lambda v, b=bound: v >= b, check.gpu))
    return rows


def section_train_variants(check: Check) -> list[Row]:
    """T0-T3 side by side, each a short `aistack run` of the same recipe; the shipped defaults'
    run (section pretrain) stands for the variant it equals."""
    s = check.sizes
    sec = "train-variants"
    shipped = check.found.get("megatron", {})
    rows, speeds = [], {}
    for key, (what, overrides) in TRAIN_VARIANTS.items():
        if key in COMPILED and not check.runs_compiled():
            rows.append(Row(sec, f"{key} {what}", "not run on the CPU (GPU only)"))
            continue
        kernels = shipped.get("kernels")
        if kernels and _matches(kernels, overrides):
            figures = {k: shipped[k] for k in ("tokens_per_s", "mfu")} | {"from": "pretrain (shipped defaults)", "kernels": kernels}
        else:
            steps = s.variant_steps
            extra = (*overrides, f"train.steps={steps}", f"checkpoint.every={steps}", f"train.eval_every={steps}")
            run = aistack_run(PRETRAIN, pretrain_overrides(check, *extra), check.work / "runs" / f"train-{key}", check.gpu)
            records = [r for r in metrics(run) if "step_time" in r and r["step"] > steps // 3]
            figures = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
                       "mfu": statistics.median(r["mfu"] for r in records) if all("mfu" in r for r in records) else None,
                       "timed_steps": len(records), "first_step_s": next(r["step_time"] for r in metrics(run) if "step_time" in r),
                       "kernels": json.loads((task_dir(run) / "DONE").read_text())["result"]["kernels"]}
        speeds[key] = figures["tokens_per_s"]
        check.figure(sec, key, figures)
        vs = [f"x{figures['tokens_per_s'] / check.found[p]:.2f} of {p}" for p in ("P0", "P1") if check.found.get(p)]
        rows.append(Row(sec, f"{key} {what}: tokens/s, MFU",
                        f"{num(figures['tokens_per_s'])}, {pct(figures['mfu'])}" + (f" ({', '.join(vs)})" if vs else "")))
    if speeds:
        fastest = max(speeds, key=speeds.get)
        default = next((k for k, (_, o) in TRAIN_VARIANTS.items() if shipped.get("kernels") and _matches(shipped["kernels"], o)),
                       None)
        check.figure(sec, "choice", {"shipped_default": default, "fastest": fastest})
        rows.append(goal(sec, "shipped default (train.fused auto, compile off) vs the fastest variant",
                         1.0 if default == fastest else 0.0, f"default {default}, fastest {fastest}", "default is fastest",
                         lambda v: v == 1.0, check.gpu))
    return rows


def _matches(kernels: dict, variant: tuple[str, ...]) -> bool:
    """Whether a run's kernels (the task result's) are those the variant's overrides ask for."""
    overrides = dict(o.split("=", 1) for o in variant)
    want = {"attention": overrides.get("model.attention_backend", "sdpa"), "fused": overrides.get("train.fused") == "true",
            "compile": overrides.get("train.compile") == "true"}
    return kernels == want


def section_resume(check: Check) -> list[Row]:
    run, full = check.need("run"), check.need("loss")
    steps, half = check.sizes.steps, check.sizes.steps // 2
    task = task_dir(run)
    # Interrupted after the mid-way checkpoint: the last one gone, the task not done.
    shutil.rmtree(task / "checkpoints" / f"step_{steps:06d}")
    (task / "checkpoints" / "latest").write_text(f"step_{half:06d}\n")
    (task / "DONE").unlink()
    again = aistack_run(PRETRAIN, pretrain_overrides(check), check.work / "runs" / "pretrain", check.gpu)
    if again != run:
        raise RuntimeError(f"the rerun went to {again}, not {run}")
    resumed = trace(metrics(run))
    logged = any(f"resuming from step {half}" in p.read_text(errors="replace") for p in _logs(run))
    compared = range(half + 1, steps + 1)
    equal = sum(resumed.get(k) == full[k] for k in compared)
    worst = max(abs(resumed.get(k, float("inf")) - full[k]) for k in compared)
    check.found["val_loss"] = trace(metrics(run), "val_loss")
    check.sections["resume"] = {"from_step": half, "equal": equal, "compared": len(compared), "max_abs_diff": worst,
                                "resume_logged": logged}
    return [check_row("resume", f"resumed at step {half} ({'logged' if logged else 'NOT logged'}): losses of steps {half + 1}-{steps}",
                      f"{equal}/{len(compared)} equal (max |diff| {worst:.3g})", "bit-exact", equal == len(compared) and logged)]


def section_layout(check: Check) -> list[Row]:
    run, val = check.need("run"), check.need("val_loss")
    steps = check.sizes.steps
    ckpts = task_dir(run) / "checkpoints"
    extra = (f"checkpoint.load={ckpts}", "checkpoint.load_optimizer=true", "parallel.tensor=2",
             "resources.tasks_per_node=2", "resources.gpus_per_node=0")
    half_the_cores = str(max(1, (os.cpu_count() or 2) // 2))  # two ranks share the host
    with _environ(OMP_NUM_THREADS=half_the_cores):
        cpu_run = aistack_run(PRETRAIN, pretrain_overrides(check, *extra), check.work / "runs" / "cpu-tp2", gpu=False)
    result = json.loads((task_dir(cpu_run) / "DONE").read_text())["result"]
    cpu_val = trace(metrics(cpu_run), "val_loss")[steps]
    rel = abs(cpu_val / val[steps] - 1)
    check.sections["layout"] = {"layout": result["layout"], "val_loss_cpu": cpu_val, "val_loss_saved_run": val[steps], "rel": rel}
    where = "GPU" if check.gpu else "first"
    return [check_row("layout", f"step-{steps} checkpoint on CPU at TP=2 (gloo): val loss vs the {where} run",
                      f"{cpu_val:.4f} vs {val[steps]:.4f} (rel {rel:.2g}), {layout_name(result['layout'])}", "rel <= 1%",
                      rel <= 0.01 and result["layout"]["tp"] == 2)]


def section_export(check: Check) -> list[Row]:
    from aistack.cli import main

    from gpu_check_models import compare_logits

    run = check.need("run")
    hf_dir = check.work / "hf"
    code = main(["export", str(run), "--to", "hf", "--out", str(hf_dir)])
    if code != 0:
        raise RuntimeError(f"aistack export exited {code}")
    check.found["hf"] = hf_dir
    cmp = compare_logits(run, hf_dir, check.device)
    check.sections["export"] = {"folder": str(hf_dir), "files": sorted(p.name for p in hf_dir.iterdir()), **cmp}
    on = "GPU" if check.gpu else "CPU"
    return [
        Row("export", "aistack export --to hf", f"{cmp['architecture']}, vocab {cmp['vocab']}, {hf_dir.name}/"),
        check_row("export", f"transformers vs aistack (megatron) logits, fp32 on the {on}",
                  f"max |diff| {cmp['max_abs_diff']:.2g} (rel {cmp['rel_diff']:.2g}), argmax agree {pct(cmp['argmax_agree'])}",
                  "rel <= 1e-3", cmp["rel_diff"] <= 1e-3 and cmp["argmax_agree"] >= 0.99),
    ]


def section_bench_125m(check: Check) -> list[Row]:
    s = check.sizes
    model = check.found.get("hf") or check.need("run")  # the bench exports a run itself
    overrides = [f"bench.model={model}", "tracking.mode=disabled", f"bench.batch_sizes=[{','.join(map(str, s.batches))}]",
                 f"bench.prompt_lengths=[{s.prompt_len}]", f"bench.gen_lengths=[{s.gen_len}]", f"bench.repeats={s.repeats}",
                 "bench.warmup=1", "bench.quality.task=null", f"bench.quality.text={check.need('heldout')}",
                 f"bench.quality.max_docs={s.heldout_docs}"]
    if not check.gpu:
        overrides += ["bench.device=cpu", "bench.fp8.backend=emulate"]
    run = aistack_run(BENCH, overrides, check.work / "runs" / "bench", check.gpu)
    results = json.loads((run / "results.json").read_text())
    points = {(r["precision"], r["batch"]): r for r in results["rows"]}
    quality = results["quality"]
    check.sections["bench-125m"] = {"fp8": results["fp8"], "roofline_device": results.get("roofline_device"),
                                    "points": results["rows"], "quality": quality}
    name = "125M" if check.sizes is FULL else "tiny GPT-2"
    return bench_rows("bench-125m", name, points, results["fp8"], check, quality=quality)


def section_bench_8b(check: Check) -> list[Row]:
    """The decode variants of models.DECODE_VARIANTS (D0 eager ... D4 FP8 W8A8) side by side for
    the Llama-3-8B shape at batch 1 and 8, each figure saved as soon as it is measured."""
    import gpu_check_models as models

    s = check.sizes
    sec = "bench-8b"
    batches = [b for b in s.batches if b in (1, 8)]
    out = models.llama_decode_bench(getattr(models, s.llama), check.device, batches, s.prompt_len, s.llama_gen_len, s.repeats,
                                    warmup=1, on_figure=lambda key, value: check.figure(sec, key, value),
                                    compiled=check.runs_compiled())
    for key in ("shape", "fp8", "logits_rel_error", "roofline_device", "prompt_len", "gen_len", "batches"):
        check.figure(sec, key, out[key])
    name = "8B" if s.llama == "LLAMA3_8B" else "tiny Llama"
    fig = out["variants"]
    fp8 = out["fp8"]
    rows = [Row(sec, f"{name} decode, prompt {s.prompt_len}, {s.llama_gen_len} new tokens",
                f"FP8 W8A8: {fp8['backend'] + (' (EMULATED)' if fp8['emulated'] else '') if fp8 else 'n/a'}; "
                f"roofline: {out['roofline_device'] or 'n/a'}")]
    for batch in batches:
        for key, (decode, _, what) in models.DECODE_VARIANTS.items():
            f = fig.get(f"{key}/batch{batch}", {"status": "not run"})
            figure = f"{name} {key} {what}, batch {batch}"
            if f["status"] == "error":
                rows.append(check_row(sec, figure, f["error"], "runs", False))
            elif f["status"] != "ok":
                rows.append(Row(sec, figure, f["status"]))
            else:
                same = {True: ", tokens = D0's", False: ", tokens differ from D0's", None: ""}[f["tokens_match_eager"]]
                setup = f", {'capture' if decode == 'graph' else 'compile'} {f['setup_s']:.1f} s" if f["setup_s"] else ""
                if decode == "compile" and check.gpu and not f["cuda_graph"]:
                    setup += " (CUDA graphs skipped: see the log)"
                rows.append(Row(sec, figure, f"{num(f['decode_tok_s'])} tok/s, {num(f['step_ms'])} ms/step, "
                                             f"{pct(f['decode_roofline_frac'])} of HBM roofline{setup}{same}"))

    def speed(key: str, batch: int) -> float | None:
        return fig.get(f"{key}/batch{batch}", {}).get("decode_tok_s")

    def ratio(a: str, b: str, batch: int) -> float | None:
        return speed(a, batch) / speed(b, batch) if speed(a, batch) and speed(b, batch) else None

    def times(r: float | None) -> str:
        return "n/a" if r is None else f"x{num(r)}"

    real = bool(fp8) and not fp8["emulated"]
    if 1 in batches:
        fracs = [fig.get(f"{k}/batch1", {}).get("decode_roofline_frac") for k in ("D1", "D2")]
        best = max((v for v in fracs if v), default=None)
        rows.append(goal(sec, f"{name} BF16 decode (best of D1, D2), fraction of HBM roofline, batch 1", best, pct(best),
                         ">= 60%", lambda v: v >= 0.6, check.gpu))
        r = ratio("D3", "D2", 1)
        rows.append(goal(sec, f"{name} FP8 weight-only (D3) vs BF16 (D2) decode, batch 1", r, times(r), ">= 1.4x",
                         lambda v: v >= 1.4, check.gpu and real))
    if 8 in batches:
        r = ratio("D4", "D2", 8)
        rows.append(goal(sec, f"{name} FP8 W8A8 (D4) vs BF16 (D2) decode, batch 8", r, times(r), ">= 1.2x",
                         lambda v: v >= 1.2, check.gpu and real))
    for mode, rel in out["logits_rel_error"].items():
        rows.append(Row(sec, f"{name} FP8 {mode} vs BF16 logits (random weights: no text to score)", f"rel. error {rel:.3g}"))
    return rows


def bench_rows(sec: str, name: str, points: dict, fp8: dict, check: Check, quality: dict | None = None,
               speedup_goal: bool = False) -> list[Row]:
    """BF16 vs FP8 per batch of a bench run's results (points keyed (precision, batch)): the
    FP8 mode and the decode mode each point ran, and perplexity per FP8 mode."""
    w8a8 = "EMULATED (quantize-dequantize)" if fp8["emulated"] else f"{fp8['backend']}, {fp8['scaling']}-wise scales"
    modes = ", ".join(fp8.get("modes") or []) or "-"
    rows = [Row(sec, f"{name} FP8 path", f"modes {modes}; W8A8 {w8a8}; {fp8['layers']} Linear layers")]
    for batch in check.sizes.batches:
        bf16, f8 = points[("bf16", batch)], points[("fp8", batch)]
        speedup = f8["decode_tok_s"] / bf16["decode_tok_s"] if bf16["decode_tok_s"] and f8["decode_tok_s"] else None
        shown = (f"bf16 {num(bf16['decode_tok_s'])} ({bf16.get('decode', 'eager')}), fp8 {num(f8['decode_tok_s'])} "
                 f"({f8.get('fp8_mode', '-')}, {f8.get('decode', 'eager')}) (x{num(speedup)})")
        figure = f"{name} decode tokens/s, batch {batch}"
        target = {1: 1.4, 8: 1.2}.get(batch)
        if speedup_goal and target:
            real = check.gpu and (not fp8["emulated"] or f8.get("fp8_mode") == "weight_only")
            rows.append(goal(sec, figure, speedup, shown, f"fp8 >= {target}x bf16", lambda v, t=target: v >= t, real))
        else:
            rows.append(Row(sec, figure, shown))
        rows.append(Row(sec, f"{name} prefill / TTFT ms, batch {batch}",
                        f"bf16 {num(bf16['prefill_ms'])} / {num(bf16['ttft_ms'])}, fp8 {num(f8['prefill_ms'])} / {num(f8['ttft_ms'])}"))
    for batch in check.sizes.batches[:2]:
        frac = points[("bf16", batch)].get("decode_roofline_frac")
        rows.append(goal(sec, f"{name} BF16 decode, fraction of HBM roofline, batch {batch}", frac, pct(frac), ">= 60%",
                         lambda v: v >= 0.6, check.gpu))
    peak = {p: max(points[(p, b)]["peak_mem_mb"] for b in check.sizes.batches) for p in ("bf16", "fp8")}
    kind = points[("bf16", check.sizes.batches[0])].get("peak_mem_kind", "")
    rows.append(Row(sec, f"{name} peak memory ({kind or 'cuda max allocated'})", f"bf16 {peak['bf16'] / 1024:.2f} GiB, fp8 {peak['fp8'] / 1024:.2f} GiB"))
    if quality:
        per_mode = [k for k in quality if k.startswith("fp8_") and k != "fp8_mode"] or ["fp8"]
        for key in per_mode:
            rel = quality[f"delta_{key}_minus_bf16"]["text_perplexity_rel"]
            ppl = quality["bf16"]["text_perplexity"], quality[key]["text_perplexity"]
            mode = key.removeprefix("fp8_") if key != "fp8" else ""
            rows.append(goal(sec, f"{name} perplexity on held-out text, FP8 {mode} vs BF16".replace("  ", " "), abs(rel),
                             f"{ppl[0]:.4g} -> {ppl[1]:.4g} ({100 * rel:+.2f}%)", "within 1%", lambda v: v <= 0.01))
    return rows


def section_nccl(check: Check) -> list[Row]:
    run = check.need("run")
    result = json.loads((task_dir(run) / "DONE").read_text())["result"]
    layout_ok = result["layout"] == {"tp": 1, "pp": 1, "dp": 1} and result["steps"] == check.sizes.steps
    rows = [check_row("nccl", "training task: TP=1/PP=1 steps through megatron's schedule",
                      f"{result['steps']} steps, {layout_name(result['layout'])}", f"{check.sizes.steps} steps, tp1 pp1 dp1", layout_ok)]
    if not check.gpu:
        rows.append(Row("nccl", "torch.distributed backend of the training task", "gloo (CPU run; NCCL needs a GPU)"))
        return rows
    lines = [line for p in _logs(run) for line in p.read_text(errors="replace").splitlines() if "NCCL version" in line]
    check.sections["nccl"] = {"lines": lines[:4], "result_layout": result["layout"]}
    shown = lines[0].split("NCCL version", 1)[1].strip() if lines else "no NCCL line in the task log"
    rows.append(check_row("nccl", "NCCL initialised by the task (submitit env -> aistack.model.dist.init, as on Slurm)",
                          f"NCCL {shown}", "NCCL used", bool(lines)))
    return rows


SECTIONS: list[tuple[str, Callable[[Check], list[Row]]]] = [
    # the speed sweeps first: a run the device's time limit cuts off has measured them
    ("probe", section_probe), ("data", section_data), ("pretrain", section_pretrain), ("baseline", section_baseline),
    ("train-variants", section_train_variants), ("bench-8b", section_bench_8b), ("resume", section_resume),
    ("layout", section_layout), ("export", section_export), ("bench-125m", section_bench_125m), ("nccl", section_nccl),
]


# --- the table ----------------------------------------------------------------------------------


def run_sections(check: Check, only: list[str] | None = None, time_limit: float | None = None) -> None:
    for name, func in SECTIONS:
        if only and name not in only:
            continue
        if time_limit is not None and time.time() - check.started > time_limit:
            check.sections[name] = {"ok": None, "error": None, "skipped": f"time limit {time_limit:.0f} s reached"}
            check.rows.append(Row(name, "skipped", f"time limit {time_limit:.0f} s reached before it started"))
            check.save()
            continue
        start = time.time()
        print(f"\n=== gpu-check section {name}", flush=True)
        try:
            rows = func(check)
            error = None
        except Exception as err:  # recorded in its row; the other sections still run
            traceback.print_exc()
            error = f"{type(err).__name__}: {err}"
            rows = [Row(name, "ERROR", error[:400], "section runs", False, "check")]
        seconds = time.time() - start
        ok = error is None and all(r.met is not False for r in rows if r.kind == "check")
        check.sections.setdefault(name, {}).update(ok=ok, error=error, seconds=round(seconds, 1))
        check.rows += rows
        check.save()
        print(f"=== gpu-check section {name}: {'ok' if ok else 'FAILED'} ({seconds:.0f} s)", flush=True)


def table(rows: list[Row]) -> str:
    marks = {True: "yes", False: "NO", None: ""}
    cells = [("section", "figure", "value", "goal / check", "met")]
    cells += [(r.section, r.figure, r.value, r.goal, marks[r.met]) for r in rows]
    widths = [min(max(len(c[i]) for c in cells), cap) for i, cap in enumerate((14, 72, 60, 24, 3))]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(c, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def header(check: Check, how_aistack: str) -> list[str]:
    import torch

    from aistack.model.gpt import te_available

    device = torch.cuda.get_device_name() if check.gpu else f"CPU ({torch.get_num_threads()} threads)"
    te = TE_LINE if not te_available() else "Transformer Engine: installed (its layers where the GPU has them)"
    mode = "tiny shapes" if check.sizes is TINY else "~125M and Llama-3-8B shapes"
    return [f"device: {device}", f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python {sys.version.split()[0]}; "
            f"aistack {how_aistack}", te, f"mode: {mode}" + ("" if check.gpu else ", FP8 emulated on the CPU")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (the CI smoke; FP8 emulated)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes instead of ~125M and Llama-3-8B")
    parser.add_argument("--out", type=Path, default=None, help="where the JSON and work files go (default: runs/gpu-check[-cpu])")
    parser.add_argument("--preflight", action="store_true", help="only check for a GPU (exit 3 without one)")
    parser.add_argument("--wheel-specs", action="store_true", help="print name==version of the wheels the GPU machine needs")
    parser.add_argument("--check-imports", action="store_true", help="import the check path's modules; list what fails")
    parser.add_argument("--simulate-image", action="store_true", help="hide installed packages the GPU image lacks (tests)")
    parser.add_argument("--only", default="", help=f"comma-separated sections to run (default all): {', '.join(n for n, _ in SECTIONS)}")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds after which no further section starts (the rest are listed as skipped)")
    parser.add_argument("--compile-on-cpu", action="store_true", help="with --cpu: also run the torch.compile variants")
    args = parser.parse_args(argv)
    only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(only) - {n for n, _ in SECTIONS})
    if unknown:
        parser.error(f"--only: no section {', '.join(unknown)} (sections: {', '.join(n for n, _ in SECTIONS)})")

    if args.simulate_image:
        env.simulate_image()
    if args.wheel_specs:
        print("\n".join(env.wheel_specs()))
        return 0
    if args.check_imports:
        env.ensure_aistack(REPO, REPO / ".gpu-site" / "src")
        problems = env.wheel_problems() + env.import_problems()
        print("\n".join(problems) if problems else f"all {len(env.CHECK_PATH_MODULES)} modules of the check path import")
        return 1 if problems else 0
    if not args.cpu:
        problem = env.gpu_problem()
        if problem:
            print(env.no_gpu_message(problem), file=sys.stderr)
            return env.NO_GPU_EXIT
        if args.preflight:
            print("gpu-check preflight: a GPU is visible")
            return 0
    how_aistack = env.ensure_aistack(REPO, REPO / ".gpu-site" / "src")
    from aistack import lean_imports

    lean_imports.install()  # as in every task: megatron imports without compiling or wandb
    missing = env.import_problems()
    if missing:  # fail in seconds, not after minutes of GPU time
        print("gpu-check: modules missing (run `make gpu-wheels` where there is an index, bring gpu-wheels/):\n  "
              + "\n  ".join(missing), file=sys.stderr)
        return 2

    out = args.out or REPO / "runs" / ("gpu-check-cpu" if args.cpu else "gpu-check")
    check = Check(out=out.resolve(), sizes=TINY if args.tiny else FULL, gpu=not args.cpu, compile_on_cpu=args.compile_on_cpu)
    shutil.rmtree(check.work, ignore_errors=True)  # a rerun measures again instead of finding DONE runs
    check.work.mkdir(parents=True)
    lines = check.header = header(check, how_aistack)
    print("\n".join(lines), flush=True)
    check.save()
    run_sections(check, only, args.time_limit)
    check.save(done=True)
    report, path = check.report(done=True), check.json_path
    print("\n" + "\n".join(lines))
    print(table(check.rows))
    failed = [n for n, s in check.sections.items() if s.get("ok") is False]
    skipped = [n for n, s in check.sections.items() if s.get("skipped")]
    if skipped:
        print(f"skipped (time limit): {', '.join(skipped)}")
    print(f"\n{'all sections ok' if not failed else 'FAILED: ' + ', '.join(failed)}; {report['seconds']:.0f} s; JSON: {path}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())

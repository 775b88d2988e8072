"""The benchmark job, top to bottom: model -> BF16 and FP8 copies -> quality -> timed sweep -> report.

Each point runs its FP8 mode (bench.fp8.mode, per batch size) and its decode mode
(bench.decode, aistack.bench.decode); both are in its row. Quality is measured for every
FP8 mode the sweep runs.

An aistack checkpoint is exported to a transformers folder first (model.export_hf: the
same logits), so generation uses the KV cache of transformers' models and FP8 swaps their
nn.Linear layers; an HF folder is used as is.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

import torch

from aistack import hardware
from aistack.bench import decode as decode_lib
from aistack.bench import fp8 as fp8_lib
from aistack.bench.generate import time_point
from aistack.bench.quality import quality_of
from aistack.bench.results import plot_throughput, write_markdown, write_table
from aistack.bench.roofline import ModelShape, bounds, device_spec


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench.device=cuda but no GPU is visible here")
    return torch.device("cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu")


def hf_folder(cfg: Any, work_dir: Path) -> Path:
    from aistack.eval.evaluator import export_for_hf

    source = _source(cfg)
    return source.path if source.format == "hf" else export_for_hf(source, work_dir / "hf")


def _source(cfg: Any):
    from aistack.eval.source import describe

    model = cfg.model_block.model_dump() if cfg.model_block is not None else None
    return describe(cfg.model, model=model, tokenizer=cfg.tokenizer)


def chat_tokenizer(cfg: Any, folder: Path) -> Path | None:
    """The tokenizer whose chat template renders a chat data task's prompts: the one the
    evaluation uses (bench.tokenizer, else the run's), else the model folder's."""
    tok = _source(cfg).tokenizer
    return tok if tok is not None else (folder / "tokenizer.json" if (folder / "tokenizer.json").is_file() else None)


def load(folder: Path, cfg: Any, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = (PreTrainedTokenizerFast(tokenizer_file=cfg.tokenizer) if cfg.tokenizer else AutoTokenizer.from_pretrained(str(folder)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).to(device).eval()
    return model, tokenizer


def run_bench(cfg: Any, work_dir: str | Path, out_dir: str | Path, log: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    from aistack.eval.tasks import set_offline

    if cfg.model == "random":
        raise ValueError("bench: the job runs from a checkpoint; model: random is for `aistack plan` only")
    if cfg.parallel.tensor * cfg.parallel.pipeline > 1:  # sharded generation over the job's ranks
        from aistack.bench.sharded import run_sharded_bench

        return run_sharded_bench(cfg, work_dir, out_dir, log)
    set_offline(cfg.offline)
    work, out = Path(work_dir), Path(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    folder = hf_folder(cfg, work)
    base, tokenizer = load(folder, cfg, device)
    models = {}
    quant = None
    fp8_modes = sorted({cfg.fp8.mode_at(b) for b in cfg.batch_sizes}, key=fp8_lib.MODES.index)
    for precision in cfg.precisions:
        if precision == "bf16":
            models["bf16"] = base
        else:  # one FP8 copy for every mode: the points switch it (fp8.set_mode)
            models["fp8"] = copy.deepcopy(base)
            quant = fp8_lib.quantize_model(models["fp8"], cfg.fp8.scaling, fp8_modes[0], cfg.fp8.backend, cfg.fp8.skip)
    max_len = getattr(base.config, "max_position_embeddings", None) or getattr(base.config, "n_positions")
    for p in cfg.points():
        if p["prompt_len"] + p["gen_len"] > max_len:
            raise ValueError(f"bench: prompt_len {p['prompt_len']} + gen_len {p['gen_len']} exceeds the model's {max_len} positions")
    for p in cfg.points():  # a decode mode this machine cannot run fails now, not after the quality runs
        decode_lib.resolve(cfg.decode, device, cfg.kv_cache, cfg.fp8.mode_at(p["batch"]) if p["precision"] == "fp8" else None)

    # Quality of every FP8 mode the sweep runs, each against BF16.
    scored = {"bf16": base} if "bf16" in models else {}
    scored.update({f"fp8_{m}": models["fp8"] for m in fp8_modes if "fp8" in models})

    def prepare(name: str) -> None:
        if name.startswith("fp8_"):
            fp8_lib.set_mode(models["fp8"], name.removeprefix("fp8_"))

    quality = quality_of(scored, tokenizer, cfg.quality, max_len, tokenizer.eos_token_id, chat_tokenizer(cfg, folder), prepare)

    spec = device_spec()
    shape = ModelShape.of_hf(base)
    fp8_real = quant is not None and not quant.emulated
    rows = []
    for i, point in enumerate(cfg.points()):
        start = time.time()
        fp8_mode = cfg.fp8.mode_at(point["batch"]) if point["precision"] == "fp8" else None
        if fp8_mode:
            fp8_lib.set_mode(models["fp8"], fp8_mode)
        decode = decode_lib.resolve(cfg.decode, device, cfg.kv_cache, fp8_mode)
        timing = time_point(models[point["precision"]], len(tokenizer), point["batch"], point["prompt_len"], point["gen_len"],
                            cfg.repeats, cfg.warmup, cfg.kv_cache, seed=cfg.seed, decode=decode)
        bound = bounds(shape, spec, point["precision"], point["batch"], point["prompt_len"], point["gen_len"], fp8_real)
        row = {**point, **timing, "fp8_mode": fp8_mode or "-", "fp8_backend": _fp8_backend(fp8_mode, quant),
               "decode_tok_s_bound": bound["decode_tok_s_bound"],
               "prefill_ms_bound": bound["prefill_s_bound"] * 1e3 if bound["prefill_s_bound"] else None}
        row["decode_roofline_frac"] = (row["decode_tok_s"] / row["decode_tok_s_bound"]) if row["decode_tok_s_bound"] and row["decode_tok_s"] else None
        row["prefill_roofline_frac"] = (row["prefill_ms_bound"] / row["prefill_ms"]) if row["prefill_ms_bound"] else None
        rows.append(row)
        if log:
            log(i, {f"{point['precision']}/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        print(f"point {i + 1}/{len(cfg.points())} {point}: {row['decode_tok_s']} tok/s, decode {decode}"
              f"{', fp8 ' + fp8_mode if fp8_mode else ''} ({time.time() - start:.1f}s)", flush=True)

    meta = {
        "model": str(cfg.model), "hf_folder": str(folder), "device": hardware.device_name(device),
        "roofline_device": spec.name if spec else None, "kv_cache": cfg.kv_cache, "repeats": cfg.repeats, "decode": cfg.decode,
        "fp8": ({**quant.as_dict(), "modes": fp8_modes, "mode": cfg.fp8.mode, "weight_only_max_batch": cfg.fp8.weight_only_max_batch}
                if quant else {"backend": "-", "emulated": False, "scaling": "-", "modes": [], "layers": 0, "skipped": []}),
        "quality": quality, "shape": shape.__dict__,
    }
    csv_path, json_path = write_table(out, rows, meta)
    plot = plot_throughput(out, rows, f"{Path(str(cfg.model)).name} on {meta['device']}"
                           + (" (FP8 emulated)" if meta["fp8"]["emulated"] else ""))
    report = write_markdown(out, rows, meta)
    return {"csv": str(csv_path), "json": str(json_path), "plot": str(plot), "report": str(report), "points": len(rows),
            "fp8": meta["fp8"], "quality": quality}


def _fp8_backend(mode: str | None, quant: fp8_lib.QuantReport | None) -> str:
    """How a point's FP8 matmuls ran: weight-only is the same BF16 matmul everywhere; W8A8 is
    real (scaled_mm) or emulated."""
    if mode is None or quant is None:
        return "-"
    return "bf16 matmul" if mode == "weight_only" else quant.as_dict()["backend"]

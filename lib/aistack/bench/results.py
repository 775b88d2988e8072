"""The benchmark's outputs in the run directory: results.csv/json, report.md, throughput.png."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from aistack.rundir import atomic_write_json, atomic_write_text

COLUMNS = ["precision", "fp8_mode", "fp8_backend", "decode", "batch", "prompt_len", "gen_len", "prefill_ms", "ttft_ms", "decode_tok_s",
           "prefill_tok_s", "throughput_tok_s", "e2e_p50_ms", "e2e_p90_ms", "e2e_p99_ms", "peak_mem_mb", "peak_mem_kind",
           "kv_cache", "decode_tok_s_bound", "decode_roofline_frac", "prefill_ms_bound", "prefill_roofline_frac", "setup_s", "cuda_graph",
           "tokens_digest", "repeats"]
REPORT_COLUMNS = COLUMNS[:20] + ["setup_s"]  # report.md's speed table
# The sharded (TP x PP) benchmark's rows: one per layout too.
SHARDED_COLUMNS = ["layout", "precision", "fp8_mode", "batch", "prompt_len", "gen_len", "prefill_ms", "ttft_ms", "decode_tok_s",
           "prefill_tok_s", "throughput_tok_s", "e2e_p50_ms", "e2e_p90_ms", "e2e_p99_ms", "bubble_ms_per_stage",
           "bubble_frac_per_stage", "tokens_match_single", "kv_cache", "repeats"]


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_table(out_dir: Path, rows: list[dict[str, Any]], meta: dict[str, Any],
                columns: list[str] = COLUMNS) -> tuple[Path, Path]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = out_dir / "results.csv"
    atomic_write_text(csv_path, buf.getvalue())
    json_path = out_dir / "results.json"
    atomic_write_json(json_path, {"rows": rows, **meta})
    return csv_path, json_path


def plot_throughput(out_dir: Path, rows: list[dict[str, Any]], title: str) -> Path:
    """Decode tokens/s against batch size: one line per precision and (prompt, output) length."""
    from aistack.track.figures import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(6.5, 4.2))
    lines: dict[tuple, list[tuple[int, float]]] = {}
    for r in rows:
        value = r["decode_tok_s"] if r["decode_tok_s"] is not None else r["throughput_tok_s"]
        lines.setdefault((r["precision"], r["prompt_len"], r["gen_len"]), []).append((r["batch"], value))
    for (precision, s, g), points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", linestyle="-" if precision == "bf16" else "--",
                label=f"{precision} prompt {s} out {g}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, out_dir / "throughput.png")


def _fp8_line(fp8: dict[str, Any]) -> str:
    if not fp8.get("layers"):
        return "- FP8: not run"
    w8a8 = "EMULATED: quantize-dequantize, speed is not FP8 speed" if fp8["emulated"] else "real FP8 matmuls"
    modes = ", ".join(fp8.get("modes") or []) or "-"
    return (f"- FP8: modes run {modes} (bench.fp8.mode {fp8.get('mode', '-')}, weight-only up to batch "
            f"{fp8.get('weight_only_max_batch', '-')}); weight-only: FP8 weights, BF16 matmuls; W8A8: {fp8['backend']} ({w8a8}), "
            f"activations per token; weights {fp8['scaling']}-wise scales, {fp8['layers']} Linear layers, kept in BF16: "
            f"{', '.join(fp8['skipped']) or 'none'}")


def write_markdown(out_dir: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    q = meta.get("quality") or {}
    decode = sorted({r.get("decode", "eager") for r in rows})
    lines = [f"# Inference benchmark: {meta['model']}", "",
             f"- device: {meta['device']}; roofline: {meta['roofline_device'] or 'n/a (no device spec: CPU or unknown GPU)'}",
             _fp8_line(meta["fp8"]),
             f"- decode: {'KV cache' if meta['kv_cache'] else 'no KV cache (whole sequence each step)'}; bench.decode "
             f"{meta.get('decode', 'eager')}, ran {', '.join(decode)} (each point's in its row; setup_s: capture or compile "
             f"seconds, not timed); greedy; repeats per point: {meta['repeats']}",
             "", "## Speed", "", "| " + " | ".join(REPORT_COLUMNS) + " |", "|" + "---|" * len(REPORT_COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in REPORT_COLUMNS) + " |" for r in rows]
    if q:
        fp8_names = [k for k in q if k.startswith("fp8_") and k != "fp8_mode"] or (["fp8"] if "fp8" in q else [])
        lines += ["", "## Quality (BF16 vs FP8)", "", f"held-out text: {q.get('text')}; task: {q.get('task') or 'none'}", "",
                  "| metric | bf16 | " + " | ".join(fp8_names + [f"{n} - bf16" for n in fp8_names]) + " |",
                  "|---|---|" + "---|" * (2 * len(fp8_names))]
        for key, value in (q.get("bf16") or {}).items():
            cells = [_fmt(q[n].get(key)) for n in fp8_names] + [_fmt(q.get(f"delta_{n}_minus_bf16", {}).get(key)) for n in fp8_names]
            lines.append(f"| {key} | {_fmt(value)} | " + " | ".join(cells) + " |")
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_sharded_markdown(out: Path, rows: list[dict], meta: dict) -> Path:
    """report.md of the sharded (TP x PP) benchmark."""
    fmt = _fmt
    cpu = meta["cpu_figures"]
    p = meta["parallel"]
    lines = [f"# Sharded inference benchmark: {meta['model']}", "",
             f"- layout: TP {p['tensor']} (ranks within a node) x PP {p['pipeline']} (stages, one node each)",
             f"- device: {meta['device']}" + ("; **CPU figures** (gloo between ranks): they show the layout's "
                                             "overheads, not a GPU's speed" if cpu else ""),
             f"- generation: {meta['inference_path']}; KV cache; repeats per point: {meta['repeats']}",
             f"- FP8: {'EMULATED (quantize-dequantize), speed is not FP8 speed' if meta['fp8']['emulated'] else meta['fp8']['backend']}, "
             f"weights {meta['fp8']['scaling']}-wise scales (TP-group amax), activations "
             f"{'per token' if meta['fp8']['activations'] else 'not quantized'}, kept in BF16: {', '.join(meta['fp8']['skipped']) or 'none'}",
             "- TP 1 x PP 1 reference: rank 0 alone, with the threads of every rank on its host" if len(meta["quality"]["layouts"]) > 1 else None,
             "- prefill: until the last stage holds the prompt's logits; TTFT: until the first token is on the first "
             "stage's host (each rank times from its own exit of a barrier); bubble: per stage, the time it waits "
             "(activations from the stage before, the logits broadcast, its sends), in ms and as a fraction of the generation",
             ]
    lines = [line for line in lines if line is not None]
    if meta["tokens_match_single"] is not None:
        lines.append(f"- greedy tokens identical to TP 1 x PP 1 at every point: **{'yes' if meta['tokens_match_single'] else 'NO'}**")
    title = "## Speed" + (" (CPU figures)" if cpu else "")
    cols = SHARDED_COLUMNS[:17]
    lines += ["", title, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    lines += ["", "## Pipeline bubble per stage" + (" (CPU figures)" if cpu else ""), "",
              "| layout | precision | batch | prompt_len | gen_len | stage | compute_ms | wait_ms | of which recv / send / logits | bubble_frac |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for s in r["stages"]:
            split = " / ".join(fmt(s[f"wait_{k}_ms"]) for k in ("recv", "send", "logits"))
            lines.append(f"| {r['layout']} | {r['precision']} | {r['batch']} | {r['prompt_len']} | {r['gen_len']} | {s['stage']} | "
                         f"{fmt(s['compute_ms'])} | {fmt(s['wait_ms'])} | {split} | {fmt(s['bubble_frac'])} |")
    q = meta["quality"]
    lines += ["", "## Quality (BF16 vs FP8) per layout", "", f"held-out text: {q.get('text')}; lm-eval task: not run sharded", "",
              "| layout | metric | bf16 | fp8 | fp8 - bf16 |", "|---|---|---|---|---|"]
    for layout, lq in q["layouts"].items():
        for key, value in (lq.get("bf16") or {}).items():
            lines.append(f"| {layout} | {key} | {fmt(value)} | {fmt(lq.get('fp8', {}).get(key))} | "
                         f"{fmt(lq.get('delta_fp8_minus_bf16', {}).get(key))} |")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path

"""Which student learns its teacher's skill: four students of one size, one table.

    make demo                                  # once: the teacher, its tokenizer, the chat task
    python benchmarks/compare_distill.py [--pipeline runs/tiny-end-to-end] [--steps 150] [--out /tmp/compare-distill]

The teacher is the demo's SFT model (2 layers, reverses held-out words: exact match ~1.0).
Every student has 1 layer (half the teacher's depth, the demo's student), starts from random
weights and trains the same steps with the same batch and learning rate:

- sft-data        finetuned on the chat task's 1500 ground-truth records: no teacher
- sequence        finetuned on the teacher's answers to the 200 held-out prompts (the demo's
                  distill stage: DeepSeek-R1's distilled students are made this way)
- logit chat      Hinton et al. on the same 1500 chat records (assistant tokens), the
                  teacher running beside the student at every step
- logit chat top-32   the same, the teacher cut to its top 32 logits (what a store holds)
- logit store     from the teacher's top-32 logits precomputed into a zarr store, which is
                  keyed to a pretraining corpus: the crawl's tokens, not the chat task

Columns: exact match on 100 reversals no model trained on (± lm-eval's standard error),
bits per byte on the crawl's held-out documents, the student's training tokens/s (median
after the first five steps) and the teacher's cost (its own seconds: generation, the top-k
precompute; online it runs inside every student step, seen in the student's tokens/s).
Each figure is printed as soon as it is measured; the table comes last, as markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOGIT = REPO / "recipes" / "distill" / "gpt-tiny-logit.yaml"
STUDENT_LAYERS = 1


def stage_recipe(pipeline: Path, stage: str) -> Path:
    """recipe.yaml of a stage of the pipeline's latest run (its stages.json)."""
    from aistack.plan_records import read_stage_records
    from aistack.rundir import RunDir

    try:
        records = {r.name: r for r in read_stage_records(RunDir(pipeline))}
    except FileNotFoundError as err:
        sys.exit(f"{err}: run `make demo` first (or pass --pipeline)")
    if stage not in records:
        sys.exit(f"{pipeline} has no stage {stage!r} (it has {', '.join(records)})")
    return records[stage].run.path / "recipe.yaml"


def tokens_per_s(run) -> float:
    from aistack.track.metrics import read_metrics

    rows = [r["tokens_per_s"] for r in read_metrics(run.task_dir("train", 0) / "metrics.jsonl") if "tokens_per_s" in r]
    return statistics.median(rows[5:] or rows)


def task_seconds(run, job: str) -> float:
    """Wall seconds of a job's tasks, summed (from each task's start to its DONE marker)."""
    total = 0.0
    for state in sorted(run.path.glob(f"jobs/{job}/tasks/*/state.json")):
        done = json.loads((state.parent / "DONE").read_text())
        total += done["finished_at"] - json.loads(state.read_text())["started_at"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipeline", type=Path, default=REPO / "runs" / "tiny-end-to-end")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("/tmp/compare-distill"))
    args = parser.parse_args()
    args.pipeline = args.pipeline.resolve()
    os.chdir(REPO)  # the demo's recipes name the chat task relative to the checkout

    from aistack.launch import launcher
    from aistack.recipe import load_recipe

    sft_recipe, distill_recipe = stage_recipe(args.pipeline, "sft"), stage_recipe(args.pipeline, "distill")
    pretrain_recipe = load_recipe(stage_recipe(args.pipeline, "pretrain")).recipe
    teacher_run = sft_recipe.parent
    teacher = teacher_run / "jobs" / "train" / "tasks" / "00000" / "checkpoints"
    teacher_model = load_recipe(sft_recipe).recipe.model
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    common = ["tracking.mode=disabled", f"train.steps={args.steps}", f"train.eval_every={args.steps}",
              f"checkpoint.every={args.steps}"]
    student = [f"model.num_layers={STUDENT_LAYERS}", "checkpoint.load=null"]
    teacher_block = [f"teacher.checkpoint={teacher}"] + [
        f"teacher.model.{k}={v}" for k, v in teacher_model.model_dump().items() if v is not None]
    corpus = [f"data.paths=[{{path: {pretrain_recipe.data.paths[0].path}}}]", f"data.split={pretrain_recipe.data.split}",
              f"data.tokenizer={pretrain_recipe.data.tokenizer}"]
    chat_data = load_recipe(sft_recipe).recipe.data
    chat = ["data.paths=[]", f"chat.train=[{','.join(chat_data.train)}]", f"chat.tokenizer={chat_data.tokenizer}"]
    same_model = [f"model.{k}={v}" for k, v in teacher_model.model_dump().items() if v is not None and k != "num_layers"]
    demo_student = load_recipe(distill_recipe).recipe.train  # every student trains as the demo's does
    schedule = [f"train.{key}={getattr(demo_student, key)}"
                for key in ("lr", "min_lr", "warmup_steps", "micro_batch_size", "global_batch_size")]
    logit = [*student, *same_model, *teacher_block, *schedule, "logit.top_k=32"]

    students = {
        "sft-data": (sft_recipe, [*student, *schedule]),
        "sequence": (distill_recipe, [*student, *schedule]),
        "logit chat": (LOGIT, [*logit, *chat]),
        "logit chat top-32": (LOGIT, [*logit, *chat, "logit.online_top_k=true"]),
        "logit store": (LOGIT, [*logit, *corpus, "logit.source=offline", "logit.shards=2"]),
    }
    runs, cost = {}, {}
    for name, (recipe, overrides) in students.items():
        t0 = time.time()
        done = launcher.launch(recipe, [f"output.root={out / name.replace(' ', '-')}", *common, *overrides], on="local")
        runs[name] = done.run
        cost[name] = (task_seconds(done.run, "generate") if name == "sequence" else
                      task_seconds(done.run, "teacher_logits") if name == "logit store" else None)
        print(f"{name:17s} trained in {time.time() - t0:5.0f} s   {tokens_per_s(done.run):7.0f} tokens/s"
              + (f"   teacher {cost[name]:.0f} s" if cost[name] is not None else ""), flush=True)

    checkpoints = [str(run.task_dir("train", 0) / "checkpoints") for run in runs.values()]
    evaluation = launcher.launch(stage_recipe(args.pipeline, "evaluate"), [
        f"output.root={out / 'evaluate'}", "tracking.mode=disabled", f"evaluate.checkpoints=[{','.join(checkpoints)}]",
        "evaluate.untrained=[]", "evaluate.all_steps=false"], on="local")
    rows = json.loads((evaluation.run.path / "results.json").read_text())["rows"]

    def value(run, task, metric):
        found = [r["value"] for r in rows if r["run"] == run.name and r["task"] == task and r["metric"] == metric]
        return found[0] if found else float("nan")

    print(f"\nteacher: {teacher_run.name} ({teacher_model.num_layers} layers, hidden {teacher_model.hidden_size}); "
          f"students: {STUDENT_LAYERS} layer, random init, {args.steps} steps\n")
    print("| student | reverse_words exact match | held-out bits per byte | student tokens/s | teacher cost |")
    print("|---|---|---|---|---|")
    for name, run in runs.items():
        em, se = value(run, "reverse_words", "exact_match"), value(run, "reverse_words", "exact_match_stderr")
        teacher_cost = ("none" if name == "sft-data" else f"{cost[name]:.0f} s" if cost[name] is not None
                        else "a forward pass in every student step")
        print(f"| {name} | {em:.2f} ± {se:.2f} | {value(run, 'heldout_ppl', 'bits_per_byte'):.3f} | "
              f"{tokens_per_s(run):.0f} | {teacher_cost} |")
    print(f"\nrun directories: {out}")


if __name__ == "__main__":
    main()

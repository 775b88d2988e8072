"""Lineage: which data a model was trained on, in its run directory and in W&B.

A data run (filter, dedup, tokenize) ends with its stats job, which writes
`dataset-manifest.json` into the run directory (every output file with its size, and a
sha256 of the Megatron `.idx` indexes and of every file up to 1 MiB; a larger file,
such as a `.bin`, by size only) and logs the outputs to W&B as an artifact of type
`dataset` named after the run directory (`log_artifact`).

A training run (pretrain, SFT, distill) that reads paths inside a data run writes
`lineage.json` into its run directory: for each data run its directory, name, kind,
stage hash, which recipe keys read it (`data.paths.0.path`, `data.tokenizer`, ...), its
output files with their digests and the manifest digest; runs it starts from
(`checkpoint.load`, a teacher) are listed by directory, kind and stage hash; inputs that
are in no run directory by path and digest. Its W&B run marks the data run's artifact as
used: the same artifact (same name, same entries: files referenced by path, the hashed
ones by content), so W&B files both under one version and links the two runs.
Offline, `run.use_artifact` refuses; what it does with a new artifact (log it, marked
"use after commit") is done instead, and `aistack sync` uploads it with the run.

A training run ends by logging its final checkpoint as an artifact of type `model`, named
after the run directory, by reference (the checkpoint folder's URI, no checksum: weights are
not read again nor uploaded). A run that starts from it (`checkpoint.load`, a teacher) or
evaluates it marks that artifact used; an evaluation logs its results.json/.csv as an
artifact of type `eval-results`. So W&B's lineage view reads crawl -> documents -> dataset
-> model -> eval results, offline too (`aistack sync` uploads the records with the runs).

Everything here is derived from files and the recipe: no secret is read or written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator

from aistack.rundir import RunDir, atomic_write_text, latest_checkpoint

log = logging.getLogger("aistack")

MANIFEST = "dataset-manifest.json"
LINEAGE = "lineage.json"
HASH_MAX_BYTES = 1 << 20  # larger files are recorded by size (an .idx is always hashed): a stats job
# must not read terabytes of document shards again
ARTIFACT_TYPE = "dataset"
MODEL_TYPE = "model"
RESULTS_TYPE = "eval-results"
TRAIN_JOB = "train"  # the training job of every training kind (its task 0 keeps the checkpoints)




def feeds(kind: str, section: str) -> bool:
    """Whether runs of `kind` make data ("data") or models ("training"): the report
    section its KindSpec names."""
    from aistack.recipe.kinds import all_kinds  # here: `aistack status` imports this module, not the schema

    spec = all_kinds().get(kind)
    return spec is not None and spec.report == section


# --- files and digests -----------------------------------------------------------------


def is_hashed(path: Path, size: int) -> bool:
    return path.suffix == ".idx" or size <= HASH_MAX_BYTES


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def output_files(path: Path) -> list[Path]:
    """The files behind an output path: a Megatron prefix (<p>.bin, <p>.idx), a file, or a folder's files."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [p for p in (path.with_name(path.name + ".bin"), path.with_name(path.name + ".idx")) if p.is_file()]


def file_entries(files: list[Path], base: Path | None) -> list[dict[str, Any]]:
    """Path (relative to `base`; absolute without one), size, sha256 (None: too big to hash), mtime."""
    entries = []
    for f in files:
        st = f.stat()
        entries.append({"path": _rel(f, base) if base else str(f), "bytes": st.st_size,
                        "sha256": sha256_file(f) if is_hashed(f, st.st_size) else None, "mtime_ns": st.st_mtime_ns})
    return entries


def digest_of(entries: list[dict[str, Any]]) -> str:
    """sha256 over (path, bytes, sha256) of each file: what the content is, not when it was written."""
    blob = json.dumps(sorted((e["path"], e["bytes"], e["sha256"]) for e in entries), separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _rel(path: Path, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


def stage_hash(run_name: str) -> str:
    """<name>-<hash>: the hash of what the recipe computes (see RunDir.for_recipe)."""
    return run_name.rsplit("-", 1)[-1] if "-" in run_name else ""


# --- the data side -------------------------------------------------------------------


def dataset_manifest(run: RunDir, kind: str) -> dict[str, Any]:
    """Every output of a data run (its kind's outputs: documents, the dataset prefix, the
    tokenizer) with sizes and digests."""
    from aistack.recipe.kinds import spec_for

    outputs = {}
    for key, rel in spec_for(kind).outputs.items():
        outputs[key] = {"path": rel, "files": file_entries(output_files(run.path / rel), run.path)}
    return {"run": str(run.path), "name": run.name, "kind": kind, "stage_hash": stage_hash(run.name),
            "outputs": outputs, "digest": digest_of(_all_files(outputs))}


def _all_files(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for out in outputs.values():
        for entry in out["files"]:
            seen[entry["path"]] = entry
    return [seen[p] for p in sorted(seen)]


def write_manifest(run: RunDir, kind: str) -> dict[str, Any]:
    manifest = dataset_manifest(run, kind)
    atomic_write_text(run.path / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def current_manifest(run: RunDir, kind: str) -> dict[str, Any]:
    """The data run's manifest, recomputed when a file changed since it was written
    (size or modification time), or when there is none (a run from before manifests)."""
    try:
        manifest = json.loads((run.path / MANIFEST).read_text())
    except (OSError, ValueError):
        return dataset_manifest(run, kind)
    for entry in _all_files(manifest.get("outputs", {})):
        try:
            st = (run.path / entry["path"]).stat()
        except OSError:
            return dataset_manifest(run, kind)
        if st.st_size != entry["bytes"] or st.st_mtime_ns != entry.get("mtime_ns"):
            return dataset_manifest(run, kind)
    return manifest


def dataset_artifact(manifest: dict[str, Any]):
    """The W&B artifact of a data run's outputs: built the same way on both sides (the data
    run logs it, a training run uses it), so both land on one version."""
    import wandb

    artifact = wandb.Artifact(manifest["name"], type=ARTIFACT_TYPE, metadata={
        "run": manifest["run"], "kind": manifest["kind"], "stage_hash": manifest["stage_hash"],
        "digest": manifest["digest"]})
    base = Path(manifest["run"])
    for entry in _all_files(manifest["outputs"]):
        # hashed files by content, the others (a large .bin) by path: nothing big is read again
        artifact.add_reference((base / entry["path"]).as_uri(), name=entry["path"], checksum=entry["sha256"] is not None)
    return artifact


def log_dataset(ctx: Any) -> dict[str, Any] | None:
    """End of a data run (its stats job): manifest into the run directory, artifact to W&B."""
    if not ctx.is_main:
        return None
    manifest = write_manifest(ctx.run, ctx.kind)
    if ctx.wandb.enabled:
        try:
            artifact = dataset_artifact(manifest)
        except Exception as err:  # noqa: BLE001  (W&B is a mirror: the manifest is written)
            log.warning("dataset artifact not logged to W&B: %s: %s", type(err).__name__, err)
        else:
            ctx.wandb.log_artifact(artifact)
    return manifest


# --- the training side ---------------------------------------------------------------


# What a training recipe reads: its data, a teacher, a checkpoint to start from. Not
# resources (container images, mounts), output or tracking.
INPUT_SECTIONS = ("data", "sequence", "teacher", "checkpoint", "evaluate")


def recipe_paths(data: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, value) of every string of the recipe that looks like a path."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from recipe_paths(v, f"{key}.{k}" if key else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from recipe_paths(v, f"{key}.{i}")
    elif isinstance(data, str) and "/" in data:
        yield key, data


def owning_run(path: Path) -> tuple[RunDir, str] | None:
    """The nearest run directory holding `path` (a recipe.yaml in it or above): (run, kind)."""
    for candidate in [path, *path.parents]:
        recipe = candidate / "recipe.yaml"
        if recipe.is_file():
            try:
                kind = (RunDir(candidate).read_recipe_data() or {}).get("kind")
            except Exception:  # noqa: BLE001  (an unreadable recipe: not a run we can name)
                return None
            return RunDir(candidate), str(kind)
    return None


def lineage(run: RunDir, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    datasets: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, Any]] = {}
    external: list[dict[str, Any]] = []
    inputs = {k: v for k, v in data.items() if k in INPUT_SECTIONS}
    for key, value in recipe_paths(inputs):
        path = Path(value)
        if not path.is_absolute():  # read from the task's working directory, as the job does
            path = Path.cwd() / path
            if not path.exists():
                continue
            value = str(path)
        owner = owning_run(path)
        if owner is None:
            if path.is_dir():  # a folder outside any run (a checkpoint, a corpus): named, not read through
                external.append({"path": value, "used_as": key})
            elif files := output_files(path):  # a file or a Megatron prefix
                entries = file_entries(files, None)
                external.append({"path": value, "used_as": key, "files": _public(entries), "digest": digest_of(entries)})
            continue
        upstream, up_kind = owner
        if upstream.path == run.path or up_kind == "pipeline":
            continue
        rel = _rel(path, upstream.path)
        if feeds(up_kind, "data"):
            if upstream.name not in datasets:
                manifest = current_manifest(upstream, up_kind)
                datasets[upstream.name] = {
                    "run": str(upstream.path), "name": upstream.name, "kind": up_kind, "stage_hash": stage_hash(upstream.name),
                    "used_as": {}, "outputs": _public(_all_files(manifest["outputs"])), "digest": manifest["digest"],
                    "wandb_artifact": f"{upstream.name}:latest", "_manifest": manifest,
                }
            datasets[upstream.name]["used_as"][key] = rel
        else:
            entry = runs.setdefault(upstream.name, {"run": str(upstream.path), "name": upstream.name, "kind": up_kind,
                                                    "stage_hash": stage_hash(upstream.name), "used_as": {}})
            entry["used_as"][key] = rel
    return {"run": str(run.path), "name": run.name, "kind": kind, "datasets": list(datasets.values()),
            "runs": list(runs.values()), "external": external}


def _public(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "mtime_ns"} for e in entries]


def record_lineage(ctx: Any) -> dict[str, Any] | None:
    """Start of a training task (rank 0): lineage.json, and the data runs' artifacts used in W&B."""
    if not ctx.is_main:
        return None
    try:
        record = lineage(ctx.run, ctx.kind, ctx.data)
        manifests = [d.pop("_manifest") for d in record["datasets"]]
        atomic_write_text(ctx.run.path / LINEAGE, json.dumps(record, indent=1, sort_keys=True) + "\n")
    except OSError as err:  # bookkeeping: an unreadable upstream file does not stop the training
        log.warning("lineage not recorded: %s", err)
        return None
    if not ctx.wandb.enabled:
        return record
    builders = [lambda m=m: dataset_artifact(m) for m in manifests]
    builders += [lambda r=r: model_artifact(RunDir(Path(r["run"])))
                 for r in record["runs"] if feeds(r["kind"], "training") and final_checkpoint(RunDir(Path(r["run"])))]
    for build in builders:
        try:
            artifact = build()
        except Exception as err:  # noqa: BLE001  (W&B is a mirror: lineage.json is written)
            log.warning("artifact not marked used in W&B: %s: %s", type(err).__name__, err)
            continue
        ctx.wandb.use_artifact(artifact)
    return record


# --- models and results -----------------------------------------------------------------


def final_checkpoint(run: RunDir) -> Path | None:
    """The newest complete checkpoint of a training run (None while it has none)."""
    root = run.task_dir(TRAIN_JOB, 0) / "checkpoints"
    return latest_checkpoint(root) if root.is_dir() else None


def model_artifact(run: RunDir):
    """The W&B artifact of a training run's final checkpoint: the folder by reference, no
    checksum (entries by URI), so the run that logs it and every run that uses it build the
    same version without reading the weights."""
    import wandb

    checkpoint = final_checkpoint(run)
    if checkpoint is None:
        raise FileNotFoundError(f"{run.path}: no complete checkpoint")
    meta_file = checkpoint / "aistack.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    kind = (run.read_recipe_data() or {}).get("kind")
    artifact = wandb.Artifact(run.name, type=MODEL_TYPE, metadata={
        "run": str(run.path), "kind": kind, "stage_hash": stage_hash(run.name), "checkpoint": checkpoint.name,
        "step": meta.get("step"), "tokens": meta.get("tokens")})
    artifact.add_reference(checkpoint.as_uri(), name=checkpoint.name, checksum=False)
    return artifact


def log_model(ctx: Any) -> None:
    """End of a training task (global rank 0): its final checkpoint as a `model` artifact."""
    if not (ctx.is_main and ctx.wandb.enabled) or final_checkpoint(ctx.run) is None:
        return
    try:
        artifact = model_artifact(ctx.run)
    except Exception as err:  # noqa: BLE001  (W&B is a mirror: the checkpoint is on disk)
        log.warning("model artifact not logged to W&B: %s: %s", type(err).__name__, err)
        return
    ctx.wandb.log_artifact(artifact)


def log_results(ctx: Any, files: list[Path]) -> None:
    """An evaluation's result files as an `eval-results` artifact (small: by content)."""
    if not (ctx.is_main and ctx.wandb.enabled):
        return
    try:
        import wandb

        artifact = wandb.Artifact(ctx.run.name, type=RESULTS_TYPE, metadata={
            "run": str(ctx.run.path), "kind": ctx.kind, "stage_hash": stage_hash(ctx.run.name)})
        for file in files:
            artifact.add_reference(Path(file).as_uri(), name=Path(file).name, checksum=True)
    except Exception as err:  # noqa: BLE001
        log.warning("eval results not logged to W&B: %s: %s", type(err).__name__, err)
        return
    ctx.wandb.log_artifact(artifact)


def read_lineage(run_path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_path) / LINEAGE).read_text())
    except (OSError, ValueError):
        return None


def describe(run_path: Path) -> str | None:
    """One line: what a training run was trained on (for `aistack status`)."""
    record = read_lineage(run_path)
    if not record or not (record.get("datasets") or record.get("runs") or record.get("external")):
        return None
    parts = [f"{d['name']} (digest {d['digest'][:12]})" for d in record.get("datasets", [])]
    parts += [f"{r['name']} ({', '.join(r['used_as'])})" for r in record.get("runs", [])]
    parts += [f"{e['path']}" + (f" (digest {e['digest'][:12]})" if e.get("digest") else "") for e in record.get("external", [])]
    return "lineage: " + "; ".join(parts)

"""A pipeline recipe -> its stages: each a loaded recipe, its plan and its run directory.

Stages are resolved in the order the pipeline lists them. Each one sees the outputs of
the stages before it as `${stages.NAME...}` references (absolute paths inside their run
directories); while it is validated and planned those paths are deferred (they may not
exist yet; see aistack.recipe.deferred). Everything that can be wrong with any stage is
found here, before anything is written or submitted.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aistack.recipe.kinds import spec_for
from aistack.launch.plan import Plan, make_plan
from aistack.recipe.urls import is_url
from aistack.plan_records import PlannedJob, StageRecord, write_stage_records
from aistack.rundir import RunDir, output_owner
from aistack.recipe import LoadedRecipe, RecipeError
from aistack.recipe.deferred import deferring
from aistack.recipe.load import OVERRIDES_SOURCE, deep_merge, load_stage, stage_refs_in

REPORT_STAGE = "report"
PIPELINE_TOKEN = "<pipeline>"  # stands for the pipeline directory in stage hashes


@dataclass
class Stage:
    name: str
    loaded: LoadedRecipe
    plan: Plan
    run: RunDir
    needs: tuple[str, ...]  # stages that must finish first
    rehearses: Stage | None = None  # a rehearsal's stage: the real one it stands in for (rehearsal.py)
    variant: str | None = None  # a pipeline variant's own stage (NAME.VARIANT); None: every variant's
    seed: int | None = None  # a seeded branch's own stage (NAME.sSEED); None: every seed's

    @property
    def kind(self) -> str:
        return self.loaded.kind


@dataclass
class Pipeline:
    loaded: LoadedRecipe
    # <output.root>/<name>: the pipeline's own files, the stages' run dirs inside; None for
    # a plain recipe, which runs as a pipeline of one stage in its own run directory.
    dir: RunDir | None
    stages: list[Stage]
    missing_inputs: list[str]  # plan/dry-run only: inputs not on this machine

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def is_single(self) -> bool:
        return self.dir is None

    @property
    def top(self) -> RunDir:
        """Where `aistack status` looks: the pipeline's directory, or the plain recipe's run."""
        return self.dir or self.stages[0].run


def single_stage(loaded: LoadedRecipe) -> Pipeline:
    """A plain recipe: one stage, named after the recipe, in its usual run directory."""
    fix_inputs(loaded)
    stage = Stage(loaded.recipe.name, loaded, make_plan(loaded), RunDir.for_recipe(loaded), ())
    return Pipeline(loaded, None, [stage], [])


def fix_inputs(loaded: LoadedRecipe) -> None:
    """The stage's input files as planned (KindSpec.inputs), before its run directory is named."""
    inputs = spec_for(loaded.kind).inputs
    loaded.input_manifest = inputs(loaded.recipe) if inputs else None


def references(stage: str, kind: str, run_path: Path, recipe: Any = None) -> dict[str, str]:
    """`stages.<stage>.output[.KEY]` and `stages.<stage>.run` -> absolute paths (or the
    location the stage's recipe moved that output to: an s3:// URL)."""
    spec = spec_for(kind)
    moved = spec.moved_outputs(recipe) if spec.moved_outputs and recipe is not None else {}
    refs = {f"stages.{stage}.run": str(run_path)}
    for key, rel in spec.outputs.items():
        name = f"stages.{stage}.output" if key == "output" else f"stages.{stage}.output.{key}"
        refs[name] = moved.get(key) or str(run_path / rel)
    return refs


def moved_outputs(stage: Stage) -> list[str]:
    """Folders on this file system a stage writes outside its run directory (filter.output.path, ...)."""
    spec = spec_for(stage.kind)
    moved = spec.moved_outputs(stage.loaded.recipe) if spec.moved_outputs else {}
    return [v for v in moved.values() if v and not is_url(v)]


def check_outputs(stage: Stage) -> None:
    """An output folder outside the run directory holds one run's output: another run's
    shards there would be overwritten in part and read by the next stage in full."""
    for folder in moved_outputs(stage):
        owner = output_owner(Path(folder))
        if owner and owner != stage.run.name:
            key = next((k for k, v in _flat(stage.loaded.data) if v == folder), "output")
            raise RecipeError.single(stage.loaded.sources.get(key) or str(stage.loaded.path), key, folder,
                                     f"a folder that holds no other run's output (it holds run {owner}'s: "
                                     "choose another folder, or remove that one)")


def _flat(data: Any, key: str = ""):
    if isinstance(data, dict):
        for name, value in data.items():
            yield from _flat(value, f"{key}.{name}" if key else str(name))
    else:
        yield key, data


def _locations(stage: Stage) -> list[str]:
    """Where a stage writes: its run directory, and any output it moved elsewhere."""
    spec = spec_for(stage.kind)
    moved = spec.moved_outputs(stage.loaded.recipe) if spec.moved_outputs else {}
    return [str(stage.run.path), *(v for v in moved.values() if v)]


def pipeline_dir(loaded: LoadedRecipe) -> RunDir:
    recipe = loaded.recipe
    return RunDir((Path(recipe.output.root).expanduser() / recipe.name).absolute())


@dataclass(frozen=True)
class Branch:
    """One variant of a pipeline at one seed (None: the pipeline as written, no seed axis)."""

    variant: str | None
    seed: int | None
    overrides: dict[str, dict[str, Any]]  # stage -> overrides on top of the stage's own

    @property
    def label(self) -> str | None:
        parts = [*([self.variant] if self.variant else []), *([f"s{self.seed}"] if self.seed is not None else [])]
        return ".".join(parts) or None

    @property
    def description(self) -> str | None:
        """How an error names the branch: "variant V", "seed S" or both."""
        parts = [*([f"variant {self.variant}"] if self.variant else []), *([f"seed {self.seed}"] if self.seed is not None else [])]
        return ", ".join(parts) or None


def branches(recipe: Any) -> list[Branch]:
    """`variants` x `seeds.values`: the seed set, on top of the variant's own overrides, at the keys `seeds.set` names."""
    variants = list(recipe.variants.items()) if recipe.variants else [(None, {})]
    if recipe.seeds is None:
        return [Branch(variant, None, extra) for variant, extra in variants]
    return [Branch(variant, seed, {**extra, **{stage: deep_merge(expand_dotted(extra.get(stage, {})), expand_dotted({key: seed}))
                                               for stage, key in recipe.seeds.set.items()}})
            for variant, extra in variants for seed in recipe.seeds.values]


def resolve(loaded: LoadedRecipe, allow_missing: bool = False) -> Pipeline:
    """The stages of a pipeline recipe (a plain recipe is a pipeline of one), planned.

    With `variants` (and `seeds`), each variant (at each seed) is the pipeline with its
    overrides on top; a stage that comes out the same in several of them (same resolved
    recipe, so the same run directory) is one stage. It keeps the pipeline's name when every
    branch shares it; otherwise the name says what its branches have in common: NAME.VARIANT,
    NAME.sSEED or NAME.VARIANT.sSEED (of the first branch that has it)."""
    if loaded.kind != "pipeline":
        return single_stage(loaded)
    recipe = loaded.recipe
    pdir = pipeline_dir(loaded)
    missing: list[str] = []
    resolved = [(branch, _resolve_branch(loaded, pdir, branch.overrides, branch.description, allow_missing, missing))
                for branch in branches(recipe)]
    users: dict[Path, list[Branch]] = {}
    for branch, branch_stages in resolved:
        for stage in branch_stages:
            users.setdefault(stage.run.path, []).append(branch)
    stages: list[Stage] = []
    named: dict[Path, Stage] = {}
    for branch, branch_stages in resolved:
        final = {}  # this branch's stage names -> the stages they became
        for stage in branch_stages:
            base = stage.name
            shared = named.get(stage.run.path)
            if shared is None:
                owners = users[stage.run.path]
                if len(owners) < len(resolved):
                    variants, seeds = {b.variant for b in owners}, {b.seed for b in owners}
                    stage.variant = owners[0].variant if len(variants) == 1 else None
                    stage.seed = owners[0].seed if len(seeds) == 1 else None
                    common = Branch(stage.variant, stage.seed, {}).label or owners[0].label  # nothing in common: the first's
                    stage.name = f"{base}.{common}"
                stage.needs = tuple(final[need].name for need in stage.needs)
                named[stage.run.path] = shared = stage
                stages.append(stage)
            final[base] = shared
    if recipe.report:
        stages.append(_report_stage(loaded, pdir, stages))
    return Pipeline(loaded, pdir, stages, sorted(set(missing)))


def _resolve_branch(loaded: LoadedRecipe, pdir: RunDir, extra: dict[str, dict[str, Any]], branch: str | None,
                    allow_missing: bool, missing: list[str]) -> list[Stage]:
    """The pipeline's stages with one variant's overrides (`extra`: stage -> overrides)."""
    recipe = loaded.recipe
    file = Path(loaded.path)
    stages: list[Stage] = []
    refs: dict[str, str] = {}
    for name, spec in recipe.stages.items():
        key = f"stages.{name}"
        if name == REPORT_STAGE and recipe.report:
            raise RecipeError.single(str(file), key, name, f"another stage name ('{REPORT_STAGE}' is the report's; or set report: false)")
        overrides = deep_merge(expand_dotted(spec.overrides), expand_dotted(extra.get(name, {})))
        needs = _needs(name, spec, overrides, [s.name for s in stages], file, key)
        source = _recipe_source(spec.recipe, loaded, file, key)
        overrides = deep_merge(overrides, _placement(loaded, name, pdir))
        upstream = {where: _shards(s) for s in stages for where in _locations(s)}
        with deferring(upstream, allow_missing) as deferral, _in_stage(name if branch is None else f"{name} ({branch})", file):
            stage_loaded = load_stage(source, file, f"{key}.recipe", overrides, refs)
            if not spec_for(stage_loaded.kind).stage:
                raise RecipeError.single(str(file), f"{key}.recipe", stage_loaded.kind, "a recipe of a stage kind (not pipeline or report)")
            stage_loaded.path_aliases = {str(pdir.path): PIPELINE_TOKEN}
            plan = make_plan(stage_loaded)
            fix_inputs(stage_loaded)  # here: paths an upstream stage writes are deferred
        stage_loaded.deferred = bool(deferral.deferred)
        stage_loaded.upstream_runs = [s.run.name for s in stages if s.name in needs and _locations(s)[1:]]
        missing += deferral.missing
        run = RunDir.for_recipe(stage_loaded)
        stages.append(Stage(name, stage_loaded, plan, run, needs))
        refs.update(references(name, stage_loaded.kind, run.path, stage_loaded.recipe))
    return stages


@contextlib.contextmanager
def _in_stage(name: str, pipeline_file: Path):
    """Errors of a stage's recipe say which stage of which pipeline they come from."""
    try:
        yield
    except RecipeError as err:
        where = err.file if err.file == str(pipeline_file) else f"{os.path.normpath(err.file)}, stage {name} of {pipeline_file}"
        raise RecipeError(where, err.problems) from None


def expand_dotted(overrides: dict[str, Any]) -> dict[str, Any]:
    """{"train.lr": 1e-4, "data": {...}} -> nested. Nested keys win over dotted ones: a
    command-line override (always nested) then beats a dotted key of the file."""
    dotted: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if "." in key:
            node = dotted
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        else:
            nested[key] = value
    return deep_merge(dotted, nested)


def _needs(name: str, spec, overrides: dict, earlier: list[str], file: Path, key: str) -> tuple[str, ...]:
    referenced = stage_refs_in(overrides) | (stage_refs_in(spec.recipe) if isinstance(spec.recipe, dict) else set())
    needs: list[str] = []
    for ref in sorted(referenced):
        parts = ref.split(".")
        target = parts[1] if len(parts) > 1 else ""
        if target not in earlier:
            raise RecipeError.single(str(file), f"{key}.overrides", "${" + ref + "}",
                                     f"a reference to a stage listed before {name} ({', '.join(earlier) or 'there is none'})")
        needs.append(target)
    for after in spec.after:
        if after not in earlier:
            raise RecipeError.single(str(file), f"{key}.after", after, f"a stage listed before {name} ({', '.join(earlier) or 'there is none'})")
        needs.append(after)
    return tuple(dict.fromkeys(needs))


def _recipe_source(value: str | dict, loaded: LoadedRecipe, file: Path, key: str) -> Path | dict:
    if isinstance(value, dict):
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        owner = loaded.sources.get(f"{key}.recipe", str(file))
        base = Path.cwd() if owner == OVERRIDES_SOURCE else Path(owner).parent
        path = base / path
    try:
        found = path.is_file()
    except OSError:  # unreadable, or a name too long for this system
        found = False
    if not found:
        raise RecipeError.single(loaded.sources.get(f"{key}.recipe", str(file)), f"{key}.recipe", value, "a recipe file that exists")
    return path.absolute()


def _placement(loaded: LoadedRecipe, name: str, pdir: RunDir) -> dict[str, Any]:
    """What the pipeline sets on every stage: its name, where it lives, how it is tracked,
    and the container image when the pipeline names one (resources.container)."""
    tracking = loaded.recipe.tracking.model_dump(mode="json")
    tracking["group"] = tracking.get("group") or loaded.recipe.name
    placement = {"name": name, "output": {"root": str(pdir.path)}, "tracking": tracking}
    container = loaded.recipe.resources.container
    if container is not None:  # one image for every stage
        placement["resources"] = {"container": container.model_dump(mode="json")}
    return placement


def _shards(stage: Stage) -> int | None:
    job = spec_for(stage.kind).sharded_by
    return stage.plan.job(job).num_tasks if job else None


def _report_stage(loaded: LoadedRecipe, pdir: RunDir, stages: list[Stage]) -> Stage:
    data = {
        "kind": "report",
        "report": {
            "title": f"pipeline {loaded.recipe.name}",
            "stages": [{"name": s.name, "kind": s.kind, "run": str(s.run.path), **({"variant": s.variant} if s.variant else {}),
                        **({"seed": s.seed} if s.seed is not None else {})} for s in stages],
            "copy_to": str(pdir.path),
        },
        "resources": {"nodes": 1, "tasks_per_node": 1, "time": 20},
    }
    report = load_stage(data, Path(loaded.path), f"stages.{REPORT_STAGE}", _placement(loaded, REPORT_STAGE, pdir), {})
    report.path_aliases = {str(pdir.path): PIPELINE_TOKEN}
    return Stage(REPORT_STAGE, report, make_plan(report), RunDir.for_recipe(report), tuple(s.name for s in stages))


def write_pipeline_files(pipeline: Pipeline) -> None:
    """<pipeline dir>/recipe.yaml (the pipeline as resolved) and stages.json (the current stage runs)."""
    pdir = pipeline.dir
    assert pdir is not None, "a plain recipe has no pipeline files"
    pdir.path.mkdir(parents=True, exist_ok=True)
    pdir.write_recipe(pipeline.loaded)
    write_stage_records(pdir, [stage_record(s) for s in pipeline.stages])


def stage_record(stage: Stage) -> StageRecord:
    return StageRecord(stage.name, stage.kind, stage.run,
                       tuple(PlannedJob(j.name, j.num_tasks, j.entry, j.depends_on) for j in stage.plan.jobs), stage.needs)

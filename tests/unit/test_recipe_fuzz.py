"""Fuzz test of the recipe loader: a few hundred seeded random mutations of the shipped
recipes (wrong types, unknown keys (also `true:` and `[a, b]:`), control characters in
values and keys, huge numbers and NaN/inf, 200 and 10,000 levels of nesting, duplicate
keys, 1 MB strings, non-UTF-8 and raw control bytes, YAML alias bombs and an alias inside
its own anchor), each planned the way `aistack plan RECIPE --on local` plans it.

Every case exits 2 with a message naming the mutated file and key, or 0 for a mutation
that is legitimately valid (null where a key is optional, a number for a number, minutes
for 'HH:MM:SS', a long description) and then only if the value is kept as written (true
taken as 1 is not); never a traceback, an exception escaping `main`, a hang, or an error
about some other key. Most cases must be refused.

The seed is printed with every failure; rerun one case with
    AISTACK_FUZZ_SEED=<seed> AISTACK_FUZZ_CASE=<n> pytest tests/unit/test_recipe_fuzz.py
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import signal
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from aistack.cli import main
from aistack.recipe import load_recipe
from aistack.recipe.load import safe_load_unique

REPO = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("AISTACK_FUZZ_SEED", "20240607"))
CASES = int(os.environ.get("AISTACK_FUZZ_CASES", "300"))
ONLY_CASE = os.environ.get("AISTACK_FUZZ_CASE")  # rerun a single case of a failing seed
CASE_CPU_S = 5  # a case still computing after this much CPU time hangs (the slowest take 1 s)
MIN_ERRORS = 0.8  # at least this share of the cases must be refused (exit 2)
NOT_RECIPES = ("recipes/eval/tasks/",)  # lm-eval task configs, looked up by task name
SENTINEL = "fuzz-sentinel-4e1d"
_MISSING = object()


# --- a workspace where every shipped recipe plans --------------------------------------


def _make_workspace(root: Path) -> Path:
    """A copy of recipes/ next to placeholder inputs (the ones the shipped recipes name by
    default), so that each recipe plans cleanly before it is mutated."""
    shutil.copytree(REPO / "recipes", root / "recipes")
    for rel in ("data/warc/crawl-0.warc.gz", "data/sample-crawl/crawl-0.warc.gz", "data/documents/part-0.parquet",
                "data/heldout.jsonl", "data/reverse-task/train.jsonl", "data/reverse-task/prompts.jsonl"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    for rel in ("runs/gpt-tiny", "runs/gpt-125m"):  # Hugging Face folders, as far as planning looks
        (root / rel).mkdir(parents=True)
        (root / rel / "config.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return _make_workspace(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture
def planning(workspace, monkeypatch) -> Path:
    monkeypatch.chdir(workspace)
    for var in [v for v in os.environ if v.startswith("AISTACK_") and not v.startswith("AISTACK_FUZZ")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AISTACK_RUNS", str(workspace / "runs-out"))
    # Planning asks a Slurm cluster for its MaxArraySize when one answers: 0.3 s a case, and
    # not what this test is about.
    from aistack.launch.slurm import executor as slurm

    monkeypatch.setattr(slurm, "max_array_size", lambda profile: 1001, raising=False)
    return workspace


def _plan(entry: str) -> int:
    return main(["plan", entry, "--on", "local"])


def _shipped(workspace: Path) -> dict[str, list[str]]:
    """Each recipe file -> the recipes to plan to exercise it: itself, or (a base file
    without `kind:`) the recipes that extend it."""
    files = sorted(str(p.relative_to(workspace)) for p in (workspace / "recipes").rglob("*.yaml"))
    files = [f for f in files if not f.startswith(NOT_RECIPES)]
    data = {f: safe_load_unique((workspace / f).read_text()) for f in files}
    entries: dict[str, list[str]] = {f: [f] for f in files if "kind" in data[f]}
    for f in files:
        parents = data[f].get("extends", [])
        for parent in [parents] if isinstance(parents, str) else parents:
            base = os.path.normpath(os.path.join(os.path.dirname(f), parent))
            if base in data and "kind" not in data[base]:
                entries.setdefault(base, []).append(f)
    return entries


def test_every_shipped_recipe_plans_before_it_is_mutated(planning, capsys):
    shipped = _shipped(planning)
    assert any(f.startswith("recipes/pipelines/") for f in shipped) and "recipes/base/defaults.yaml" in shipped
    for entry in sorted({e for entries in shipped.values() for e in entries}):
        assert _plan(entry) == 0, f"{entry} does not plan unmutated: {capsys.readouterr().err}"


# --- mutations --------------------------------------------------------------------------


@dataclass
class Case:
    index: int
    target: str  # the file mutated
    entry: str  # the file planned (the target, or a recipe extending it)
    mutation: str
    path: tuple  # key path of the mutation in the target
    detail: str
    text: bytes  # the mutated file
    may_pass: bool = False  # legitimately valid: exit 0 allowed if the value is kept as written
    value: Any = _MISSING  # what was set at `path` (for that check)
    must_say: str = ""  # besides the key, the message must say this

    def describe(self) -> str:
        return (f"case {self.index} (AISTACK_FUZZ_SEED={SEED} AISTACK_FUZZ_CASE={self.index}): {self.mutation} "
                f"at '{_dotted(self.path)}' of {self.target} (planned: {self.entry}): {self.detail}")


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _unshared(node: Any) -> Any:
    """A copy without shared sub-objects: YAML anchors of the original are written out."""
    if isinstance(node, dict):
        return {k: _unshared(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unshared(v) for v in node]
    return node


def _walk(node: Any, prefix: tuple = ()):
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for key, value in items:
        yield prefix + (key,), value
        yield from _walk(value, prefix + (key,))


def _get(node: Any, path: tuple) -> Any:
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return _MISSING
    return node


def _set(node: Any, path: tuple, value: Any) -> None:
    _get(node, path[:-1])[path[-1]] = value


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _flow(value: Any) -> str:
    """One value as inline YAML."""
    return yaml.safe_dump([value], default_flow_style=True, width=math.inf).strip()[1:-1]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


WRONG_TYPES: dict[str, list[Any]] = {
    "str": ["fuzz-value", "fuzz value", "[bold]fuzz[/]", "[/]", "[/fuzz]", "${env:", "%s %n {0}", "'\"", ""],
    "int": [12345, -1, 0],
    "float": [0.5, -2.5],
    "bool": [True, False],
    "list": [["fuzz"], [], [1, 2]],
    "dict": [{"fuzz": 1}, {}, {"a": {"b": None}}],
    "null": [None],
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str", list: "list", dict: "dict"}[type(value)]


def _wrong_type(rng, data, paths):
    path, original = rng.choice(paths)
    kind = rng.choice([t for t in WRONG_TYPES if t != _type_name(original)])
    value = rng.choice(WRONG_TYPES[kind])
    _set(data, path, value)
    # Legitimately valid where the schema takes that type too (null where a key is optional, a
    # number for a number, minutes for 'HH:MM:SS'): then, and only then, it is kept as written.
    return path, f"{original!r:.60} -> {value!r}", _dump(data).encode(), True, value, ""


def _unknown_key(rng, data, paths):
    mappings = [((), data)] + [(p, v) for p, v in paths if isinstance(v, dict)]
    parent, node = rng.choice(mappings)
    siblings = [k for k in node if isinstance(k, str)]
    choices = [f"fuzz_{rng.randrange(1000)}", 7, True]
    if siblings:
        sibling = rng.choice(siblings)
        choices += [sibling + "s", sibling.upper(), sibling[:-1] or "x"]
    key = rng.choice([c for c in choices if c not in node])
    value = rng.choice([1, "x", None, [1], {"a": 1}])
    if rng.random() < 0.1:  # a list as a key: YAML allows it, Python cannot hash it
        node[SENTINEL] = value
        text = _dump(data)
        text, n = re.subn(rf"^( *){SENTINEL}:", r"\1[fuzz, key]:", text, flags=re.M)
        assert n == 1
        return parent, "added key [fuzz, key]", text.encode(), False, _MISSING, "unhashable key"
    node[key] = value
    return parent + (key,), f"added key {key!r}", _dump(data).encode(), False, _MISSING, ""


CONTROL = ["\x00", "\x1b", "\n", "\r", "\x7f", "\t", "\x1b[31m", "\x08"]


def _control_characters(rng, data, paths):
    strings = [(p, v) for p, v in paths if isinstance(v, str)]
    char = rng.choice(CONTROL)
    if rng.random() < 0.25:  # in a key
        path, _ = rng.choice([(p, v) for p, v in paths if isinstance(p[-1], str)])
        parent = _get(data, path[:-1])
        key = path[-1][:1] + char + path[-1][1:]
        rebuilt = {(key if k == path[-1] else k): v for k, v in parent.items()}
        parent.clear()
        parent.update(rebuilt)
        return path[:-1] + (key,), f"key {path[-1]!r} -> {key!r}", _dump(data).encode(), False, _MISSING, ""
    path, original = rng.choice(strings)
    at = rng.randrange(len(original) + 1)
    value = original[:at] + char + original[at:]
    _set(data, path, value)
    prose = path[-1] == "description" and char in ("\n", "\t")  # prose may hold newlines and tabs
    return path, f"{original!r:.60} -> {value!r:.80}", _dump(data).encode(), prose, value, ""


def _huge_number(rng, data, paths):
    path, original = rng.choice([(p, v) for p, v in paths if _is_number(v)] or paths)
    values = [10**30, -(10**30), 1e308, -1e308] + ([math.nan, math.inf, -math.inf] if isinstance(original, float) else [])
    value = rng.choice(values)
    _set(data, path, value)
    # 1e308 is a float like any other (a field with bounds refuses it); the rest never fit.
    may_pass = isinstance(value, float) and math.isfinite(value)
    return path, f"{original!r} -> {value!r}", _dump(data).encode(), may_pass, value, ""


def _textual(data, path, replacement: str) -> bytes:
    """The file with the value at `path` replaced by raw YAML text."""
    _set(data, path, SENTINEL)
    text = _dump(data)
    assert text.count(SENTINEL) == 1
    return text.replace(SENTINEL, replacement).encode()


def _deep_nesting(rng, data, paths):
    path, original = rng.choice(paths)
    depth = rng.choice([200, 200, 10_000])
    if rng.random() < 0.5:
        text = "[" * depth + "fuzz" + "]" * depth
    else:
        text = "{a: " * depth + "fuzz" + "}" * depth
    return path, f"{original!r:.60} -> {depth} levels of {text[:1]}", _textual(data, path, text), False, _MISSING, ""


def _duplicate_key(rng, data, paths):
    path, original = rng.choice([(p, v) for p, v in paths if isinstance(p[-1], str)])
    parent = _get(data, path[:-1])
    rebuilt: dict = {}
    for k, v in parent.items():
        rebuilt[k] = v
        if k == path[-1]:
            rebuilt[SENTINEL] = None
    parent.clear()
    parent.update(rebuilt)
    text = _dump(data)
    again = rng.choice([original, "fuzz-value"])
    text, n = re.subn(rf"^( *){SENTINEL}: null$", lambda m: f"{m[1]}{_flow(path[-1])}: {_flow(again)}", text, flags=re.M)
    assert n == 1
    return path, f"{path[-1]!r} given twice", text.encode(), False, _MISSING, "duplicate key"


def _long_string(rng, data, paths):
    path, original = rng.choice([(p, v) for p, v in paths if isinstance(v, str)])
    value = rng.choice(["x" * 2**20, "/" + "ab/" * (2**20 // 3)])  # one long name; a long path of short ones
    _set(data, path, value)
    # free text may be long; what is kept must be what was written
    return path, f"{original!r:.60} -> {len(value):,} characters", _dump(data).encode(), True, value, ""


def _bad_bytes(rng, data, paths):
    path, original = rng.choice([(p, v) for p, v in paths if isinstance(v, str)] or paths)
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"\xfe\xfeabc", b"\x00", b"\x1b[2J"])
    prefix = original if isinstance(original, str) else ""
    _set(data, path, prefix + SENTINEL)
    text = _dump(data).encode()
    assert text.count(SENTINEL.encode()) == 1
    return path, f"{bad!r} inside {original!r:.60}", text.replace(SENTINEL.encode(), bad), False, _MISSING, ""


def _alias_bomb(rng, data, paths):
    """Billion laughs, small: 10**7 values once every alias is expanded (from a few hundred
    bytes of YAML), as a list of lists or as nested mappings."""
    path, original = rng.choice(paths)
    levels = 7
    if rng.random() < 0.2:  # an alias inside its own anchor: a value that contains itself
        text = rng.choice(["&self [fuzz, *self]", "&self {a: *self}"])
        return path, f"{original!r:.60} -> {text}", _textual(data, path, text), False, _MISSING, "alias"
    if rng.random() < 0.5:
        parts = ["&l0 [" + ", ".join(["lol"] * 10) + "]"]
        parts += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
        text = "[" + ", ".join(parts) + "]"
    else:
        parts = ["l0: &l0 {" + ", ".join(f"k{j}: lol" for j in range(10)) + "}"]
        parts += [f"l{i}: &l{i} {{" + ", ".join(f"k{j}: *l{i - 1}" for j in range(10)) + "}" for i in range(1, levels)]
        text = "{" + ", ".join(parts) + "}"
    return path, f"{original!r:.60} -> alias bomb {text[:1]}", _textual(data, path, text), False, _MISSING, "aliases"


MUTATIONS = {  # name -> (weight, mutate)
    "wrong_type": (5, _wrong_type),
    "unknown_key": (3, _unknown_key),
    "control_characters": (3, _control_characters),
    "huge_number": (3, _huge_number),
    "deep_nesting": (2, _deep_nesting),
    "duplicate_key": (2, _duplicate_key),
    "long_string": (1, _long_string),
    "bad_bytes": (2, _bad_bytes),
    "alias_bomb": (1, _alias_bomb),
}


def _make_case(index: int, workspace: Path, shipped: dict[str, list[str]]) -> Case:
    rng = random.Random(f"{SEED}-{index}")  # each case on its own: AISTACK_FUZZ_CASE reruns it alone
    target = rng.choice(sorted(shipped))
    entry = rng.choice(shipped[target])
    data = _unshared(safe_load_unique((workspace / target).read_text()))
    paths = list(_walk(data))
    names = sorted(MUTATIONS)
    mutation = rng.choices(names, weights=[MUTATIONS[n][0] for n in names])[0]
    path, detail, text, may_pass, value, must_say = MUTATIONS[mutation][1](rng, data, paths)
    if entry != target and _masked(workspace, entry, path):
        may_pass, value = True, _MISSING  # the recipe planned sets this key itself
    if path[:1] == ("extends",):
        value = _MISSING  # read, then gone: the recipe has no such key to hold the value
    return Case(index, target, entry, mutation, path, detail, text, may_pass, value, must_say)


def _masked(workspace: Path, entry: str, path: tuple) -> bool:
    """True when `entry` (extending the mutated file) replaces the value at `path`."""
    child = safe_load_unique((workspace / entry).read_text())
    for n in range(1, len(path) + 1):
        value = _get(child, path[:n])
        if value is not _MISSING and (n == len(path) or not isinstance(value, dict)):
            return True
    return False


# --- checks -----------------------------------------------------------------------------


class _Hang(BaseException):  # not an Exception: no `except Exception` on the way swallows it
    pass


def _on_cpu_limit(signum, frame):
    raise _Hang(f"still computing after {CASE_CPU_S} s of CPU time")


def _run(case: Case, workspace: Path, capsys) -> tuple[Any, str, float, Any]:
    """Plan the case's entry with the mutated file in place; restore the file after. When it
    plans, the value the loaded recipe holds at the mutated key comes back too."""
    file = workspace / case.target
    original = file.read_bytes()
    file.write_bytes(case.text)
    capsys.readouterr()
    previous = signal.signal(signal.SIGVTALRM, _on_cpu_limit)  # SIGALRM is pytest-timeout's
    signal.setitimer(signal.ITIMER_VIRTUAL, CASE_CPU_S)
    start = time.monotonic()
    resolved: Any = _MISSING
    try:
        result: Any = _plan(case.entry)
        elapsed = time.monotonic() - start
        if result == 0:
            resolved = _resolved(case.entry, case.path)
    except (Exception, SystemExit, _Hang) as err:  # escaping main is a failure: keep it to report
        result, elapsed = err, time.monotonic() - start
        print("".join(traceback.format_exception(err)))
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)
        file.write_bytes(original)
    captured = capsys.readouterr()
    return result, captured.out + captured.err, elapsed, resolved


def _resolved(entry: str, path: tuple) -> Any:
    """The value at `path` once `entry` is loaded; in a pipeline's stage overrides, the value
    the stage's recipe ends up with."""
    loaded = load_recipe(entry)
    if loaded.kind != "pipeline":
        return _get(loaded.data, path)
    # A pipeline holds its stages' keys as written (overrides, variants and inline recipes are
    # free-form there): what counts is the value the stage's own recipe is validated with.
    if len(path) > 3 and path[0] == "stages" and path[2] in ("overrides", "recipe"):
        stage, inside = path[1], path[3:]
    elif len(path) > 3 and path[0] == "variants":
        stage, inside = f"{path[2]}.{path[1]}", path[3:]  # the variant's branch of that stage
    else:
        return _get(loaded.data, path)
    from aistack.launch.stages import resolve

    stages = resolve(loaded, allow_missing=True).stages
    branch = next(s for s in stages if s.name == stage or s.name.startswith(stage + "."))
    return _get(branch.loaded.data, tuple(p for part in inside for p in (part.split(".") if isinstance(part, str) else [part])))


_REPORTED_KEY_RE = re.compile(r"(?:key|duplicate key) '(?P<key>[^']*)'")


def _names_key(message: str, path: tuple) -> bool:
    """The message names the key: its dotted path, or its last name as part of a key the
    message reports (a stage's key inside a pipeline, a duplicate key)."""
    dotted = _escaped(_dotted(path))
    if f"'{dotted}'" in message or f"'{dotted}." in message:
        return True
    if re.search(rf"(?<![\w.]){re.escape(dotted)}\.[a-z]", message):  # a check of several keys names them in prose
        return True
    names = [_escaped(str(p)) for p in path if not isinstance(p, int)]
    if not names:
        return False
    last = names[-1].split(".")
    for match in _REPORTED_KEY_RE.finditer(message):
        parts = match["key"].split(".")
        if any(parts[i : i + len(last)] == last for i in range(len(parts))):
            return True
        if len(last) > 1 and parts == last[: len(parts)]:  # a dotted override key: its first unknown part
            return True
    return False


def _escaped(text: str) -> str:
    """A control character as an error message shows it (escaped, never raw)."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m[0])[1:-1], text)


def _kept(value: Any, resolved: Any) -> bool:
    if value is _MISSING:
        return True
    if _is_number(value) and _is_number(resolved):
        return value == resolved or (math.isnan(value) and math.isnan(resolved))
    if isinstance(value, str) and isinstance(resolved, str):
        return value == resolved or (value != "" and resolved.endswith(value))  # a path may be made absolute
    return type(value) is type(resolved) and value == resolved


def _problem(case: Case, result: Any, output: str, resolved: Any) -> str | None:
    if "Traceback" in output or isinstance(result, BaseException):
        what = f"{type(result).__name__}: {str(result)[:300]}" if isinstance(result, BaseException) else "a traceback"
        return f"an exception escaped: {what}\n{output[-1000:]}"
    if result == 0:
        if not case.may_pass:
            return "exit 0: the mutation was accepted"
        if not _kept(case.value, resolved):
            return f"exit 0, but the value was not kept as written: {resolved!r:.100}"
        return None
    if result != 2:
        return f"exit {result}, not 2\n{output[-1500:]}"
    if case.path and not _names_key(output, case.path):  # () : the document itself, no key to name
        return f"exit 2 without naming the key:\n{output[-1500:]}"
    if Path(case.target).name not in output:
        return f"exit 2 without naming the file:\n{output[-1500:]}"
    if case.must_say and case.must_say not in output:
        return f"exit 2 without saying {case.must_say!r}:\n{output[-1500:]}"
    return None


def test_random_mutations_of_shipped_recipes_exit_2_naming_the_key(planning, capsys):
    shipped = _shipped(planning)
    indices = [int(ONLY_CASE)] if ONLY_CASE else range(CASES)
    failures: list[str] = []
    outcomes: Counter = Counter()
    seconds: Counter = Counter()
    started = time.monotonic()
    for index in indices:
        case = _make_case(index, planning, shipped)
        result, output, elapsed, resolved = _run(case, planning, capsys)
        outcomes[(case.mutation, result if isinstance(result, int) else "raised")] += 1
        seconds[case.mutation] += elapsed
        problem = _problem(case, result, output, resolved)
        if problem:
            failures.append(f"{case.describe()}\n  {problem}")
    summary = (f"seed {SEED}: {len(indices)} cases in {time.monotonic() - started:.1f} s; "
               + ", ".join(f"{m} exit {r}: {n}" for (m, r), n in sorted(outcomes.items(), key=str))
               + "; seconds: " + ", ".join(f"{m} {s:.1f}" for m, s in sorted(seconds.items())))
    print(summary)
    assert not failures, f"{len(failures)} of {len(indices)} cases failed ({summary}):\n\n" + "\n\n".join(failures[:15])
    errors = sum(n for (m, r), n in outcomes.items() if r == 2)
    assert ONLY_CASE or errors >= MIN_ERRORS * len(indices), f"only {errors} of {len(indices)} mutations were refused ({summary})"


# --- what the fuzzer found: each bug once, on its own -------------------------------------

_BOMB = ", ".join(["&l0 [" + ", ".join(["lol"] * 10) + "]"]
                  + [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)])  # 10**9 values
SMOKE = "kind: smoke\nname: fuzz\n"
FOUND: dict[str, tuple[bytes, str, str]] = {  # what -> (recipe file, key named, words in the message)
    "non-UTF-8 byte (was a UnicodeDecodeError)": (SMOKE.encode() + b"description: caf\xe9\n", "description", "UTF-8 text"),
    "raw escape character in the file": (SMOKE.encode() + b"tracking:\n  project: a\x1b[2Jb\n", "tracking.project", "control characters"),
    "10,000 levels of nesting (was a RecursionError)": (
        (SMOKE + "description: " + "[" * 10_000 + "]" * 10_000 + "\n").encode(), "description", "levels of nesting"),
    "billion laughs (expanded until memory ran out)": ((SMOKE + f"description: [{_BOMB}]\n").encode(), "description", "aliases"),
    "alias inside its own anchor (was a RecursionError)": ((SMOKE + "description: &a [x, *a]\n").encode(), "description", "own anchor"),
    "list as a key (was a TypeError)": ((SMOKE + "resources:\n  [a, b]: 1\n").encode(), "resources", "unhashable key"),
    "NUL in extends (was a ValueError)": (('extends: "../base/defaults.yaml\\0"\n' + SMOKE).encode(), "extends", "control characters"),
    "megabyte extends path (minutes in realpath)": (f"extends: {'ab/' * 350_000}x.yaml\n{SMOKE}".encode(), "extends", "4,096 bytes"),
    "over-long output.root (was an OSError while planning)": ((SMOKE + f"output: {{root: /{'x' * 300}}}\n").encode(), "output.root", "255 per name"),
    "kind given as a list (was a TypeError)": (b"kind: [smoke]\nname: fuzz\n", "kind", "one of"),
    "a key that is not text": ((SMOKE + "resources:\n  true: 1\n").encode(), "resources.True", "a key that is text"),
    "escape character in a key, shown escaped": ((SMOKE + 'smoke:\n  "ta\\esks": 3\n').encode(), "smoke.ta\\x1bsks", "control characters"),
    "NaN for a float (was accepted)": ((SMOKE + "smoke: {step_seconds: .nan}\n").encode(), "smoke.step_seconds", "finite number"),
    "10**30 for an int (was accepted)": ((SMOKE + f"smoke: {{steps: {10**30}}}\n").encode(), "smoke.steps", "int64"),
    "true for a number (was taken as 1)": ((SMOKE + "resources: {nodes: true}\n").encode(), "resources.nodes", "a number, not true/false"),
    "0 for a boolean (was taken as false)": ((SMOKE + "smoke: {all_reduce: 0}\n").encode(), "smoke.all_reduce", "true or false"),
    "an unused ${env:VAR,default} with a NUL (was accepted)": (
        (SMOKE + 'output: {root: "${env:AISTACK_RUNS,/r\\0}"}\n').encode(), "output.root", "control characters"),
    "rich markup in a value (was a MarkupError)": (b"kind: smoke\nname: '[/]'\n", "name", "'[/]'"),
    "duplicate key inside a block": ((SMOKE + "resources:\n  time: 3\n  time: 4\n").encode(), "resources.time", "duplicate key 'time'"),
}


@pytest.mark.parametrize("what", sorted(FOUND))
def test_what_the_fuzzer_found_exits_2_naming_the_key(what, planning, capsys):
    text, key, words = FOUND[what]
    recipe = planning / "recipes" / "examples" / "found.yaml"  # next to the shipped ones: ../base/ resolves
    recipe.write_bytes(text)
    try:
        assert _plan(str(recipe)) == 2
    finally:
        recipe.unlink()
    err = capsys.readouterr().err
    assert f"invalid recipe {recipe}" in err and re.search(rf"key '{re.escape(key)}[.']", err) and words in err, err
    assert "Traceback" not in err and "\x1b[2J" not in err and "\x1b" not in err.replace("\x1b[1;31m", "").replace("\x1b[0m", "")


def test_an_over_long_path_met_by_a_validator_names_its_key(planning, capsys):
    """A checkpoint path with a 300-character name: the validator's OSError (File name too
    long) was a traceback."""
    recipe = planning / "recipes" / "eval" / "found.yaml"
    recipe.write_text(f"extends: tinylang.yaml\nevaluate:\n  checkpoints: [{'x' * 300}]\n")
    try:
        assert _plan(str(recipe)) == 2
    finally:
        recipe.unlink()
    err = capsys.readouterr().err
    assert "key 'evaluate.checkpoints.0'" in err and "a path this system can look up (File name too long)" in err, err


def test_a_pipeline_stage_recipe_path_too_long_names_its_key(planning, capsys):
    recipe = planning / "recipes" / "pipelines" / "found.yaml"
    recipe.write_text(f"kind: pipeline\nname: p\nstages:\n  s:\n    recipe: {'x' * 300}.yaml\n")
    try:
        assert _plan(str(recipe)) == 2
    finally:
        recipe.unlink()
    err = capsys.readouterr().err
    assert "key 'stages.s.recipe'" in err and "a recipe file that exists" in err, err


def test_env_errors_of_a_base_file_name_the_base_file(planning, capsys):
    base = planning / "recipes" / "base" / "found.yaml"
    child = planning / "recipes" / "examples" / "found.yaml"
    base.write_text("output:\n  root: ${env:AISTACK_FUZZ_UNSET_VARIABLE}\n")
    child.write_text("extends: ../base/found.yaml\n" + SMOKE)
    try:
        assert _plan(str(child)) == 2
    finally:
        base.unlink()
        child.unlink()
    err = capsys.readouterr().err
    assert "/base/found.yaml: key 'output.root'" in err and "is not set" in err, err


def test_a_whole_recipe_check_does_not_print_the_whole_recipe(planning, capsys):
    assert _plan("recipes/distill/gpt-tiny-sequence.yaml") == 0
    capsys.readouterr()
    assert main(["plan", "recipes/distill/gpt-tiny-sequence.yaml", "sequence=null", "--on", "local"]) == 2
    err = capsys.readouterr().err
    assert "method sequence needs sequence.prompts" in err and "the top level is" not in err, err


def test_a_check_across_keys_names_the_key_to_set(planning, capsys):
    """mode: load without its file: the error named the block (tokenize.tokenizer), not the key."""
    assert main(["plan", "recipes/data/tokenize.yaml", "tokenize.tokenizer.mode=load", "--on", "local"]) == 2
    assert "key 'tokenize.tokenizer.file' = None: mode: load with `file:`" in capsys.readouterr().err
    assert main(["plan", "recipes/data/fineweb.yaml", "filter.language.backend=fasttext", "--on", "local"]) == 2
    assert "key 'filter.language.model_file' = None: backend fasttext" in capsys.readouterr().err

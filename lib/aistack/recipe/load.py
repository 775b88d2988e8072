"""Recipe files -> validated Recipe objects.

Order of resolution: YAML (safe_load) -> `extends:` chain (deep merge, child wins)
-> command-line dot-overrides -> `${env:VAR}` / `${env:VAR,default}` interpolation
-> pydantic validation of the selected kind. Every failure raises RecipeError naming
the file that set the bad key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aistack.recipe.errors import MISSING, REDACTED, RecipeError, SecretValue
from aistack.recipe.kinds import all_kinds
from aistack.recipe.schema import Recipe

OVERRIDES_SOURCE = "command-line override"
_OVERRIDE_RE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*)=(?P<value>.*)$", re.DOTALL)
_ENV_RE = re.compile(r"\$\{env:(?P<var>[A-Za-z_][A-Za-z0-9_]*)(,(?P<default>[^}]*))?\}")
# Env vars whose values must never be copied into a recipe (and from there into the run
# directory, W&B config or an sbatch script). Jobs read them from their environment.
_STAGE_REF_RE = re.compile(r"\$\{(?P<ref>stages\.[^}]*)\}")
SECRET_VAR_RE = re.compile(r"(KEY|TOKEN(?!IZER)|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)


@dataclass
class LoadedRecipe:
    recipe: Recipe
    path: Path
    data: dict[str, Any]  # resolved plain data, as validated
    sources: dict[str, str] = field(default_factory=dict)  # key path -> file that set it
    # Absolute path prefixes replaced by a stable token before hashing (a pipeline's own
    # directory), so the identity does not depend on where the runs live.
    path_aliases: dict[str, str] = field(default_factory=dict)
    # Validated with paths an upstream stage will write left unchecked: the job validates
    # it again on the node (from recipe.yaml) instead of trusting the planned object.
    deferred: bool = False
    # Run directories of upstream stages read through a location that does not name them (an
    # output moved to s3://): part of the identity, so a changed upstream reruns this stage.
    upstream_runs: list[str] = field(default_factory=list)
    # The input files as planned (KindSpec.inputs: paths, sizes, mtimes): part of the
    # identity, so a changed input folder plans a new run instead of reshuffling this one.
    input_manifest: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        return self.recipe.kind

    def identity_hash(self) -> str:
        """Hash of what the recipe computes (not where it runs): names the run directory."""
        ident = {k: v for k, v in self.recipe.model_dump(mode="json").items() if k not in Recipe.PLACEMENT_KEYS}
        for dotted in type(self.recipe).NON_IDENTITY_KEYS:
            *parents, leaf = dotted.split(".")
            node = ident
            for part in parents:
                node = node.get(part, {})
            node.pop(leaf, None)
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
        for prefix, token in self.path_aliases.items():
            blob = blob.replace(prefix, token)
        if self.upstream_runs:
            blob += json.dumps(sorted(self.upstream_runs))
        if self.input_manifest and self.input_manifest.get("files"):
            blob += json.dumps(self.input_manifest["files"], sort_keys=True)
        if self.input_manifest and self.input_manifest.get("listings"):
            blob += json.dumps(self.input_manifest["listings"], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    path = Path(path)
    layers = _read_with_extends(path, chain=())
    layers.append((OVERRIDES_SOURCE, parse_overrides(overrides, str(path))))
    # refs=None: ${stages...} references stay for a pipeline's stages to resolve
    loaded = _resolve(path, layers, refs=None)
    if loaded.kind != "pipeline":
        for ref in sorted(stage_refs_in(loaded.data)):
            raise RecipeError.single(str(path), "", "${" + ref + "}", "no ${stages...} reference: only a pipeline's stages may name an earlier stage")
    return loaded


def load_stage(
    source: Path | dict[str, Any], file: Path, key: str, overrides: dict[str, Any], refs: dict[str, str],
) -> LoadedRecipe:
    """A pipeline stage: a recipe file (or an inline recipe set at `key` of `file`), with
    the stage's overrides on top and `${stages.NAME.output}` references replaced by `refs`."""
    if isinstance(source, dict):
        inline = copy.deepcopy(source)
        parents = inline.pop("extends", [])
        parents = [parents] if isinstance(parents, str) else parents
        if not isinstance(parents, list) or not all(_usable_path(p) for p in parents):
            raise RecipeError.single(str(file), f"{key}.extends", parents, _EXTENDS_EXPECTED)
        layers: list[tuple[str, dict]] = []
        for parent in parents:
            parent_path = Path(parent) if os.path.isabs(parent) else file.parent / parent
            layers += _read_with_extends(parent_path, (file.resolve(),), referenced_from=(str(file), f"{key}.extends"))
        layers.append((f"{file} ({key})", inline))
        path = file
    else:
        path = Path(source)
        layers = _read_with_extends(path, chain=(), referenced_from=(str(file), key))
    layers.append((f"{file} (overrides of {key})", overrides))
    return _resolve(path, layers, refs)


def _resolve(path: Path, layers: list[tuple[str, dict]], refs: dict[str, str] | None) -> LoadedRecipe:
    merged: dict[str, Any] = {}
    for _, layer in layers:
        merged = deep_merge(merged, layer)
    sources = _provenance(layers)
    _refuse_unsafe_scalars(merged, sources, str(path))  # as written (an unused ${env:VAR,default} too)
    merged = _interpolate(merged, sources, default_file=str(path), keypath="", refs=refs)
    _refuse_unsafe_scalars(merged, sources, str(path))  # and with ${env:...} replaced
    recipe = validate(merged, sources, str(path))
    return LoadedRecipe(recipe=recipe, path=path, data=recipe.model_dump(mode="json"), sources=sources)


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_FREE_TEXT_KEYS = ("description",)  # prose: may hold newlines and tabs, never reaches a script
MAX_INT = 2**63 - 1  # what a job's int64 (torch, numpy, Slurm) holds; pydantic's own bound for floats given as ints


def _refuse_unsafe_scalars(node: Any, sources: dict[str, str], file: str, keypath: str = "") -> None:
    """A newline in a path or a name would end an #SBATCH line and run the rest as shell:
    no string from a file, an override or ${env:...} may hold a control character. Keys are
    text, and no integer is too large for the int64 of the job that reads it (10**30 steps)."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{keypath}.{key}" if keypath else str(key)
            if not isinstance(key, str):  # `1:`, `true:`, `null:` or `[a, b]:` unquoted
                raise RecipeError.single(_owner(path, sources, file), path, key, "a key that is text (write it in quotes)")
            if _CONTROL_RE.search(key):
                raise RecipeError.single(_owner(path, sources, file), path, key, "a key without control characters")
            _refuse_unsafe_scalars(value, sources, file, path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_unsafe_scalars(value, sources, file, f"{keypath}.{i}")
    elif isinstance(node, int) and not isinstance(node, bool) and abs(node) > MAX_INT:
        raise RecipeError.single(_owner(keypath, sources, file), keypath, node, f"a whole number of at most {MAX_INT:,} (int64)")
    elif isinstance(node, str) and _CONTROL_RE.search(node):
        allowed = keypath.split(".")[-1] in _FREE_TEXT_KEYS and not _CONTROL_RE.search(node.replace("\n", "").replace("\t", ""))
        if not allowed:
            raise RecipeError.single(_owner(keypath, sources, file), keypath, node,
                                     "a value without control characters (newline, tab, escape, ...)")


def validate(data: dict[str, Any], sources: dict[str, str], file: str) -> Recipe:
    kinds = all_kinds()
    kind = data.get("kind", MISSING)
    if not isinstance(kind, str) or kind not in kinds:
        expected = "one of " + ", ".join(sorted(kinds))
        raise RecipeError.single(file, "kind", kind, expected)
    try:
        return kinds[kind].recipe.model_validate(data)
    except OSError as err:  # a validator looked up a path no system call takes (a name too long, ...)
        key = _key_holding(data, str(err.filename or ""))
        expected, owner = f"a path this system can look up ({err.strerror or err})", _owner(key, sources, file)
        raise RecipeError.single(file, key, err.filename, expected + (f" (set in {owner})" if owner != file else "")) from None
    except ValidationError as err:
        problems: list[tuple[str, object, str]] = []
        for item in err.errors():
            key = ".".join(str(p) for p in item["loc"])
            # a check of the whole recipe names its keys itself: no need to print the recipe
            value = item.get("input", MISSING) if item["type"] != "missing" and key else MISSING
            if isinstance((item.get("ctx") or {}).get("error"), SecretValue):
                value = REDACTED
            expected = _describe(item)
            owner = _owner(key, sources, file)
            if owner != file:
                expected += f" (set in {owner})"
            problems.append((key, value, expected))
        raise RecipeError(file, problems) from None


def _key_holding(data: Any, filename: str) -> str:
    """The key whose value is (the longest) part of `filename`, as given or as the path it
    names (`~` expanded, `a//b/` normalized): "" if none."""
    best: tuple[str, int] = ("", 0)

    def walk(node: Any, keypath: str) -> None:
        nonlocal best
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            path = f"{keypath}.{key}" if keypath else str(key)
            if isinstance(value, str) and value and len(value) > best[1] \
                    and (value in filename or os.path.normpath(os.path.expanduser(value)) in filename):
                best = (path, len(value))
            walk(value, path)

    walk(data, "")
    return best[0]


def _describe(item: dict[str, Any]) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; `aistack plan` shows every key of this kind)"
    if kind == "missing":
        return "required key is missing"
    message = item["msg"]
    return message.removeprefix("Value error, ")


def _owner(key: str, sources: dict[str, str], default: str) -> str:
    parts = key.split(".")
    while parts:
        found = sources.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return default


# --- YAML and extends ---------------------------------------------------------------


MAX_DEPTH = 100  # nesting levels of one YAML document (recipes use fewer than ten)
MAX_VALUES = 1_000_000  # values of one YAML document once its aliases are expanded


class _YAMLTooLarge(yaml.MarkedYAMLError):
    """A document nested too deep, or too large once its aliases are expanded (the "billion
    laughs": a few lines of `&anchor` / `*alias` that stand for 10**9 values)."""

    def __init__(self, key: str, problem: str, mark):
        super().__init__(problem=problem, problem_mark=mark)
        self.key = key


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: YAML would
    keep the last silently (`smoke: {tasks: 3}` then `smoke: {steps: 5}` loses tasks).
    A document nested deeper than MAX_DEPTH, holding more than MAX_VALUES values once its
    aliases are expanded, or an alias inside its own anchor (a value containing itself) is
    refused while it is composed, naming the key, before anything recurses into it."""

    def __init__(self, stream):
        super().__init__(stream)
        self.keys: list[str | None] = []  # key path of the node being composed (None: a key itself)
        self.sizes: dict[int, int] = {}  # id(node) -> its values once aliases are expanded
        self.locate: int | None = None  # _key_at(): find the scalar holding this character
        self.located: str | None = None

    def key_path(self) -> str:
        keys = [k for k in self.keys if k is not None]
        return ".".join(keys if len(keys) <= 8 else [*keys[:8], "..."])  # 100 levels deep: where it starts

    def compose_node(self, parent, index):
        # a mapping value is under its key's text, a sequence item under its index; a key itself adds nothing
        self.keys.append(index.value if isinstance(index, yaml.ScalarNode) else str(index) if isinstance(index, int) else None)
        try:
            event = self.peek_event()
            if len(self.keys) > MAX_DEPTH:
                raise _YAMLTooLarge(self.key_path(), f"at most {MAX_DEPTH} levels of nesting", event.start_mark)
            if isinstance(event, yaml.AliasEvent):
                anchored = self.anchors.get(event.anchor)
                if anchored is not None and id(anchored) not in self.sizes:  # still being composed
                    raise _YAMLTooLarge(self.key_path(), f"no alias inside its own anchor (*{event.anchor} in &{event.anchor})",
                                       event.start_mark)
            node = super().compose_node(parent, index)
            self._count(node)
            if self.locate is not None and self.located is None:
                self._locate(node, is_key=index is None and isinstance(parent, yaml.MappingNode))
            return node
        finally:
            self.keys.pop()

    def _locate(self, node, is_key: bool) -> None:
        """_key_at(): the node starting at `locate`, or the scalar holding it (a key names itself)."""
        start, end = node.start_mark.index, max(node.end_mark.index, node.start_mark.index + 1)
        if start == self.locate or (isinstance(node, yaml.ScalarNode) and start <= self.locate < end):
            key = node.value if is_key and isinstance(node, yaml.ScalarNode) else None
            self.located = ".".join(k for k in (*self.keys, key) if k is not None)

    def _count(self, node) -> None:
        size = self.sizes.get(id(node))
        if size is None:
            if isinstance(node, yaml.ScalarNode):
                size = 1
            else:
                children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
                size = 1 + sum(self.sizes[id(child)] for child in children)
            self.sizes[id(node)] = size
        if size > MAX_VALUES:
            raise _YAMLTooLarge(self.key_path(), f"at most {MAX_VALUES:,} values once YAML aliases are expanded", node.start_mark)

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)):  # others: unhashable, refused by SafeLoader
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (YAML would keep only the last)", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no object construction


def _key_at(text: str, index: int) -> str:
    """The key path of the value holding character `index` of a YAML document ("" if none)."""
    loader = _UniqueKeyLoader(text)
    loader.locate = index
    try:
        loader.get_single_node()
    except yaml.YAMLError:
        pass
    finally:
        loader.dispose()
    return loader.located or ""


def _line_column(text: str, index: int) -> str:
    line, column = text.count("\n", 0, index) + 1, index - text.rfind("\n", 0, index)
    return f"line {line}, column {column}"


def _read_yaml(path: Path, referenced_from: tuple[str, str] | None) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as err:  # missing, a directory, unreadable, a name too long for this system
        missing = isinstance(err, (FileNotFoundError, IsADirectoryError, NotADirectoryError))
        if referenced_from:
            file, key = referenced_from
            raise RecipeError.single(file, key, str(path), "file not found" if missing else f"a readable file ({err.strerror})") from None
        raise RecipeError.single(str(path), "", str(path), "recipe file not found" if missing else f"a readable recipe file ({err.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        text = raw.decode("utf-8", errors="replace")  # each bad byte sequence one U+FFFD, found by _key_at
        index = len(raw[: err.start].decode("utf-8"))
        raise RecipeError.single(str(path), _key_at(text, index), raw[err.start : err.end],
                                 f"UTF-8 text (not at {_line_column(text, index)})") from None
    try:
        data = safe_load_unique(text)
    except yaml.reader.ReaderError as err:  # a character YAML does not allow: a control character
        index = err.position
        key = _key_at(text[:index] + "\ufffd" + text[index + 1 :], index)
        raise RecipeError.single(str(path), key, text[index], f"YAML text without control characters (at {_line_column(text, index)})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        # where it happened (a duplicate key, one too deep, ...), with its line as the value
        key = getattr(err, "key", None) or (_key_at(text, mark.index) if mark else "")
        value = text.splitlines()[mark.line].strip() if key and mark else MISSING
        raise RecipeError.single(str(path), key, value, f"not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError.single(str(path), "", data, "a mapping of keys at the top level")
    return data


_EXTENDS_EXPECTED = "a path or list of paths to base recipes (at most 4,096 bytes each, no control characters)"


def _usable_path(value: Any) -> bool:
    """A path a system call takes (resolving a megabyte of path takes minutes, a NUL raises)."""
    return isinstance(value, str) and len(value.encode()) <= 4096 and not _CONTROL_RE.search(value)


def _read_with_extends(path: Path, chain: tuple[Path, ...], referenced_from=None) -> list[tuple[str, dict]]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise RecipeError.single(str(chain[-1]), "extends", str(path), f"an extends chain without cycles ({cycle})")
    data = _read_yaml(path, referenced_from)
    parents = data.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(_usable_path(p) for p in parents):
        raise RecipeError.single(str(path), "extends", parents, _EXTENDS_EXPECTED)
    layers: list[tuple[str, dict]] = []
    for parent in parents:
        parent_path = (path.parent / parent) if not os.path.isabs(parent) else Path(parent)
        layers += _read_with_extends(parent_path, (*chain, resolved), referenced_from=(str(path), "extends"))
    layers.append((str(path), data))
    return layers


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else in `update` replaces what `base` had."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _provenance(layers: list[tuple[str, dict]]) -> dict[str, str]:
    sources: dict[str, str] = {}

    def walk(source: str, node: dict, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            sources[path] = source
            if isinstance(value, dict):
                walk(source, value, path + ".")

    for source, layer in layers:
        walk(source, layer, "")
    return sources


# --- overrides ----------------------------------------------------------------------


def parse_overrides(overrides, file: str) -> dict[str, Any]:
    """`train.lr=3e-4 resources.nodes=4` -> nested dict; values parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for text in overrides:
        match = _OVERRIDE_RE.match(text)
        if not match:
            raise RecipeError.single(
                file, text.split("=", 1)[0], text, "a command-line override of the form key.path=value (e.g. train.lr=3e-4)"
            )
        if _CONTROL_RE.search(match["value"]) and match["key"].split(".")[-1] not in _FREE_TEXT_KEYS:
            # before YAML, which would fold a newline into a space
            raise RecipeError.single(file, match["key"], match["value"], "a value without control characters (newline, tab, escape, ...)")
        try:
            value = safe_load_unique(match["value"]) if match["value"] != "" else ""  # bounded: no alias bomb
        except yaml.YAMLError:
            value = match["value"]
        node = out
        parts = match["key"].split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError.single(file, match["key"], text, "a command-line override whose key path does not cross a value")
        node[parts[-1]] = value
    return out


# --- ${env:VAR} interpolation -------------------------------------------------------


def _env_value(match: re.Match[str], node: str, key: str, file: str) -> str:
    var = match["var"]
    if SECRET_VAR_RE.search(var):
        raise RecipeError.single(
            file, key, node,
            f"${{env:{var}}} looks like a secret; secrets are read by the job from its environment and never copied into a recipe",
        )
    value = os.environ.get(var, match["default"])
    if value is None:
        raise RecipeError.single(file, key, node, f"environment variable {var} is not set (or give a default: ${{env:{var},DEFAULT}})")
    if _CONTROL_RE.search(value) and key.split(".")[-1] not in _FREE_TEXT_KEYS:
        raise RecipeError.single(file, key, value, f"${{env:{var}}} without control characters (newline, tab, escape, ...)")
    return value


def _replace_stage_refs(text: str, refs: dict[str, str], file: str, key: str) -> str:
    def replace(match: re.Match[str]) -> str:
        ref = match["ref"]
        if ref not in refs:
            known = ", ".join("${" + r + "}" for r in sorted(refs)) or "none: only a pipeline stage may name an earlier stage"
            raise RecipeError.single(file, key, text, f"a reference to an earlier stage's output ({known})")
        return refs[ref]

    return _STAGE_REF_RE.sub(replace, text)


def stage_refs_in(node: Any) -> set[str]:
    """Every `stages.NAME...` reference in a (nested) recipe value."""
    if isinstance(node, dict):
        return set().union(*(stage_refs_in(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(stage_refs_in(v) for v in node)) if node else set()
    return {m["ref"] for m in _STAGE_REF_RE.finditer(node)} if isinstance(node, str) else set()


def _interpolate(node: Any, sources: dict[str, str], default_file: str, keypath: str, refs: dict[str, str] | None = None) -> Any:
    """Replace ${env:VAR} (and, in a pipeline's stages, ${stages.NAME.output[.KEY]});
    errors name the recipe file (and the file that set the key)."""
    if isinstance(node, dict):
        return {k: _interpolate(v, sources, default_file, f"{keypath}{k}.", refs) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, sources, default_file, keypath, refs) for v in node]
    if not isinstance(node, str) or "${" not in node:
        return node
    key = keypath.rstrip(".")
    owner = _owner(key, sources, default_file)
    if _STAGE_REF_RE.search(node):
        if refs is None:  # a pipeline's own file: its stages resolve these later
            return _STAGE_REF_RE.sub(lambda m: m.group(0), _ENV_RE.sub(lambda m: _env_value(m, node, key, owner), node))
        node = _replace_stage_refs(node, refs, owner, key)
        if "${" not in node:
            return node

    text = _ENV_RE.sub(lambda m: _env_value(m, node, key, owner), node)
    if "${" in text:
        raise RecipeError.single(owner, key, node, "interpolations of the form ${env:VAR} or ${env:VAR,default}")
    # A whole-value interpolation keeps YAML typing: "${env:NODES}" -> 4, not "4".
    if _ENV_RE.fullmatch(node):
        try:
            return safe_load_unique(text)
        except yaml.YAMLError:
            return text
    return text

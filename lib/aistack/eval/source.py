"""What a checkpoint is: its weights, the model block that built it, its tokenizer, its step.

An aistack checkpoint (`step_000040/`, or a directory with a `latest` pointer, or a
pretrain run directory) does not hold its architecture: the pretrain recipe does. It is
found by walking up from the checkpoint to the run directory's recipe.yaml, so pointing
an evaluation at a run is enough. A Hugging Face folder (config.json) is its own source;
so is a NeMo 2 checkpoint (weights/ + context/: the network from context/model.yaml, the
tokenizer from context/nemo_tokenizer/).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_STEP_RE = re.compile(r"^step_(\d{6,})$")


@dataclass(frozen=True)
class Source:
    path: Path  # a step_* directory (aistack) or a model folder (hf)
    format: str  # "aistack" | "hf" | "nemo"
    step: int | None
    model_cfg: Any  # aistack.kinds.pretrain.ModelConfig (None for hf)
    tokenizer: Path | None
    run: str = ""  # the run directory it came from (for tables and plots)
    init_seed: int | None = None  # set: not these weights, a fresh init of the same model with this seed (step 0)


UNTRAINED = "untrained:"  # a checkpoints entry evaluated as its run's untrained model (evaluate.untrained)


def untrained(source: Source) -> Source:
    """The same model untrained: the run's model block, freshly initialised with the run's
    train.seed (the pretraining's step 0, up to the layer implementation: evaluated at TP 1 x PP 1
    with megatron's local layers), its tokenizer; the weights at `source.path` are not read."""
    from dataclasses import replace

    if source.format == "hf":
        raise ValueError(f"{source.path}: an untrained baseline needs an aistack run (its model block and seed), not an HF folder")
    found = recipe_above(source.path)
    seed = ((found[1] if found else {}).get("train") or {}).get("seed", 1234)
    return replace(source, step=0, init_seed=int(seed))


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / "metadata.json").exists()


def checkpoint_dirs(spec: str | Path, all_steps: bool = False) -> list[Path]:
    """A checkpoint, a checkpoints root (`latest`), a pretrain task or run directory, or
    an HF folder -> the step directories to evaluate (every complete one with all_steps)."""
    from aistack.model import checkpoint, nemo

    path = Path(spec).expanduser().absolute()
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint or run directory at {path}")
    if is_hf_folder(path) or (path / "metadata.json").exists() or nemo.is_nemo_checkpoint(path):
        return [path]
    roots = [path] if (path / checkpoint.LATEST).exists() else sorted(path.glob("**/checkpoints"))
    roots = [r for r in roots if (r / checkpoint.LATEST).exists()]
    if not roots:
        raise FileNotFoundError(f"{path}: no checkpoint (no step_*/metadata.json, no 'latest', no */checkpoints/latest below)")
    if len(roots) > 1:
        raise ValueError(f"{path}: several checkpoint roots below ({', '.join(map(str, roots))}): name one")
    root = roots[0]
    if not all_steps:
        return [checkpoint.latest(root)]
    return [checkpoint.step_dir(root, step) for step in checkpoint.saved_steps(root)]


def recipe_above(path: Path) -> tuple[Path, dict] | None:
    """The nearest run directory's recipe.yaml above `path` (file, data)."""
    for parent in [path, *path.parents]:
        candidate = parent / "recipe.yaml"
        if candidate.is_file():
            return candidate, yaml.safe_load(candidate.read_text())
    return None


def describe(path: str | Path, model: dict | None = None, tokenizer: str | None = None) -> Source:
    """The Source of one checkpoint directory. `model` / `tokenizer` override the recipe's."""
    from aistack.model.config import ModelConfig
    from aistack.model import nemo

    path = Path(path).absolute()
    if nemo.is_nemo_checkpoint(path):
        cfg = ModelConfig.model_validate(model if model is not None else nemo.model_block(path))
        if model is not None:
            nemo.check_model(path, cfg)
        tok = Path(tokenizer) if tokenizer else nemo.tokenizer_file(path)
        return Source(path, "nemo", None, cfg, tok, run=path.name)
    if is_hf_folder(path):
        tok = Path(tokenizer) if tokenizer else (path / "tokenizer.json" if (path / "tokenizer.json").exists() else None)
        return Source(path, "hf", _hf_step(path), None, tok, run=path.name)
    found = recipe_above(path)
    data = found[1] if found else {}
    if model is None:
        if "model" not in data:
            where = found[0] if found else "any parent directory"
            raise ValueError(f"{path}: no model block to build it from (none in {where}); set evaluate.model")
        model = data["model"]
    if tokenizer is None:
        from aistack.model.estimate import recipe_tokenizer

        tokenizer = recipe_tokenizer(data)
    meta = path / "aistack.json"
    step = json.loads(meta.read_text()).get("step") if meta.exists() else None
    if step is None and (m := _STEP_RE.match(path.name)):
        step = int(m.group(1))
    run = found[0].parent.name if found else path.parent.name
    return Source(path, "aistack", step, ModelConfig.model_validate(model), Path(tokenizer) if tokenizer else None, run=run)


def _hf_step(path: Path) -> int | None:
    meta = path / "aistack_export.json"
    if meta.exists():
        return json.loads(meta.read_text()).get("step")
    return None


def eod_id(tokenizer_json: Path) -> int:
    from aistack.model.dataset import Tokenizer

    return Tokenizer.from_file(tokenizer_json).eod


def load_gpt(source: Source, device: str | None = None, dtype: Any = None):
    """A TP=1 PP=1 GPTModel with the checkpoint's weights, in eval mode, on `device`."""
    import torch

    from aistack.model import checkpoint
    from aistack.model.dataset import Tokenizer

    if source.format == "hf":
        raise ValueError(f"{source.path} is a Hugging Face folder, not an aistack checkpoint")
    if source.tokenizer is None and not source.model_cfg.vocab_size:
        raise ValueError(f"{source.path}: no tokenizer and no model.vocab_size: the vocabulary size is unknown")
    _import_transformers_before_cpu_compat()
    vocab = source.model_cfg.vocab_size or Tokenizer.from_file(source.tokenizer).vocab_size
    if source.init_seed is not None:
        model = fresh_model(source.model_cfg, vocab, source.init_seed)
    else:
        model = checkpoint.load_model_alone(source.path, source.model_cfg, vocab)
    model.eval()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device=device, dtype=dtype or torch.float32)
    return model


def fresh_model(model_cfg: Any, vocab_size: int, seed: int):
    """An untrained TP=1 PP=1 fp32 GPTModel (megatron's local layers), initialised with `seed`."""
    from aistack.model.dist.megatron import init_model_parallel, set_seeds
    from aistack.model.config import ParallelConfig
    from aistack.model import cpu_compat, gpt
    from aistack.model.layout import padded_vocab_size

    init_model_parallel(1, 1)
    set_seeds(seed)
    with cpu_compat.device_scope():
        return gpt.build_gpt(model_cfg, ParallelConfig(tensor=1), True, True, padded_vocab_size(vocab_size, model_cfg, 1),
                             "fp32", use_te=False)


def _import_transformers_before_cpu_compat() -> None:
    """cpu_compat replaces torch.cuda.Stream (and friends) with functions; transformers
    evaluates `torch.cuda.Stream | None` annotations when its generation modules are first
    imported, which then fails. Import them while torch.cuda is intact (only without a GPU)."""
    import torch

    if torch.cuda.is_available():
        return
    try:
        import transformers.activations  # noqa: F401  (pulls in generation.continuous_batching)
    except ImportError:
        pass

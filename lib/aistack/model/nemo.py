"""NeMo 2 checkpoints, read and written without NeMo in this environment.

    <ckpt>/weights/      megatron-core dist_checkpointing (torch_dist), every key under "module."
                         (NeMo's Lightning module wraps the GPTModel as `.module`)
    <ckpt>/context/      the serialized experiment: model.yaml and io.json (the LlamaModel /
                         GPTModel and its config), nemo_tokenizer/ (the tokenizer's files)

The weights are megatron-core's own sharded format, so they load through aistack's
checkpoint.load at any TP/PP layout, with the key prefix added. The network comes from
context/model.yaml; a recipe's model block that differs is named key by key before anything
is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHTS = "weights"
CONTEXT = "context"
PREFIX = "module."


def is_nemo_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / WEIGHTS / "metadata.json").is_file() and (path / CONTEXT).is_dir()


def without_extra_state(state: Any) -> Any:
    """The sharded state dict without its ShardedObjects (Transformer Engine's _extra_state)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    if isinstance(state, dict):
        return {k: without_extra_state(v) for k, v in state.items() if not isinstance(v, ShardedObject)}
    if isinstance(state, list):
        return [without_extra_state(v) for v in state if not isinstance(v, ShardedObject)]
    return state


# --- the network: context/model.yaml <-> the recipe's model block ---------------------------
# NeMo's GPTConfig/LlamaConfig are megatron TransformerConfigs; model.yaml lists every field.
# (recipe key, NeMo config key) of what decides the weights' shapes and the computation.
_FIELDS = [
    ("model.num_layers", "num_layers"),
    ("model.hidden_size", "hidden_size"),
    ("model.num_attention_heads", "num_attention_heads"),
    ("model.num_query_groups", "num_query_groups"),
    ("model.ffn_hidden_size", "ffn_hidden_size"),
    ("model.norm_epsilon", "layernorm_epsilon"),
    ("model.untie_embeddings", "share_embeddings_and_output_weights"),
]
# What each aistack architecture is in NeMo's terms (the rest of model.yaml is free).
_ARCH = {
    "llama": {"normalization": "RMSNorm", "activation": "silu", "gated_linear_unit": True,
              "position_embedding_type": "rope", "add_bias_linear": False},
    "gpt2": {"normalization": "LayerNorm", "activation": "gelu", "gated_linear_unit": False,
             "position_embedding_type": "learned_absolute", "add_bias_linear": True},
}


def read_config(path: str | Path) -> dict[str, Any]:
    """The model's config block of context/model.yaml (a NeMo LlamaConfig / GPTConfig)."""
    import yaml

    file = Path(path) / CONTEXT / "model.yaml"
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{file}: not a readable NeMo model description ({err})") from None
    config = (data or {}).get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict) or "num_layers" not in config:
        raise ValueError(f"{file}: no model config (expected a 'config' block with num_layers, hidden_size, ...)")
    return config


def _activation(config: dict) -> str | None:
    """`activation_func: {_target_: torch.nn.functional.silu, _call_: false}` -> "silu"."""
    act = config.get("activation_func")
    target = act.get("_target_") if isinstance(act, dict) else act
    return str(target).rsplit(".", 1)[-1] if target else None


def nemo_arch(config: dict) -> tuple[str | None, dict[str, Any]]:
    """The aistack arch the config is, or None and what it has."""
    have = {"normalization": config.get("normalization"), "activation": _activation(config),
            "gated_linear_unit": bool(config.get("gated_linear_unit")),
            "position_embedding_type": config.get("position_embedding_type"),
            "add_bias_linear": bool(config.get("add_bias_linear"))}
    for arch, want in _ARCH.items():
        if have == want:
            return arch, have
    return None, have


def model_block(path: str | Path) -> dict[str, Any]:
    """The aistack model block of a NeMo checkpoint (what `evaluate`, `bench` build it from)."""
    config = read_config(path)
    arch, have = nemo_arch(config)
    if arch is None:
        raise ValueError(f"{Path(path) / CONTEXT / 'model.yaml'}: a network aistack does not build: {have} "
                         f"(llama is {_ARCH['llama']}, gpt2 is {_ARCH['gpt2']})")
    block: dict[str, Any] = {"arch": arch, "seq_length": int(config.get("seq_length") or 2048),
                             "rotary_base": float(config.get("rotary_base") or 10000.0)}
    for key, nemo_key in _FIELDS:
        value = config.get(nemo_key)
        if key == "model.untie_embeddings":
            value = not value
        if value is not None:
            block[key.removeprefix("model.")] = value
    return block


def model_problems(path: str | Path, model_cfg: Any) -> list[tuple[str, Any, str, Any]]:
    """(recipe key, its value, model.yaml key, its value) for each way they differ."""
    config = read_config(path)
    arch, have = nemo_arch(config)
    if arch != model_cfg.arch:
        return [("model.arch", model_cfg.arch, "config (normalization, activation, ...)", have)]
    ours = {"num_layers": model_cfg.num_layers, "hidden_size": model_cfg.hidden_size,
            "num_attention_heads": model_cfg.num_attention_heads,
            "num_query_groups": model_cfg.num_query_groups or model_cfg.num_attention_heads,
            "ffn_hidden_size": model_cfg.ffn_size, "layernorm_epsilon": model_cfg.norm_epsilon,
            "share_embeddings_and_output_weights": model_cfg.tied_embeddings}
    theirs = {key: config.get(key) for key in ours}
    theirs["num_query_groups"] = theirs["num_query_groups"] or config.get("num_attention_heads")
    theirs["ffn_hidden_size"] = theirs["ffn_hidden_size"] or 4 * int(config.get("hidden_size") or 0)
    problems = [(recipe_key, ours[key], key, theirs[key]) for recipe_key, key in _FIELDS
                if not _same(ours[key], theirs[key])]
    if arch == "llama" and not _same(model_cfg.rotary_base, config.get("rotary_base", 10000)):
        problems.append(("model.rotary_base", model_cfg.rotary_base, "rotary_base", config.get("rotary_base")))
    heads = int(config.get("num_attention_heads") or 1)
    if config.get("kv_channels") not in (None, int(config.get("hidden_size") or 0) // heads):
        problems.append(("(head size)", model_cfg.hidden_size // model_cfg.num_attention_heads, "kv_channels",
                         config.get("kv_channels")))
    if arch == "gpt2" and model_cfg.seq_length > int(config.get("seq_length") or 0):  # learned positions
        problems.append(("model.seq_length", model_cfg.seq_length, "seq_length", config.get("seq_length")))
    return problems


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return b is not None and abs(float(a) - float(b)) <= 1e-9 * max(abs(float(a)), 1.0)
    return a == b


class NemoModelMismatch(ValueError):
    def __init__(self, path: Path, problems: list[tuple[str, Any, str, Any]]):
        self.problems = problems
        details = "; ".join(f"key '{k}' = {v!r} but model.yaml config.{nk} = {nv!r}" for k, v, nk, nv in problems)
        super().__init__(f"{path}: the recipe's model block does not match {path / CONTEXT / 'model.yaml'}: {details}")


def check_model(path: str | Path, model_cfg: Any) -> None:
    problems = model_problems(path, model_cfg)
    if problems:
        raise NemoModelMismatch(Path(path), problems)


def tokenizer_file(path: str | Path) -> Path | None:
    """The tokenizer.json NeMo keeps with the model (context/nemo_tokenizer/), if any."""
    found = sorted((Path(path) / CONTEXT).glob("**/tokenizer.json"))
    return found[0] if found else None


# --- writing one ------------------------------------------------------------------------


def save_weights(model: Any, out_dir: str | Path) -> Path:
    """The model's weights as NeMo keeps them: megatron's dist checkpoint of the GPTModel's
    sharded state dict, keys under "module." (with `_extra_state`, which NeMo's strict load
    asks for). Collective over the model-parallel group the model was built in."""
    from megatron.core import dist_checkpointing

    from aistack.model import cpu_compat
    from aistack.model.gpt import unwrap

    weights = Path(out_dir) / WEIGHTS
    weights.mkdir(parents=True, exist_ok=True)
    with cpu_compat.device_scope():
        dist_checkpointing.save({"state_dict": unwrap([model])[0].sharded_state_dict(prefix=PREFIX)}, str(weights))
    return weights


# NeMo 2.7's own serialization of a LlamaModel checkpoint context (TrainerContext: model,
# trainer, extra), as its HF importer writes it: io.json is what NeMo loads (fiddle), model.yaml
# what people (and read_config) read. Export fills in this model's config values.
_TEMPLATES = Path(__file__).parent / "nemo_templates"


def _config_values(model_cfg: Any, vocab_size: int) -> dict[str, Any]:
    heads = model_cfg.num_attention_heads
    return {"num_layers": model_cfg.num_layers, "hidden_size": model_cfg.hidden_size, "num_attention_heads": heads,
            "num_query_groups": model_cfg.num_query_groups or heads, "ffn_hidden_size": model_cfg.ffn_size,
            "kv_channels": model_cfg.hidden_size // heads, "layernorm_epsilon": model_cfg.norm_epsilon,
            "share_embeddings_and_output_weights": model_cfg.tied_embeddings, "rotary_base": float(model_cfg.rotary_base),
            "seq_length": model_cfg.seq_length, "init_method_std": model_cfg.init_method_std, "vocab_size": vocab_size,
            "make_vocab_size_divisible_by": model_cfg.make_vocab_size_divisible_by,
            "hidden_dropout": model_cfg.hidden_dropout, "attention_dropout": model_cfg.attention_dropout}


def _fill_io(values: dict[str, Any]) -> dict[str, Any]:
    import json

    io = json.loads((_TEMPLATES / "llama_io.json").read_text())
    config = io["objects"]["llama_config_1"]
    present = {}
    for name, node in config["items"]:  # ["Attr(name='num_layers')", {"type": "leaf", "value": 2, ...}]
        key = name[len("Attr(name='"):-2]
        if key in values and node.get("type") == "leaf":
            node["value"] = values[key]
            present[key] = True
    for key in values.keys() - present.keys():  # a field the template leaves at LlamaConfig's default
        config["items"].append([f"Attr(name='{key}')", {"type": "leaf", "value": values[key],
                                                         "paths": [f"<root>.model.config.{key}"]}])
        io["objects"]["tuple_2"]["items"].append([f"Index(index={len(io['objects']['tuple_2']['items'])})", key])
    return io


def export_nemo(model: Any, model_cfg: Any, vocab_size: int, out_dir: str | Path, tokenizer_json: str | Path | None,
                chat_template: str | None = None) -> Path:
    """A NeMo 2 checkpoint folder of this model (llama): weights/ in NeMo's key layout, context/
    with NeMo's io.json and model.yaml for this config and the tokenizer as nemo_tokenizer/."""
    import json

    import yaml

    from aistack.model.export_hf import _save_tokenizer

    if model_cfg.arch != "llama":
        raise ValueError(f"--to nemo writes NeMo's LlamaModel: model.arch {model_cfg.arch!r} is not llama")
    if tokenizer_json is None:
        raise ValueError("--to nemo needs the run's tokenizer (data.tokenizer): NeMo's context holds one")
    out = Path(out_dir)
    context = out / CONTEXT
    (context / "artifacts").mkdir(parents=True, exist_ok=True)
    save_weights(model, out)
    eos, stops = _save_tokenizer(tokenizer_json, context / "nemo_tokenizer", chat_template)
    stop = stops if len(stops) > 1 else (stops[0] if stops else None)  # a chat model's end of turn first
    (context / "artifacts" / "generation_config.json").write_text(
        json.dumps({"_from_model_config": True, "bos_token_id": eos, "eos_token_id": stop}, indent=2) + "\n")
    values = _config_values(model_cfg, vocab_size)
    (context / "io.json").write_text(json.dumps(_fill_io(values)))
    described = yaml.safe_load((_TEMPLATES / "llama_model.yaml").read_text())
    described["config"].update(values)
    (context / "model.yaml").write_text(yaml.safe_dump(described, sort_keys=True))
    return out

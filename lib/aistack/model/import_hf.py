"""A Hugging Face transformers folder -> a megatron-core GPTModel state dict: export_hf reversed.

    hf_dir/config.json                         LlamaForCausalLM (GQA included) or GPT2LMHeadModel
    hf_dir/model.safetensors                   or model-0000i-of-0000n.safetensors + index

`megatron_state_dict()` gives the FULL state dict with TP=1/PP=1 names, converted lazily
(one tensor at a time, read from memory-mapped safetensors); `load_hf()` puts this rank's
slices of it into the model chunks at whatever TP/PP layout the job runs (aistack.model.shard).

What is not a plain rename (see export_hf):
- linear_qkv's rows are grouped per query group, [q (heads/groups x d), k (d), v (d)] per group;
- linear_fc1 of a gated MLP is [gate; up];
- GPT-2's Conv1D stores weights as (in, out): transposed into megatron's Linear (out, in).

The recipe's `model:` block must describe the same network as config.json: `check_model()`
names every key that differs with both values, before anything is built.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

# HF buffers that hold no weights (causal-mask tables, rotary caches of old checkpoints).
_NOT_WEIGHTS = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def is_hf_folder(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()


class ModelMismatch(ValueError):
    """The recipe's model block and an HF config.json describe different networks."""

    def __init__(self, config_file: Path, problems: list[tuple[str, Any, str, Any]]):
        self.problems = problems  # (recipe key, recipe value, config.json key, its value)
        details = "; ".join(f"key '{key}' = {value!r} but config.json {hf_key} = {hf_value!r}"
                            for key, value, hf_key, hf_value in problems)
        super().__init__(f"checkpoint.load {config_file.parent}: the recipe's model block does not match "
                         f"{config_file}: {details}")


class HFCheckpoint:
    """config.json and the safetensors weights of a transformers folder, read on demand."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.config: dict[str, Any] = json.loads((self.folder / "config.json").read_text())
        self._files: dict[str, Any] = {}

    @property
    def arch(self) -> str:
        kind = self.config.get("model_type")
        if kind in ("llama", "gpt2"):
            return kind
        raise ValueError(f"{self.folder / 'config.json'}: model_type {kind!r} is not supported (llama or gpt2)")

    @cached_property
    def weight_map(self) -> dict[str, tuple[str, str]]:
        """Tensor name -> (safetensors file, name stored there). GPT-2 folders saved from
        GPT2Model store bare names ("h.0..."): they are read as "transformer.h.0..."."""
        index = self.folder / "model.safetensors.index.json"
        if index.exists():
            files = json.loads(index.read_text())["weight_map"]
        elif (self.folder / "model.safetensors").exists():
            from safetensors import safe_open

            with safe_open(self.folder / "model.safetensors", "pt") as f:
                files = dict.fromkeys(f.keys(), "model.safetensors")
        else:
            raise FileNotFoundError(f"{self.folder}: no model.safetensors or model.safetensors.index.json")
        out = {}
        for stored, file in files.items():
            name = stored
            if self.arch == "gpt2" and not stored.startswith(("transformer.", "lm_head.")):
                name = f"transformer.{stored}"
            if not name.endswith(_NOT_WEIGHTS):
                out[name] = (file, stored)
        return out

    def tensor(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        file, stored = self.weight_map[name]
        if file not in self._files:  # memory-mapped: a rank reads only the tensors it asks for
            self._files[file] = safe_open(self.folder / file, "pt")
        return self._files[file].get_tensor(stored)


# --- config.json <-> the recipe's model block ------------------------------------------


def _rope(config: dict) -> dict:
    """transformers 5 keeps rope_theta and rope_type in rope_parameters; older configs at the top."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def hf_model_fields(config: dict) -> list[tuple[str, Any, str, Any]]:
    """(recipe key, value the recipe must have, config.json key, its value) for each field that
    decides the network. Defaults are transformers' (LlamaConfig, GPT2Config)."""
    if config.get("model_type") == "gpt2":
        h, heads = config.get("n_embd", 768), config.get("n_head", 12)
        tied = config.get("tie_word_embeddings", True)
        ffn = config.get("n_inner") or 4 * h
        eps = config.get("layer_norm_epsilon", 1e-5)
        return [
            ("model.arch", "gpt2", "model_type", "gpt2"),
            ("model.num_layers", config.get("n_layer", 12), "n_layer", config.get("n_layer", 12)),
            ("model.hidden_size", h, "n_embd", h),
            ("model.num_attention_heads", heads, "n_head", heads),
            ("model.num_query_groups", heads, "n_head", heads),
            ("model.ffn_hidden_size", ffn, "n_inner", config.get("n_inner")),
            ("model.norm_epsilon", eps, "layer_norm_epsilon", eps),
            ("model.untie_embeddings", not tied, "tie_word_embeddings", tied),
        ]
    h, heads = config["hidden_size"], config["num_attention_heads"]
    groups = config.get("num_key_value_heads") or heads
    tied = config.get("tie_word_embeddings", False)
    theta = float(_rope(config)["rope_theta"])
    return [
        ("model.arch", "llama", "model_type", config.get("model_type")),
        ("model.num_layers", config["num_hidden_layers"], "num_hidden_layers", config["num_hidden_layers"]),
        ("model.hidden_size", h, "hidden_size", h),
        ("model.num_attention_heads", heads, "num_attention_heads", heads),
        ("model.num_query_groups", groups, "num_key_value_heads", groups),
        ("model.ffn_hidden_size", config["intermediate_size"], "intermediate_size", config["intermediate_size"]),
        ("model.rotary_base", theta, "rope_theta", theta),
        ("model.norm_epsilon", config.get("rms_norm_eps", 1e-6), "rms_norm_eps", config.get("rms_norm_eps", 1e-6)),
        ("model.untie_embeddings", not tied, "tie_word_embeddings", tied),
    ]


def _unsupported(config: dict) -> list[tuple[str, Any, str, Any]]:
    """What config.json asks for that aistack's GPT cannot compute (the recipe has no key for it)."""
    out = []
    if config.get("model_type") == "gpt2":
        act = config.get("activation_function", "gelu_new")
        if act != "gelu":  # megatron's GELU is the exact (erf) one
            out.append(("(gpt2 activation)", "gelu", "activation_function", act))
        if config.get("scale_attn_by_inverse_layer_idx"):
            out.append(("(gpt2 attention scale)", False, "scale_attn_by_inverse_layer_idx", True))
        return out
    h, heads = config["hidden_size"], config["num_attention_heads"]
    checks = [("(llama activation)", "silu", "hidden_act", config.get("hidden_act", "silu")),
              ("(llama head size)", h // heads, "head_dim", config.get("head_dim") or h // heads),
              ("(llama rope scaling)", "default", "rope_parameters.rope_type", _rope(config)["rope_type"]),
              ("(llama attention biases)", False, "attention_bias", bool(config.get("attention_bias", False))),
              ("(llama mlp biases)", False, "mlp_bias", bool(config.get("mlp_bias", False)))]
    return [c for c in checks if c[1] != c[3]]


def _recipe_value(model_cfg: Any, key: str) -> Any:
    field = key.removeprefix("model.")
    if field == "num_query_groups":
        return model_cfg.num_query_groups or model_cfg.num_attention_heads
    if field == "ffn_hidden_size":
        return model_cfg.ffn_size
    if field == "untie_embeddings":
        return not model_cfg.tied_embeddings
    return getattr(model_cfg, field)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def model_problems(folder: str | Path, model_cfg: Any, vocab_size: int) -> list[tuple[str, Any, str, Any]]:
    """Every way the recipe's model block (and its unpadded `vocab_size`) differs from config.json."""
    config = HFCheckpoint(folder).config
    if config.get("model_type") not in ("llama", "gpt2"):
        return [("model.arch", model_cfg.arch, "model_type", config.get("model_type"))]
    problems = [(key, _recipe_value(model_cfg, key), hf_key, hf_value)
                for key, want, hf_key, hf_value in hf_model_fields(config) if not _same(_recipe_value(model_cfg, key), want)]
    if problems and problems[0][0] == "model.arch":
        return problems[:1]  # the rest follows from the architecture
    if config.get("vocab_size") != vocab_size:
        problems.append(("model.vocab_size", vocab_size, "vocab_size", config.get("vocab_size")))
    positions = config.get("n_positions", 1024) if config.get("model_type") == "gpt2" else None
    if positions is not None and model_cfg.seq_length > positions:  # learned positions: no more than the table
        problems.append(("model.seq_length", model_cfg.seq_length, "n_positions", positions))
    return problems + _unsupported(config)


def check_model(folder: str | Path, model_cfg: Any, vocab_size: int) -> None:
    problems = model_problems(folder, model_cfg, vocab_size)
    if problems:
        raise ModelMismatch(Path(folder) / "config.json", problems)


# --- weights -------------------------------------------------------------------------


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_groups: int) -> torch.Tensor:
    """q, k, v rows (weight or bias) in head order -> linear_qkv rows, [q..., k, v] per query group."""
    rest = q.shape[1:]
    parts = [t.reshape(num_groups, -1, *rest) for t in (q, k, v)]
    return torch.cat(parts, dim=1).reshape(-1, *rest)


# A megatron tensor = fn(HF tensors named in sources).
Rule = tuple[tuple[str, ...], Callable[..., torch.Tensor]]


def _as_is(x: torch.Tensor) -> torch.Tensor:
    return x


def _transposed(x: torch.Tensor) -> torch.Tensor:  # GPT-2's Conv1D (in, out) -> Linear (out, in)
    return x.t()


def _concat(*parts: torch.Tensor) -> torch.Tensor:
    return torch.cat(parts)


class _LazyStateDict(Mapping):
    """name -> tensor, each converted when asked for (nothing held)."""

    def __init__(self, hf: HFCheckpoint, rules: dict[str, Rule]):
        self._hf, self.rules = hf, rules

    def __getitem__(self, name: str) -> torch.Tensor:
        sources, fn = self.rules[name]
        return fn(*(self._hf.tensor(s) for s in sources))

    def __iter__(self) -> Iterator[str]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)


def _llama(config: dict) -> dict[str, Rule]:
    groups = config.get("num_key_value_heads") or config["num_attention_heads"]

    def qkv(q, k, v):
        return merge_qkv(q, k, v, groups)

    rules: dict[str, Rule] = {"embedding.word_embeddings.weight": (("model.embed_tokens.weight",), _as_is),
                              "decoder.final_layernorm.weight": (("model.norm.weight",), _as_is)}
    for i in range(config["num_hidden_layers"]):
        s, d = f"model.layers.{i}.", f"decoder.layers.{i}."
        rules.update({
            f"{d}input_layernorm.weight": ((f"{s}input_layernorm.weight",), _as_is),
            f"{d}self_attention.linear_qkv.weight": (
                (f"{s}self_attn.q_proj.weight", f"{s}self_attn.k_proj.weight", f"{s}self_attn.v_proj.weight"), qkv),
            f"{d}self_attention.linear_proj.weight": ((f"{s}self_attn.o_proj.weight",), _as_is),
            f"{d}pre_mlp_layernorm.weight": ((f"{s}post_attention_layernorm.weight",), _as_is),
            f"{d}mlp.linear_fc1.weight": ((f"{s}mlp.gate_proj.weight", f"{s}mlp.up_proj.weight"), _concat),  # [gate; up]
            f"{d}mlp.linear_fc2.weight": ((f"{s}mlp.down_proj.weight",), _as_is),
        })
    if not config.get("tie_word_embeddings", False):
        rules["output_layer.weight"] = (("lm_head.weight",), _as_is)
    return rules


def _gpt2(config: dict) -> dict[str, Rule]:
    heads = config.get("n_head", 12)

    def qkv(w):  # Conv1D (in, 3h) or bias (3h): [Q; K; V] in thirds -> [q, k, v] per head
        return merge_qkv(*(w.t() if w.dim() == 2 else w).chunk(3), num_groups=heads)

    # The position table keeps n_positions rows: shard_into keeps the model's seq_length of them.
    rules: dict[str, Rule] = {"embedding.word_embeddings.weight": (("transformer.wte.weight",), _as_is),
                              "embedding.position_embeddings.weight": (("transformer.wpe.weight",), _as_is),
                              "decoder.final_layernorm.weight": (("transformer.ln_f.weight",), _as_is),
                              "decoder.final_layernorm.bias": (("transformer.ln_f.bias",), _as_is)}
    for i in range(config.get("n_layer", 12)):
        s, d = f"transformer.h.{i}.", f"decoder.layers.{i}."
        rules.update({
            f"{d}input_layernorm.weight": ((f"{s}ln_1.weight",), _as_is),
            f"{d}input_layernorm.bias": ((f"{s}ln_1.bias",), _as_is),
            f"{d}self_attention.linear_qkv.weight": ((f"{s}attn.c_attn.weight",), qkv),
            f"{d}self_attention.linear_qkv.bias": ((f"{s}attn.c_attn.bias",), qkv),
            f"{d}self_attention.linear_proj.weight": ((f"{s}attn.c_proj.weight",), _transposed),
            f"{d}self_attention.linear_proj.bias": ((f"{s}attn.c_proj.bias",), _as_is),
            f"{d}pre_mlp_layernorm.weight": ((f"{s}ln_2.weight",), _as_is),
            f"{d}pre_mlp_layernorm.bias": ((f"{s}ln_2.bias",), _as_is),
            f"{d}mlp.linear_fc1.weight": ((f"{s}mlp.c_fc.weight",), _transposed),
            f"{d}mlp.linear_fc1.bias": ((f"{s}mlp.c_fc.bias",), _as_is),
            f"{d}mlp.linear_fc2.weight": ((f"{s}mlp.c_proj.weight",), _transposed),
            f"{d}mlp.linear_fc2.bias": ((f"{s}mlp.c_proj.bias",), _as_is),
        })
    if not config.get("tie_word_embeddings", True):
        rules["output_layer.weight"] = (("lm_head.weight",), _as_is)
    return rules


def megatron_state_dict(folder: str | Path) -> Mapping[str, torch.Tensor]:
    """The GPTModel state dict (TP=1/PP=1 names, the HF vocabulary: no padding rows), lazy:
    each tensor is read and converted when asked for; `dict(...)` of it materialises them all.
    Raises KeyError when the folder holds weights the conversion would leave out."""
    hf = HFCheckpoint(folder)
    rules = {"llama": _llama, "gpt2": _gpt2}[hf.arch](hf.config)
    used = {name for sources, _ in rules.values() for name in sources}
    missing, unused = used - set(hf.weight_map), set(hf.weight_map) - used
    if "output_layer.weight" not in rules:
        unused.discard("lm_head.weight")  # tied: some folders store the copy anyway
    if missing or unused:
        raise KeyError(f"{folder}: not the weights of the {hf.arch} config.json describes: "
                       f"missing {sorted(missing)[:8]}, unexpected {sorted(unused)[:8]}")
    return _LazyStateDict(hf, rules)


def load_hf(folder: str | Path, model_chunks: list, model_cfg: Any, vocab_size: int) -> None:
    """This rank's shards of an HF folder's weights into its model chunks (any TP/PP layout).
    `vocab_size`: the unpadded vocabulary the model was built for."""
    from aistack.model.shard import shard_into

    check_model(folder, model_cfg, vocab_size)
    shard_into(model_chunks, megatron_state_dict(folder))

"""A megatron-core GPTModel state dict -> a Hugging Face transformers folder.

    out_dir/config.json                        LlamaForCausalLM (arch llama) or GPT2LMHeadModel (gpt2)
    out_dir/model.safetensors                  (or model-0000i-of-0000n.safetensors + index when large)
    out_dir/tokenizer.json, tokenizer_config.json   when a tokenizer.json is given
    out_dir/generation_config.json             the tokens generation stops at

A chat model (an SFT or distillation run: `chat_template` given) ends its turn with an
end-of-turn token (`<|end|>`): it is the tokenizer's eos and the first of the ids
generation_config.json stops at, so transformers' `generate` and servers built on these
files (vLLM, TGI) end the answer there; the chat format's markers are special tokens, so
`skip_special_tokens` leaves them out of the text.

Input is the FULL state dict with TP=1/PP=1 names (`decoder.layers.0.self_attention.linear_qkv.weight`...):
gathering a sharded checkpoint into one is the checkpoint loader's job. The padded vocabulary
rows are dropped: the exported model has exactly `vocab_size` tokens, as its tokenizer.

What is not a plain rename:
- linear_qkv's rows are grouped per query group, [q (heads/groups x d), k (d), v (d)] per
  group, not [Q; K; V] in thirds;
- linear_fc1 of a gated MLP is [gate; up] (SiLU on the first half);
- GPT-2's Conv1D stores weights as (in, out): megatron's Linear weights transposed;
- megatron's GELU is the exact (erf) one: "gelu" in HF, not GPT-2's usual "gelu_new".
Megatron's default (non-interleaved) rotary embedding is HF Llama's rotate_half.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

# At import time on purpose: on a CPU machine aistack.model.cpu_compat.install() replaces
# torch.cuda.Stream with a function, after which transformers' first import of its
# generation utils fails (they evaluate `torch.cuda.Stream | None`). Import this module
# before loading a checkpoint.
from transformers import GenerationConfig, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

MAX_SHARD_BYTES = 5 * 2**30  # as save_pretrained's default
# The end-of-document tokens aistack.model.dataset looks for; the end-of-turn tokens and
# role markers of the chat formats aistack.post.chat knows (its default one first).
END_OF_TEXT = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>")
END_OF_TURN = ("<|end|>", "<|eot_id|>", "<|im_end|>")
CHAT_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>", "<|pad|>", "<|im_start|>", "<|start_header_id|>",
                "<|end_header_id|>")


def _get(sd: dict[str, torch.Tensor], *names: str) -> torch.Tensor:
    """The first of `names` present: the local layer spec and Transformer Engine's name norms differently."""
    for name in names:
        if name in sd:
            return sd[name]
    raise KeyError(f"none of {names} in the state dict")


def _norm(sd: dict, prefix: str, local: str, te: str, bias: bool) -> dict[str, torch.Tensor]:
    """A layer's norm: `input_layernorm.weight` (local spec) or fused into the next linear
    as `linear_qkv.layer_norm_weight` (TE spec)."""
    out = {"weight": _get(sd, f"{prefix}{local}.weight", f"{prefix}{te}.layer_norm_weight")}
    if bias:
        out["bias"] = _get(sd, f"{prefix}{local}.bias", f"{prefix}{te}.layer_norm_bias")
    return out


def split_qkv(qkv: torch.Tensor, num_heads: int, num_groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """linear_qkv weight (or bias) rows -> (q, k, v) rows in head order."""
    per_group = qkv.shape[0] // num_groups
    d = per_group // (num_heads // num_groups + 2)
    grouped = qkv.reshape(num_groups, per_group, *qkv.shape[1:])
    q, k, v = grouped.split([per_group - 2 * d, d, d], dim=1)
    return (t.reshape(-1, *qkv.shape[1:]) for t in (q, k, v))


def _llama(sd: dict, cfg: Any, vocab_size: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    heads, groups, f = cfg.num_attention_heads, cfg.num_query_groups or cfg.num_attention_heads, cfg.ffn_size
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"][:vocab_size]}
    for i in range(cfg.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        q, k, v = split_qkv(sd[f"{src}self_attention.linear_qkv.weight"], heads, groups)
        gate, up = sd[f"{src}mlp.linear_fc1.weight"].split([f, f])
        out.update({
            f"{dst}input_layernorm.weight": _norm(sd, src, "input_layernorm", "self_attention.linear_qkv", False)["weight"],
            f"{dst}self_attn.q_proj.weight": q,
            f"{dst}self_attn.k_proj.weight": k,
            f"{dst}self_attn.v_proj.weight": v,
            f"{dst}self_attn.o_proj.weight": sd[f"{src}self_attention.linear_proj.weight"],
            f"{dst}post_attention_layernorm.weight": _norm(sd, src, "pre_mlp_layernorm", "mlp.linear_fc1", False)["weight"],
            f"{dst}mlp.gate_proj.weight": gate,
            f"{dst}mlp.up_proj.weight": up,
            f"{dst}mlp.down_proj.weight": sd[f"{src}mlp.linear_fc2.weight"],
        })
    out["model.norm.weight"] = sd["decoder.final_layernorm.weight"]
    if not cfg.tied_embeddings:
        out["lm_head.weight"] = sd["output_layer.weight"][:vocab_size]
    config = {
        "architectures": ["LlamaForCausalLM"], "vocab_size": vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": f,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": heads, "num_key_value_heads": groups,
        "head_dim": cfg.hidden_size // heads, "hidden_act": "silu", "max_position_embeddings": cfg.seq_length,
        "rms_norm_eps": cfg.norm_epsilon, "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rotary_base)},
        "attention_bias": False, "mlp_bias": False, "attention_dropout": cfg.attention_dropout,
        "tie_word_embeddings": cfg.tied_embeddings, "initializer_range": cfg.init_method_std,
    }
    return out, config


def _gpt2(sd: dict, cfg: Any, vocab_size: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    heads = cfg.num_attention_heads
    if (cfg.num_query_groups or heads) != heads:
        raise ValueError("GPT-2 has no grouped-query attention: export with num_query_groups null")
    out = {
        "transformer.wte.weight": sd["embedding.word_embeddings.weight"][:vocab_size],
        "transformer.wpe.weight": sd["embedding.position_embeddings.weight"],
    }
    for i in range(cfg.num_layers):
        src, dst = f"decoder.layers.{i}.", f"transformer.h.{i}."
        qkv_w = torch.cat(list(split_qkv(sd[f"{src}self_attention.linear_qkv.weight"], heads, heads)))
        qkv_b = torch.cat(list(split_qkv(sd[f"{src}self_attention.linear_qkv.bias"], heads, heads)))
        ln1 = _norm(sd, src, "input_layernorm", "self_attention.linear_qkv", True)
        ln2 = _norm(sd, src, "pre_mlp_layernorm", "mlp.linear_fc1", True)
        out.update({
            f"{dst}ln_1.weight": ln1["weight"], f"{dst}ln_1.bias": ln1["bias"],
            f"{dst}attn.c_attn.weight": qkv_w.t(), f"{dst}attn.c_attn.bias": qkv_b,  # Conv1D: (in, out)
            f"{dst}attn.c_proj.weight": sd[f"{src}self_attention.linear_proj.weight"].t(),
            f"{dst}attn.c_proj.bias": sd[f"{src}self_attention.linear_proj.bias"],
            f"{dst}ln_2.weight": ln2["weight"], f"{dst}ln_2.bias": ln2["bias"],
            f"{dst}mlp.c_fc.weight": sd[f"{src}mlp.linear_fc1.weight"].t(),
            f"{dst}mlp.c_fc.bias": sd[f"{src}mlp.linear_fc1.bias"],
            f"{dst}mlp.c_proj.weight": sd[f"{src}mlp.linear_fc2.weight"].t(),
            f"{dst}mlp.c_proj.bias": sd[f"{src}mlp.linear_fc2.bias"],
        })
    out["transformer.ln_f.weight"] = sd["decoder.final_layernorm.weight"]
    out["transformer.ln_f.bias"] = sd["decoder.final_layernorm.bias"]
    if not cfg.tied_embeddings:
        out["lm_head.weight"] = sd["output_layer.weight"][:vocab_size]
    config = {
        "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab_size, "n_positions": cfg.seq_length, "n_embd": cfg.hidden_size,
        "n_layer": cfg.num_layers, "n_head": heads, "n_inner": cfg.ffn_size,
        "activation_function": "gelu",  # megatron's F.gelu is exact erf GELU, not the tanh "gelu_new"
        "layer_norm_epsilon": cfg.norm_epsilon, "resid_pdrop": cfg.hidden_dropout, "embd_pdrop": cfg.hidden_dropout,
        "attn_pdrop": cfg.attention_dropout, "tie_word_embeddings": cfg.tied_embeddings,
        "initializer_range": cfg.init_method_std,
    }
    return out, config


def _save_safetensors(tensors: dict[str, torch.Tensor], out_dir: Path, max_shard_bytes: int) -> list[str]:
    """One file, or shards plus model.safetensors.index.json (the layout from_pretrained reads)."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for name, shard in zip(names, shards):
        save_file(shard, str(out_dir / name), metadata={"format": "pt"})
    return names


def _save_tokenizer(tokenizer_json: str | Path, out_dir: Path, chat_template: str | None = None) -> tuple[int | None, list[int]]:
    """Wrap the tokenizers file for AutoTokenizer; returns the end-of-text id (or None) and the
    ids generation stops at (a chat model's end-of-turn token first)."""
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json))
    vocab = tok.get_vocab()
    eos = next((t for t in END_OF_TEXT if t in vocab), None)
    stops = [eos] if eos else []
    markers: list[str] = []
    if chat_template:  # a chat model is prompted in the format it was finetuned on: apply_chat_template
        tok.chat_template = chat_template
        end_of_turn = next((t for t in END_OF_TURN if t in vocab), None)
        stops = [t for t in (end_of_turn, eos) if t]
        markers = [t for t in (*CHAT_MARKERS, *END_OF_TURN, *END_OF_TEXT) if t in vocab and t not in stops]
    if stops:
        tok.eos_token = stops[0]
    tok.save_pretrained(str(out_dir))
    # transformers 5 names its class TokenizersBackend, which transformers 4 (vLLM, NeMo 2.7, TGI
    # images) cannot load; PreTrainedTokenizerFast is the same tokenizer to both. The same for
    # the chat markers: `additional_special_tokens`, the name both read (5 calls it extra_).
    config_file = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("extra_special_tokens", None)
    if markers or len(stops) > 1:
        config["additional_special_tokens"] = [*markers, *stops[1:]]
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return (vocab[eos] if eos else None), [vocab[t] for t in stops]


def export_hf(state_dict: dict[str, Any], model_cfg: Any, vocab_size: int, out_dir: str | Path,
              tokenizer_json: str | Path | None = None, dtype: torch.dtype | None = None,
              max_shard_bytes: int = MAX_SHARD_BYTES, chat_template: str | None = None) -> Path:
    """Write a transformers folder for this model (`model_cfg`: the recipe's `model:` block;
    `vocab_size`: the unpadded one). `dtype`: cast the weights (default: as trained).
    `chat_template`: written to tokenizer_config.json with the tokenizer (SFT runs)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")}
    convert = {"llama": _llama, "gpt2": _gpt2}[model_cfg.arch]
    tensors, config = convert(sd, model_cfg, vocab_size)
    # safetensors wants contiguous tensors that share no storage (slices and transposes do).
    tensors = {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous().clone() for k, v in tensors.items()}
    eos, stops = _save_tokenizer(tokenizer_json, out_dir, chat_template) if tokenizer_json else (None, [])
    stop = stops if len(stops) > 1 else (stops[0] if stops else None)  # a list, as Llama 3 Instruct's
    # Through transformers' config class: it validates the fields and writes what from_pretrained reads.
    config_class = {"llama": LlamaConfig, "gpt2": GPT2Config}[model_cfg.arch]
    hf_config = config_class(**config, dtype=next(iter(tensors.values())).dtype, bos_token_id=eos, eos_token_id=stop)
    hf_config.save_pretrained(str(out_dir))
    if stops:
        GenerationConfig(bos_token_id=eos, eos_token_id=stop, pad_token_id=stops[-1]).save_pretrained(str(out_dir))
    _save_safetensors(tensors, out_dir, max_shard_bytes)
    return out_dir

"""Recipe `model:` block -> megatron TransformerConfig -> one GPTModel per pipeline stage.

Two families: `llama` (RoPE, SwiGLU, RMSNorm, no biases, untied embeddings, GQA) and
`gpt2` (learned positions, GELU, LayerNorm, biases, tied embeddings). Layers come from
megatron's local (pure PyTorch) spec, or from Transformer Engine's where TE and a GPU are
present (required for FP8). In the local spec the core attention is torch's SDPA
(aistack.model.attention) unless `model.attention_backend: local` asks for megatron's own.

`fused`: the fusions that need neither apex nor TE, which megatron runs through its
`jit_fuser` (torch.compile): bias-dropout-add, bias-SwiGLU (llama), the native fused
cross-entropy. Megatron's fused bias-GELU is the tanh approximation: never for gpt2, whose
export declares exact GELU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from aistack.model import rope


def resolve_precision(precision: str) -> str:
    """`auto` -> bf16 on GPU, fp32 on CPU. FP8 needs Transformer Engine and an FP8 GPU."""
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    if precision == "fp8":
        problem = fp8_unavailable()
        if problem:
            raise RuntimeError(f"train.precision=fp8 is not available here: {problem}. Use bf16 (GPU) or fp32 (CPU).")
    return precision


def te_available() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # the meta-package raises on import when its torch extension is missing
        return False
    return True


def fp8_unavailable() -> str | None:
    """Why FP8 training cannot run on this machine, or None when it can."""
    if not torch.cuda.is_available():
        return "no GPU (FP8 matmuls run through Transformer Engine on Hopper/Ada or newer)"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        return f"GPU {torch.cuda.get_device_name()} (compute capability {major}.{minor}) has no FP8 tensor cores; need 8.9+"
    if not te_available():
        return "transformer_engine is not installed (pip install transformer-engine[pytorch])"
    return None


def transformer_config(model_cfg: Any, parallel_cfg: Any, precision: str = "fp32", use_te: bool = False,
                       fused: bool = False):
    """The megatron TransformerConfig for this model and layout (`precision` already resolved)."""
    from megatron.core.transformer import TransformerConfig

    llama = model_cfg.arch == "llama"
    tp, pp = parallel_cfg.tensor, parallel_cfg.pipeline
    dtype = torch.bfloat16 if precision in ("bf16", "fp8") else torch.float32
    recompute: dict[str, Any] = {}
    if parallel_cfg.recompute == "full":
        recompute = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif parallel_cfg.recompute == "selective":
        recompute = dict(recompute_granularity="selective")
    vpp = parallel_cfg.virtual_pipeline
    return TransformerConfig(
        num_layers=model_cfg.num_layers,
        hidden_size=model_cfg.hidden_size,
        ffn_hidden_size=model_cfg.ffn_size,
        num_attention_heads=model_cfg.num_attention_heads,
        num_query_groups=model_cfg.num_query_groups or model_cfg.num_attention_heads,
        kv_channels=model_cfg.hidden_size // model_cfg.num_attention_heads,
        normalization="RMSNorm" if llama else "LayerNorm",
        layernorm_epsilon=model_cfg.norm_epsilon,
        gated_linear_unit=llama,
        activation_func=F.silu if llama else F.gelu,
        add_bias_linear=not llama,
        hidden_dropout=model_cfg.hidden_dropout,
        attention_dropout=model_cfg.attention_dropout,
        init_method_std=model_cfg.init_method_std,
        # layout
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
        sequence_parallel=parallel_cfg.sequence_parallel and tp > 1,
        pipeline_dtype=dtype,
        # precision
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp8="hybrid" if precision == "fp8" else None,
        # init on the host: deterministic and identical with or without a GPU
        use_cpu_initialization=True,
        # torch.compile'd fusions (see the module doc); the others need apex or TE
        bias_activation_fusion=fused and llama,
        bias_dropout_fusion=fused,
        cross_entropy_loss_fusion=fused,
        cross_entropy_fusion_impl="native",
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        **recompute,
    )


def layer_spec(model_cfg: Any, use_te: bool):
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if use_te:
        return specs.get_gpt_layer_with_transformer_engine_spec()
    spec = specs.get_gpt_layer_local_spec(normalization="RMSNorm" if model_cfg.arch == "llama" else "LayerNorm")
    rope.install()  # megatron's unfused RoPE without its wasted copies (same numbers)
    if getattr(model_cfg, "attention_backend", "sdpa") == "sdpa":
        from aistack.model.attention import SDPAttention

        spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


def use_transformer_engine(precision: str) -> bool:
    """TE layers where TE and a GPU are present (FP8 requires them); local layers otherwise."""
    return torch.cuda.is_available() and te_available() or precision == "fp8"


def build_gpt(model_cfg: Any, parallel_cfg: Any, pre_process: bool, post_process: bool, vocab_size: int,
              precision: str = "fp32", vp_stage: int | None = None, use_te: bool | None = None, fused: bool = False):
    """One pipeline stage (or virtual stage) of the GPT. `vocab_size` is the padded one.
    Megatron's parallel state must be initialised (it places this stage's layers)."""
    from megatron.core.models.gpt import GPTModel

    if use_te is None:
        use_te = use_transformer_engine(precision)
    config = transformer_config(model_cfg, parallel_cfg, precision, use_te, fused)
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model_cfg, use_te),
        vocab_size=vocab_size,
        max_sequence_length=model_cfg.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=model_cfg.tied_embeddings,
        position_embedding_type="rope" if model_cfg.arch == "llama" else "learned_absolute",
        rotary_base=int(model_cfg.rotary_base),
        vp_stage=vp_stage,
    )


def build_model_chunks(model_cfg: Any, parallel_cfg: Any, vocab_size: int, precision: str = "fp32",
                       fused: bool = False) -> list:
    """This rank's model chunks: one per virtual pipeline stage (one without interleaving)."""
    from megatron.core import parallel_state as ps

    vpp = ps.get_virtual_pipeline_model_parallel_world_size()
    chunks = []
    for stage in range(vpp or 1):
        vp_stage = stage if vpp else None
        chunks.append(build_gpt(
            model_cfg, parallel_cfg,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vocab_size=vocab_size, precision=precision, vp_stage=vp_stage, fused=fused,
        ))
    if torch.cuda.is_available():  # built on the host (use_cpu_initialization): train on this rank's GPU
        chunks = [chunk.cuda(torch.cuda.current_device()) for chunk in chunks]
    return chunks


def unwrap(model_chunks: list) -> list:
    """The GPTModels inside DDP / Float16Module: checkpoint keys are the model's own
    ("decoder.layers.0...."), whatever wraps it."""
    out = []
    for chunk in model_chunks:
        while hasattr(chunk, "module"):
            chunk = chunk.module
        out.append(chunk)
    return out

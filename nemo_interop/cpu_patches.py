"""Workarounds that let NeMo 2.7.3's real HF<->NeMo converters run on CPU, without
Transformer Engine, with megatron-core 0.16.1. Import this before anything from nemo."""
import sys
import types

# 1. NeMo 2.7.3's dist_ckpt_io does `from megatron.core.dist_checkpointing.strategies import
#    tensorstore` at import; megatron-core 0.16 removed that module (0.15.x still has it), and
#    NeMo then refuses to build its checkpoint IO. It is used only for the optional
#    'tensorstore' load strategy, so a stub module is enough.
import megatron.core.dist_checkpointing.strategies as _strategies

if not hasattr(_strategies, "tensorstore"):
    _stub = types.ModuleType("megatron.core.dist_checkpointing.strategies.tensorstore")

    class TensorStoreLoadShardedStrategy:  # noqa: D101
        def __init__(self, *a, **k):
            raise RuntimeError("tensorstore load strategy is not in megatron-core 0.16")

    _stub.TensorStoreLoadShardedStrategy = TensorStoreLoadShardedStrategy
    sys.modules[_stub.__name__] = _stub
    _strategies.tensorstore = _stub

# 2. LlamaConfig defaults to fusions that need TE/apex; megatron's config check raises
#    ("apply_rope_fusion is not available. Please install TE >= 1.4.") and the torch norm of the
#    local layer spec asserts persist_layer_norm off. The importer builds its own config from the
#    HF config.json, so the switch must happen in TransformerConfig.__post_init__.
#    (Without TE, NeMo's default_layer_spec already picks megatron's local spec.)
from megatron.core.transformer.transformer_config import TransformerConfig

_orig_post_init = TransformerConfig.__post_init__


def _cpu_post_init(self):
    self.apply_rope_fusion = False
    self.persist_layer_norm = False
    self.gradient_accumulation_fusion = False
    _orig_post_init(self)


TransformerConfig.__post_init__ = _cpu_post_init

# 3. The converters build MegatronStrategy() with its default ckpt_async_save=True, which hands
#    the write to a spawned worker process (needs an `if __name__ == "__main__"` guard in the
#    caller, else the child re-runs the script and deadlocks on NeMo's output-path file lock).
#    With patch 4 async also works on CPU, but was ~3x slower here; the converters give no way to
#    turn it off, so force synchronous saving: simpler, no extra process.
import functools

from nemo.lightning.pytorch.strategies.megatron_strategy import MegatronStrategy

_orig_strategy_init = MegatronStrategy.__init__


@functools.wraps(_orig_strategy_init)
def _sync_save_init(self, *args, **kwargs):
    kwargs["ckpt_async_save"] = False
    _orig_strategy_init(self, *args, **kwargs)


MegatronStrategy.__init__ = _sync_save_init

# 4. Even the synchronous torch_dist writer calls CUDA on a CPU-only torch ("Torch not compiled
#    with CUDA enabled"): `torch.cuda.synchronize()` after staging tensors (filesystem_async.
#    preload_tensors; nothing is in flight on CPU, so a no-op is exact) and a failure flag built
#    with `device=torch.cuda.current_device()` then broadcast over the gloo group
#    (state_dict_saver, async_utils); answering "cpu" puts that flag where gloo wants it.
import torch

if not torch.cuda.is_available():
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_device = lambda: "cpu"

# 5. export_ckpt's nemo_load wraps DDP set-up in `torch.cuda.stream(torch.cuda.Stream())`
#    (nemo/lightning/megatron_parallel.py) -> "torch.cuda.Stream requires CUDA support".
#    On CPU a null stream and a null stream context are exact.
if not torch.cuda.is_available():
    import contextlib

    class _NullStream:
        def __init__(self, *a, **k):
            pass

        def wait_stream(self, *a, **k):
            pass

        def synchronize(self):
            pass

    torch.cuda.Stream = _NullStream
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()

# 6. After dist_checkpointing.load, NeMo's checkpoint IO moves tensors to the current CUDA device
#    and first asserts `torch.cuda.is_initialized()` (nemo/lightning/io/pl.py _fix_tensors_device).
#    On CPU the loaded tensors already sit where the model is: identity.
if not torch.cuda.is_available():
    import nemo.lightning.io.pl as _nemo_pl

    _nemo_pl._fix_tensors_device = lambda ckpt: ckpt

# 7. The Llama importer/exporter name the layer norms by their TE-fused parameters
#    (`self_attention.linear_qkv.layer_norm_weight`, `mlp.linear_fc1.layer_norm_weight`). Without
#    TE the model is built from megatron's local spec, whose modules are `input_layernorm` and
#    `pre_mlp_layernorm`: the importer then only warns "No matches found" and SILENTLY keeps the
#    init value (ones) for every layer norm; the exporter fails with an IndexError. Rename those
#    mapping entries to the local names when the megatron model has no fused parameters. (On
#    disk the names are the same either way: the local TransformerLayer's sharded_state_dict maps
#    input_layernorm./pre_mlp_layernorm. back to the fused TE names.)
import nemo.lightning.io as _nemo_io

_orig_apply_transforms = _nemo_io.apply_transforms
_TE_TO_LOCAL = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "self_attention.linear_qkv.layer_norm_bias": "input_layernorm.bias",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
    "mlp.linear_fc1.layer_norm_bias": "pre_mlp_layernorm.bias",
}


def _localize(name):
    for te, local in _TE_TO_LOCAL.items():
        name = name.replace(te, local)
    return name


def _apply_transforms_local_spec(source, target, mapping, *args, **kwargs):
    keys = list(source.state_dict()) + list(target.state_dict())
    if not any("layer_norm_weight" in k for k in keys):
        mapping = {_localize(k): _localize(v) for k, v in mapping.items()}
    return _orig_apply_transforms(source, target, mapping, *args, **kwargs)


_nemo_io.apply_transforms = _apply_transforms_local_spec

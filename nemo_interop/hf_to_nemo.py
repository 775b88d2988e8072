"""HF folder -> NeMo 2 checkpoint (weights/ + context/) with NeMo's own importer, on CPU.

Usage: .venv-nemo/bin/python hf_to_nemo.py HF_DIR OUT_DIR
Runs nemo.collections.llm.import_ckpt (HFLlamaImporter: convert_state + MegatronStrategy
torch_dist save + TrainerContext io_dump); see cpu_patches.py for why each patch exists.
"""
import json
import sys
import time
from pathlib import Path

from _common import stdout_to_stderr, versions

from nemo.collections import llm

# HF architecture -> NeMo model class; the model only selects the importer, which builds the
# real config from the HF config.json; PLACEHOLDER dims only satisfy megatron's config checks.
MODELS = {"LlamaForCausalLM": (llm.LlamaModel, llm.LlamaConfig)}
PLACEHOLDER = dict(num_layers=1, hidden_size=8, ffn_hidden_size=8, num_attention_heads=1)

if __name__ == "__main__":  # megatron's checkpoint writer may spawn processes: main guard needed
    hf_dir, out_dir = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    arch = json.loads((hf_dir / "config.json").read_text())["architectures"][0]
    model_cls, config_cls = MODELS[arch]
    t0 = time.time()
    with stdout_to_stderr():
        out = llm.import_ckpt(model=model_cls(config_cls(**PLACEHOLDER)), source=f"hf://{hf_dir}", output_path=out_dir, overwrite=True)
    print(json.dumps({
        "op": "hf_to_nemo", "api": "nemo.collections.llm.import_ckpt", "architecture": arch,
        "src": str(hf_dir), "out": str(out), "seconds": round(time.time() - t0, 1), **versions(),
    }))

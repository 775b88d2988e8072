"""NeMo 2 checkpoint (weights/ + context/) -> HF folder with NeMo's own exporter, on CPU.

Usage: .venv-nemo/bin/python nemo_to_hf.py NEMO_DIR OUT_DIR
Runs nemo.collections.llm.export_ckpt(target="hf") (the exporter recorded in context/:
HFLlamaExporter for Llama: nemo_load via torch_dist + convert_state + save_pretrained);
see cpu_patches.py for why each patch exists.
"""
import json
import sys
import time
from pathlib import Path

from _common import stdout_to_stderr, versions

from nemo.collections import llm

if __name__ == "__main__":  # megatron's checkpoint reader/writer may spawn processes
    nemo_dir, out_dir = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    t0 = time.time()
    with stdout_to_stderr():
        out = llm.export_ckpt(path=nemo_dir, target="hf", output_path=out_dir, overwrite=True)
    cfg = json.loads((Path(out) / "config.json").read_text())
    print(json.dumps({
        "op": "nemo_to_hf", "api": "nemo.collections.llm.export_ckpt", "architecture": cfg["architectures"][0],
        "dtype": cfg.get("dtype", cfg.get("torch_dtype")), "src": str(nemo_dir), "out": str(out),
        "seconds": round(time.time() - t0, 1), **versions(),
    }))

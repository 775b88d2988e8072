"""Tasks import megatron-core without its import-time torch.compile calls (aistack.lazy_compile):
the compilations wait for the first call, and nothing else changes."""

import subprocess
import sys

from aistack.lazy_compile import deferred


def test_a_deferred_compile_happens_at_the_first_call_once_with_the_same_arguments():
    compiled: list[dict] = []

    def real(fn, **options):
        compiled.append(options)
        return lambda *args: ("compiled", fn(*args))

    as_decorator = deferred(real)
    double = as_decorator(lambda x: 2 * x, dynamic=False)
    half = as_decorator(mode="max-autotune")(lambda x: x / 2)  # @torch.compile(mode=...) form
    assert compiled == [], "nothing compiled at decoration"
    assert double(3) == ("compiled", 6) and double(4) == ("compiled", 8)
    assert half(3) == ("compiled", 1.5)
    assert compiled == [{"dynamic": False}, {"mode": "max-autotune"}]


CHECK = """
import sys
from aistack import lazy_compile
lazy_compile.install()
import torch
real = torch.compile
import megatron.core
from megatron.core import jit
assert torch.compile is real, "torch.compile is given back after the import"
assert jit.jit_fuser is not real and jit.jit_fuser.__name__ == "compile_later", jit.jit_fuser
print(sorted(m for m in sys.modules if m.startswith("torch._inductor"))[:3])
"""


def test_megatron_imports_without_inductor_once_installed():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", f"inductor imported at megatron's import: {done.stdout}"

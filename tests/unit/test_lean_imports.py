"""Tasks import megatron-core and spaCy without what they load at import and a task never uses
(aistack.lean_imports): megatron's compilations wait for their first call, spaCy does not
load torch; nothing else changes."""

import subprocess
import sys

from aistack.lean_imports import deferred


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


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", "from aistack import lean_imports\nlean_imports.install()\n" + code],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_megatron_imports_without_inductor():
    out = run("""
import sys, torch
real = torch.compile
import megatron.core
from megatron.core import jit
assert torch.compile is real, "torch.compile is given back after the import"
assert jit.jit_fuser is not real and jit.jit_fuser.__name__ == "compile_later", jit.jit_fuser
print(sorted(m for m in sys.modules if m.startswith("torch._inductor"))[:3])
""")
    assert out == "[]", f"inductor imported at megatron's import: {out}"


def test_megatron_imports_without_wandb_and_wandb_still_imports_after():
    out = run("""
import sys
import megatron.core
from megatron.core import timers
print("wandb" in sys.modules, timers.wandb)
import wandb
print(callable(wandb.init))
""")
    assert out.splitlines() == ["False None", "True"]


def test_spacy_imports_without_torch_and_torch_still_imports_after():
    out = run("""
import sys
from datatrove.utils.word_tokenizers import load_word_tokenizer
words = load_word_tokenizer("en").word_tokenize("Hello there, world.")
print("torch" in sys.modules, words)
import torch
print(float(torch.ones(3).sum()))
""")
    assert out.splitlines() == ["False ['Hello', 'there', ',', 'world', '.']", "3.0"]

"""One set of pins for the venv, CI and the container image."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_image_installs_with_the_pins_ci_tests():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE))
    assert "megatron-core" in pins and "torch" in pins
    dockerfile = (REPO / "containers" / "Dockerfile").read_text()
    install = next(line for line in dockerfile.splitlines() if "pip install" in line)
    assert "-c /tmp/image-pins.txt" in install and "grep -v '^torch==' constraints.txt >> /tmp/image-pins.txt" in dockerfile
    # no package is asked for by a range beside the pins (that is how 0.16.1 was lost before)
    assert not re.search(r"megatron-core\s*[<>=~]", dockerfile)

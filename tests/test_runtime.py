"""tags.runtime.keep_freed_memory: glibc malloc keeps large freed blocks instead of unmapping them.

Measured the way it matters: page faults of repeated forwards of a convolution + GELU whose
activations (two of 128 MB) are far above glibc's 32 MB mmap threshold, in a fresh interpreter with
and without the setting.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, torch
from tags.runtime import keep_freed_memory
applied = keep_freed_memory()
torch.set_num_threads(2)  # as on the 2-core target (with one thread oneDNN adds a scratch buffer of its own)
conv = torch.nn.Conv2d(64, 256, 1)
x = torch.rand(8, 64, 128, 128)
def forward():
    with torch.no_grad():
        return float(torch.nn.functional.gelu(conv(x)).sum())
forward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    forward()
print(int(applied), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

PAGES = 4 * 2 * (8 * 256 * 128 * 128 * 4) // 4096
"""Pages the four timed forwards' two 128 MB activations would fault in if never reused."""


def _probe(env_value: str) -> tuple:
    env = dict(os.environ, TAGS_KEEP_FREED_MEMORY=env_value)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    applied, faults = out.stdout.split()
    return bool(int(applied)), int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_tensors_are_reused_without_page_faults():
    applied, faults = _probe("1")
    assert applied
    assert faults < PAGES // 20, f"{faults} page faults in four forwards that could reuse their memory"
    applied, faults = _probe("0")  # opted out: glibc defaults, activations are unmapped and faulted in again
    assert not applied
    assert faults > PAGES // 2

"""tags.runtime.keep_freed_memory: glibc malloc keeps large freed blocks instead of unmapping them.

Measured the way it matters: page faults of repeated forwards of a convolution + GELU whose
activations (two of 48 or 128 MB) are above glibc's 32 MB mmap threshold, in a fresh interpreter with
and without the setting, run by the main thread and by a worker thread (the application's operators
run in a Holoscan scheduler thread, which by default gets a malloc arena of its own). The best of
three windows of four forwards counts: once in a full test-suite run (2026-12-05, AVX2 EPYC) one
forward of a window faulted its two activations in again (65530 faults, where the other runs
counted almost none); without the setting every forward of every window does.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, threading, torch
from tags.runtime import keep_freed_memory
applied = keep_freed_memory(one_arena=sys.argv[3] == "1")
torch.set_num_threads(2)  # as on the 2-core target (with one thread oneDNN adds a scratch buffer of its own)
channels, worker = int(sys.argv[1]), sys.argv[2] == "thread"
conv = torch.nn.Conv2d(64, channels, 1)
x = torch.rand(8, 64, 128, 128)
faults = []
def forward():
    with torch.no_grad():
        return float(torch.nn.functional.gelu(conv(x)).sum())
def timed():
    forward()
    for _ in range(3):  # three windows of four forwards: the best one counts
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            forward()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
if worker:
    t = threading.Thread(target=timed)
    t.start()
    t.join()
else:
    timed()
print(int(applied), min(faults))
"""


def _probe(env_value: str, channels: int, where: str, one_arena: bool = True) -> tuple:
    env = dict(os.environ, TAGS_KEEP_FREED_MEMORY=env_value)
    out = subprocess.run([sys.executable, "-c", PROBE, str(channels), where, str(int(one_arena))], env=env, capture_output=True,
                         text=True, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    applied, faults = out.stdout.split()
    return bool(int(applied)), int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("channels,where,one_arena", [(256, "main", True), (96, "thread", True),
                                                     (256, "main", False)])  # the last: a training process's setting
def test_freed_tensors_are_reused_without_page_faults(channels, where, one_arena):
    pages = 4 * 2 * (8 * channels * 128 * 128 * 4) // 4096  # four forwards, two activations each, never reused
    applied, faults = _probe("1", channels, where, one_arena)
    assert applied
    assert faults < pages // 20, f"{faults} page faults in four forwards that could reuse their memory"
    applied, faults = _probe("0", channels, where, one_arena)  # glibc defaults: activations unmapped, faulted in again
    assert not applied
    assert faults > pages // 2


RELEASE_PROBE = """
import torch
from tags.runtime import keep_freed_memory, release_freed_memory
def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20
applied = keep_freed_memory()
x = torch.ones(512 << 18)  # 512 MB, faulted in
del x
kept = rss_mb()
release_freed_memory()
print(int(applied), round(kept - rss_mb()))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_release_hands_kept_memory_back():
    """What keep_freed_memory keeps, release_freed_memory (the application, after each pass) returns."""
    out = subprocess.run([sys.executable, "-c", RELEASE_PROBE], env=dict(os.environ, TAGS_KEEP_FREED_MEMORY="1"),
                         capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    applied, released_mb = map(int, out.stdout.split())
    assert applied and released_mb > 400, f"released {released_mb} MB of a freed 512 MB block"

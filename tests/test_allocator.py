"""advrepair.allocator: freed memory kept in the process by default, with an environment switch."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from advrepair import allocator

PROBE = "import advrepair, advrepair.allocator as a; print(a.retaining_freed_memory())"


def _probe(env_value: str | None, code: str = PROBE) -> str:
    env = {k: v for k, v in os.environ.items() if k != allocator.ENV_SWITCH}
    if env_value is not None:
        env[allocator.ENV_SWITCH] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_import_turns_it_on_and_the_switch_turns_it_off():
    assert _probe(None) == "True"
    assert _probe("0") == "False"
    assert _probe("1") == "True"


def test_repeated_calls_agree_with_the_recorded_state():
    assert allocator.retain_freed_memory() == allocator.retaining_freed_memory()
    assert allocator.retain_freed_memory() == allocator.retaining_freed_memory()


FAULTS_PROBE = """
import resource, torch, advrepair
import torch.nn.functional as F
x = torch.rand(128, 32, 56, 56, requires_grad=True)  # 51 MB: above glibc's largest mmap threshold
def step():
    pooled = F.max_pool2d(x, 2)
    torch.autograd.grad(pooled, x, torch.ones_like(pooled))  # a fresh 51 MB input gradient
for _ in range(5):  # aligned blocks leave their slack behind: the heap settles within a few steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_step_reuses_blocks_above_the_mmap_ceiling_without_page_faults():
    pages = 128 * 32 * 56 * 56 * 4 // 4096
    assert int(_probe("1", FAULTS_PROBE)) < pages // 3  # mostly served from the heap it was freed to (a few steps still fault)
    assert int(_probe("0", FAULTS_PROBE)) > pages // 2  # glibc's default maps it afresh: every page faults in again

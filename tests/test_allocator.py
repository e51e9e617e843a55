"""advrepair.allocator: freed memory kept in the process by default, with an environment switch."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from advrepair import allocator

PROBE = "import advrepair, advrepair.allocator as a; print(a.retaining_freed_memory())"


def _probe(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != allocator.ENV_SWITCH}
    if env_value is not None:
        env[allocator.ENV_SWITCH] = env_value
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_import_turns_it_on_and_the_switch_turns_it_off():
    assert _probe(None) == "True"
    assert _probe("0") == "False"
    assert _probe("1") == "True"


def test_repeated_calls_agree_with_the_recorded_state():
    assert allocator.retain_freed_memory() == allocator.retaining_freed_memory()
    assert allocator.retain_freed_memory() == allocator.retaining_freed_memory()

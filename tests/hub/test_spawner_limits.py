"""The spawners' rlimits reach the server process and everything it starts (no hub needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "extensions"))

from voxelhub_hub.spawner import ResourceLimits, VoxelHubLaptopSpawner, VoxelHubSpawner

PRINT_LIMITS = "import resource as r; print(r.getrlimit(r.RLIMIT_AS), r.getrlimit(r.RLIMIT_NPROC))"
ALLOCATE = "b = bytearray(800 * 2**20)"


def run_with(limits: ResourceLimits, code: str) -> subprocess.CompletedProcess[str]:
    # a grandchild, as a kernel is the server's child: the limits are inherited
    return subprocess.run(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', {code!r}]).returncode)",
        ],
        preexec_fn=limits.with_rlimits(None),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hard_limits_are_set_and_inherited() -> None:
    limits = ResourceLimits(process_memory_limit="3G", max_processes=4000)
    r = run_with(limits, PRINT_LIMITS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"({3 * 2**30}, {3 * 2**30}) (4000, 4000)"
    assert limits.limits_environment() == {
        "VOXELHUB_PROCESS_MEMORY_LIMIT": str(3 * 2**30),
        "VOXELHUB_MAX_PROCESSES": "4000",
    }


def test_a_kernel_over_its_memory_limit_gets_memory_error() -> None:
    r = run_with(ResourceLimits(process_memory_limit="600M"), ALLOCATE)
    assert r.returncode != 0 and "MemoryError" in r.stderr
    assert run_with(ResourceLimits(process_memory_limit="4G"), ALLOCATE).returncode == 0


def test_no_limits_by_default() -> None:
    assert ResourceLimits().rlimits() == []
    assert ResourceLimits().limits_environment() == {}


def test_both_spawners_carry_the_limits() -> None:
    for cls in (VoxelHubSpawner, VoxelHubLaptopSpawner):
        assert issubclass(cls, ResourceLimits)
        assert "process_memory_limit" in cls.class_traits(config=True)

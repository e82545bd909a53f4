"""The interpreter that runs in the allocation (the driver), checked before submit.

GB200 compute trays are Grace (aarch64) while login nodes and CI runners are often x86_64: a
driver interpreter (and its compiled packages, pydantic-core among them) built for the wrong
architecture fails on the first node with an exec format error, after the queue wait. The ELF
header says which machine a binary is for, so the mismatch is refused here instead.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Optional

from inferx_slurm.errors import RecipeError
from inferx_slurm.recipe.schema import Recipe

# ELF e_machine values (System V ABI, processor supplements).
E_MACHINE = {0x3E: "x86_64", 0xB7: "aarch64", 0x03: "i386", 0x28: "arm", 0x15: "ppc64", 0xF3: "riscv64"}
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def node_python(recipe: Recipe) -> str:
    """The driver's interpreter on the compute nodes: the recipe's (or site's) choice, or this one."""
    return recipe.slurm.python or sys.executable


def machine() -> str:
    m = platform.machine().lower()
    return _ALIASES.get(m, m)


def elf_arch(path: str | Path, _depth: int = 0) -> Optional[str]:
    """The architecture an executable runs on: from its ELF header, or from its `#!` interpreter's
    for a script (venv launchers, `/usr/bin/env python3`). None when neither tells."""
    p = Path(path).resolve()
    with open(p, "rb") as f:
        head = f.read(256)
    if head[:4] == b"\x7fELF":
        little = head[5] == 1
        e_machine = int.from_bytes(head[18:20], "little" if little else "big")
        return E_MACHINE.get(e_machine, f"e_machine 0x{e_machine:x}")
    if head[:2] == b"#!" and _depth < 4:
        words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
        if not words:
            return None
        target = words[0]
        if Path(target).name == "env" and len(words) > 1:
            target = shutil.which(words[1]) or words[1]
        return elf_arch(target, _depth + 1) if Path(target).exists() else None
    return None


def check_interpreter(recipe: Recipe) -> str:
    """Refuse (exit 2) a driver interpreter that cannot run on the profile's nodes; returns it.

    The path must exist and be executable here: the shared filesystem shows compute nodes the
    same path. An interpreter the profile's nodes cannot execute is refused by its ELF header.
    """
    from inferx_slurm.recipe.profiles import PROFILES

    py = node_python(recipe)
    field = "slurm.python"
    if not os.path.isabs(py):
        raise RecipeError(field, py, "expected an absolute path on the shared filesystem (the compute nodes run it)")
    if not (os.path.isfile(py) and os.access(py, os.X_OK)):
        raise RecipeError(field, py, "no executable file at that path here; the compute nodes see the same shared "
                          "filesystem: point it at an interpreter with inferx-slurm installed")
    want = PROFILES[recipe.profile].arch
    if want == "native":
        want = machine()
    if want is None:
        return py
    try:
        have = elf_arch(py)
    except OSError as e:
        raise RecipeError(field, py, f"cannot read it ({e.strerror})") from None
    if have is not None and have != want:
        raise RecipeError(
            field, py,
            f"is an {have} executable, but profile {recipe.profile} nodes are {want}: it would fail with an exec format "
            f"error on the first node. Point slurm.python (or the site's python) at an {want} interpreter with "
            "inferx-slurm installed on the shared filesystem",
        )
    return py

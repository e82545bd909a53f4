"""The driver's interpreter is checked against the nodes' architecture before anything is staged
or submitted: GB200 trays are aarch64, most login nodes and CI runners x86_64."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inferx_slurm.errors import RecipeError
from inferx_slurm.job.interpreter import check_interpreter, elf_arch, machine

from conftest import REPO, local_recipe


def fake_elf(path: Path, e_machine: int) -> Path:
    """A file with a real ELF64 header for `e_machine` (the header is all the check reads)."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)  # 64-bit, little-endian, version 1
    header = ident + (2).to_bytes(2, "little") + e_machine.to_bytes(2, "little") + bytes(44)
    path.write_bytes(header)
    path.chmod(0o755)
    return path


def test_elf_header_and_shebang_tell_the_architecture(tmp_path):
    assert elf_arch(fake_elf(tmp_path / "a", 0xB7)) == "aarch64"
    assert elf_arch(fake_elf(tmp_path / "x", 0x3E)) == "x86_64"
    assert elf_arch(sys.executable) == machine()  # this interpreter, through its venv symlinks
    script = tmp_path / "python-wrapper"
    script.write_text(f"#!{tmp_path / 'a'}\n")
    assert elf_arch(script) == "aarch64"


def write_recipe(tmp_path: Path, profile: str, python: Path) -> Path:
    r = local_recipe("mocker-1p1d.yaml", profile=profile, **{"slurm.python": str(python)})
    path = tmp_path / f"{profile}.yaml"
    path.write_text(r.to_yaml())
    return path


@pytest.mark.parametrize("profile,e_machine,have,want", [("h100", 0xB7, "aarch64", "x86_64"),
                                                          ("gb200-nvl72", 0x3E, "x86_64", "aarch64")])
def test_wrong_architecture_is_refused_before_submit(tmp_path, profile, e_machine, have, want):
    py = fake_elf(tmp_path / f"python-{have}", e_machine)
    path = write_recipe(tmp_path, profile, py)
    res = tmp_path / "results"
    out = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(path), "--results-dir", str(res)],
                         capture_output=True, text=True, cwd=REPO, timeout=120, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2, out.stderr
    assert "slurm.python" in out.stderr and f"is an {have} executable" in out.stderr and f"nodes are {want}" in out.stderr
    assert "Traceback" not in out.stderr and not res.exists()  # nothing staged, written or submitted
    dry = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(path), "--dry-run"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert dry.returncode == 0 and "REFUSED at launch" in dry.stdout and "warning: launch would refuse" in dry.stderr


def test_missing_or_relative_interpreter_is_named(tmp_path):
    for py, says in ((tmp_path / "nope", "no executable file"), (Path("python3"), "absolute path")):
        r = local_recipe("mocker-1p1d.yaml", **{"slurm.python": str(py)})
        with pytest.raises(RecipeError) as e:
            check_interpreter(r)
        assert e.value.field == "slurm.python" and says in str(e.value)


def test_matching_interpreter_passes_and_reaches_the_sbatch_script(tmp_path):
    from inferx_slurm.job.sbatch import sbatch_script
    from inferx_slurm.planning.placement import plan_recipe

    r = local_recipe("mocker-1p1d.yaml", **{"slurm.python": sys.executable})
    assert check_interpreter(r) == sys.executable
    assert f"{sys.executable} -u -m inferx_slurm.runtime.boot {tmp_path} -u -m submitit.core._submit" in sbatch_script(r, plan_recipe(r), tmp_path)

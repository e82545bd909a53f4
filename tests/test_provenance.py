"""Provenance facts and the image pin, against a real squashfs image."""

from __future__ import annotations

import subprocess

import pytest

from inferx_slurm.results import provenance
from inferx_slurm.recipe.schema import Recipe


def recipe(image: str, digest: str | None = None) -> Recipe:
    data = {"name": "p", "profile": "local", "model": {"path": "m"}, "topology": "1P1D TP1",
            "container": {"runtime": "pyxis", "image": image}}
    if digest:
        data["expect"] = {"image_digest": digest}
    return Recipe.from_dict(data)


@pytest.fixture
def sqsh(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "hello").write_text("hi\n")
    out = tmp_path / "img.sqsh"
    subprocess.run(["mksquashfs", str(tmp_path / "root"), str(out), "-quiet", "-noappend"], check=True)
    return out


def test_image_checksum_is_recorded_and_the_pin_checked(tmp_path, sqsh):
    run = tmp_path / "run"
    run.mkdir()
    r = recipe(str(sqsh))
    provenance.start(r, run)
    info = provenance.record_image(r, run, sqsh)
    assert info["squashfs_sha256"] == provenance.file_sha256(sqsh)
    assert (sqsh.parent / "img.sqsh.sha256").read_text().split()[1] == info["squashfs_sha256"]  # cached for the next run
    assert provenance.load(run)["image"]["squashfs_sha256"] == info["squashfs_sha256"]
    ok = recipe(str(sqsh), info["squashfs_sha256"])
    provenance.record_image(ok, run, sqsh)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(provenance.IdentityMismatch) as e:
        provenance.record_image(recipe(str(sqsh), wrong), run, sqsh)
    assert info["squashfs_sha256"] in str(e.value) and wrong in str(e.value) and "expect.image_digest" in str(e.value)


def test_differences_name_each_fact_but_not_the_nodes():
    a = {"inferx_slurm_version": "0.1.0", "environment": {"dynamo": "1.6.1", "engine": "vllm 0.11.0"}, "slurm": {"nodes": ["n1"]}}
    b = {"inferx_slurm_version": "0.1.0", "environment": {"dynamo": "1.7.0", "engine": "vllm 0.11.0"}, "slurm": {"nodes": ["n2"]}}
    assert provenance.differences(a, b) == ["Dynamo: 1.6.1 (base) vs 1.7.0 (new)"]
    assert provenance.differences(a, a) == []
    assert "Dynamo: 1.6.1" in "\n".join(provenance.format_lines(a))

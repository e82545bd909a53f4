"""Provenance: what exactly produced a results dir, so two runs can be told apart.

`provenance.json` is started when the job dir is prepared (this package's version, the
recipe's hash and the git revision of the repo it lives in, the image and its checksum) and
completed inside the allocation when the run ends (Slurm job id, partition, nodes, and what
every worker reported from its own environment at start: engine, Dynamo and NIXL versions,
model revision, GPU name / driver / CUDA from NVML).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

from inferx_slurm.version import __version__
from inferx_slurm.errors import InferxError
from inferx_slurm.fsutil import atomic_write_json, read_json
from inferx_slurm.job.paths import JobPaths

FILE = JobPaths.PROVENANCE


class IdentityMismatch(InferxError):
    """What the run would use is not what the recipe pins under `expect:`."""

    exit_code = 1


def recipe_hash(recipe_dict: dict[str, Any]) -> str:
    """sha256 of the recipe as it runs (variables expanded, overrides applied), key order free."""
    return "sha256:" + hashlib.sha256(json.dumps(recipe_dict, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def git_info(path: Optional[str]) -> dict[str, Any]:
    """Revision of the git repo holding `path`, and whether the file differs from it."""
    if not path:
        return {}
    where = str(Path(path).parent)

    def git(*args: str) -> Optional[str]:
        try:
            r = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    # One call for both: every git call is a process on the submit path.
    found = (git("rev-parse", "HEAD", "--show-toplevel") or "").splitlines()
    if len(found) != 2:
        return {}
    rev, root = found
    status = git("status", "--porcelain", "--", path)
    return {"git_revision": rev, "git_dirty": bool(status), "git_root": root}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def image_checksum(path: Path) -> str:
    """sha256 of an imported squashfs, cached beside it (keyed by size and mtime): images are
    tens of GB and read once per import, not once per run."""
    st = path.stat()
    key = f"{st.st_size}:{st.st_mtime_ns}"
    cache = path.with_name(path.name + ".sha256")
    try:
        cached_key, digest = cache.read_text().split()
        if cached_key == key:
            return digest
    except (OSError, ValueError):
        pass
    digest = file_sha256(path)
    try:
        from inferx_slurm.fsutil import atomic_write

        atomic_write(cache, f"{key} {digest}\n")
    except OSError:
        pass  # a read-only image dir still gets its checksum, just not cached
    return digest


def start(recipe: Any, results_dir: Path) -> dict[str, Any]:
    """The submit-side part, written when the job dir is prepared."""
    doc: dict[str, Any] = {
        "inferx_slurm_version": __version__,
        "recipe": {"sha256": recipe_hash(recipe.to_dict()), "name": recipe.name},
    }
    src = getattr(recipe, "source", None)
    if src:
        doc["recipe"].update({"source": src, "source_sha256": file_sha256(Path(src)) if Path(src).is_file() else None, **git_info(src)})
    if recipe.container.image:
        doc["image"] = {"uri": recipe.container.image, "runtime": recipe.container.runtime.value}
    atomic_write_json(results_dir / FILE, doc)
    return doc


def record_image(recipe: Any, results_dir: Path, sqsh: Path) -> dict[str, Any]:
    """Add the imported image's checksum and check it against `expect.image_digest`."""
    from inferx_slurm.recipe.image_uri import image_digest

    digest = image_digest(recipe.container.image)
    info = {"uri": recipe.container.image, "runtime": recipe.container.runtime.value, "path": str(sqsh),
            "squashfs_sha256": image_checksum(sqsh), "uri_digest": digest}
    doc = load(results_dir) or {}
    doc["image"] = info
    atomic_write_json(results_dir / FILE, doc)
    want = recipe.expect.image_digest
    if want and want not in (info["squashfs_sha256"], digest):
        raise IdentityMismatch(
            f"image {recipe.container.image}: its digest is {digest or 'not pinned in the URI'} and its squashfs "
            f"sha256 is {info['squashfs_sha256']}, but the recipe pins {want} (expect.image_digest); "
            "nothing was submitted")
    return info


def _unique(values: list[Any]) -> Any:
    seen = sorted({json.dumps(v, sort_keys=True) for v in values if v not in (None, "", [], {})})
    if not seen:
        return None
    decoded = [json.loads(s) for s in seen]
    return decoded[0] if len(decoded) == 1 else decoded


def finalize(job_dir: Path, hosts: list[str], reports: Optional[Path] = None) -> dict[str, Any]:
    """Complete provenance.json inside the allocation, from Slurm's environment and the workers'
    reports (in `reports`, the dir of the engines this deployment ran on; its own by default)."""
    doc = load(job_dir) or {"inferx_slurm_version": __version__}
    workers: dict[str, Any] = {}
    for p in sorted((reports or JobPaths(job_dir).worker_reports).glob("*.json")):
        try:
            workers[p.stem] = read_json(p)
        except (OSError, ValueError):
            workers[p.stem] = {"error": f"unreadable report {p.name}"}
    doc["slurm"] = {
        "job_id": os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
        or os.environ.get("SLURM_JOB_ID"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
        "nodelist": os.environ.get("SLURM_JOB_NODELIST"),
        "nodes": hosts,
        "cluster": os.environ.get("SLURM_CLUSTER_NAME"),
    }
    reports = [w for w in workers.values() if "packages" in w]
    gpus = {w["host"]: w.get("gpu") or {} for w in reports if w.get("host")}
    doc["environment"] = {
        "dynamo": _unique([w["packages"].get("dynamo") for w in reports]),
        "engine": _unique([f"{w.get('backend')} {w['engine']['version']}" for w in reports if w.get("engine", {}).get("version")]),
        "nixl": _unique([w["packages"].get("nixl") for w in reports]),
        "torch": _unique([w["packages"].get("torch") for w in reports]),
        "model_revision": _unique([w.get("model", {}).get("revision") for w in reports]),
        "gpu_name": _unique([n for g in gpus.values() for n in g.get("names", [])]),
        "gpu_driver": _unique([g.get("driver") for g in gpus.values()]),
        "cuda": _unique([g.get("cuda") for g in gpus.values()]),
        "mismatches": sorted({f"{w.get('host')}: {m}" for w in reports for m in w.get("mismatches", [])}),
    }
    doc["workers"] = workers
    atomic_write_json(job_dir / FILE, doc)
    return doc


def load(results_dir: str | Path) -> Optional[dict[str, Any]]:
    p = Path(results_dir)
    p = p if p.name == FILE else (p.parent if p.name == JobPaths.SUMMARY else p) / FILE
    try:
        return read_json(p)
    except (OSError, ValueError):
        return None


def fields(doc: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The comparable facts of a provenance document, flat, in display order."""
    doc = doc or {}
    rec, img, env, slurm = doc.get("recipe", {}), doc.get("image", {}), doc.get("environment", {}), doc.get("slurm", {})
    return {
        "inferx-slurm": doc.get("inferx_slurm_version"),
        "recipe sha256": rec.get("sha256"),
        "recipe git revision": (rec.get("git_revision") or "") + (" (modified)" if rec.get("git_dirty") else "") or None,
        "image": img.get("uri"),
        "image squashfs sha256": img.get("squashfs_sha256"),
        "engine": env.get("engine"),
        "Dynamo": env.get("dynamo"),
        "NIXL": env.get("nixl"),
        "torch": env.get("torch"),
        "model revision": env.get("model_revision"),
        "GPU": env.get("gpu_name"),
        "GPU driver": env.get("gpu_driver"),
        "CUDA": env.get("cuda"),
        "partition": slurm.get("partition"),
        "nodes": ",".join(slurm.get("nodes") or []) or None,
    }


def _shown(v: Any) -> str:
    if v is None:
        return "-"
    return ", ".join(map(str, v)) if isinstance(v, list) else str(v)


def format_lines(doc: Optional[dict[str, Any]]) -> list[str]:
    if not doc:
        return ["provenance: none recorded (a results dir from an older inferx-slurm)"]
    slurm = doc.get("slurm", {})
    lines = [f"provenance: job {slurm.get('job_id') or '-'}"]
    lines += [f"  {k}: {_shown(v)}" for k, v in fields(doc).items()]
    return lines


# Facts that differ between runs by nature, so a difference is reported but not a warning.
_EXPECTED_TO_DIFFER = {"nodes"}


def differences(base: Optional[dict[str, Any]], new: Optional[dict[str, Any]]) -> list[str]:
    a, b = fields(base), fields(new)
    return [f"{k}: {_shown(a[k])} (base) vs {_shown(b[k])} (new)" for k in a
            if k not in _EXPECTED_TO_DIFFER and a[k] != b[k]]

"""A bounded archive of a results dir for CI artifact upload: logs and raw client output,
most useful first, each file capped to its last bytes, the whole capped in size.

Engine logs of a long run reach gigabytes; an artifact store and a human need the end of
each (where the failure is) and the small files whole. What was cut or left out is listed in
`ARCHIVE-MANIFEST.txt` inside the archive.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

from inferx_slurm.benchmark.aiperf import AIPERF_EXPORT
from inferx_slurm.job.paths import JobPaths as J

# Most useful first: the diagnosis and summaries, then step logs, then raw client output.
_ORDER = [
    J.DIAGNOSIS, J.SUMMARY, J.STATUS, J.PROVENANCE, J.RECIPE_YAML, J.PLAN, J.JOB,
    f"{J.LOGS}/*.log", f"{J.WORKER_REPORTS}/*.json", f"{J.BENCH}/**/{J.CLIENT_LOG}", f"{J.BENCH}/**/{AIPERF_EXPORT}",
    f"{J.LOGS}/*.jsonl", f"{J.SUBMITIT}/*", f"{J.SCRIPTS}/*", f"{J.BENCH}/**/*.jsonl", f"{J.BENCH}/**/*",
]


def _candidates(root: Path) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for pattern in _ORDER:
        for p in sorted(root.glob(pattern)):
            if p.is_file() and not p.is_symlink() and p not in seen and not p.name.startswith("."):
                seen.add(p)
                out.append(p)
    return out


def write_archive(results_dir: Path, dest: Path, *, max_bytes: int = 50 << 20, max_file_bytes: int = 4 << 20) -> dict:
    """Write dest (tar.gz) atomically; returns {"files", "truncated", "omitted", "bytes_in"}.

    The uncompressed content is kept under max_bytes, so the archive is too.
    """
    results_dir = Path(results_dir)
    budget = max_bytes - (64 << 10)  # room for the manifest and tar headers
    included, truncated, omitted = [], [], []
    used = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for p in _candidates(results_dir):
                rel = str(p.relative_to(results_dir))
                size = p.stat().st_size
                take = min(size, max_file_bytes)
                if used + take > budget:
                    take = min(take, budget - used)
                    if take < 4096:
                        omitted.append(f"{rel} ({size} bytes)")
                        continue
                with open(p, "rb") as f:
                    if take < size:
                        f.seek(size - take)
                        truncated.append(f"{rel}: last {take} of {size} bytes")
                    data = f.read(take)
                info = tarfile.TarInfo(rel)
                info.size = len(data)
                info.mtime = int(p.stat().st_mtime)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
                used += len(data)
                included.append(rel)
            manifest = [f"archive of {results_dir.name}, written {time.strftime('%Y-%m-%d %H:%M:%S')}",
                        f"{len(included)} files, {used} bytes (limit {max_bytes}, {max_file_bytes} per file)"]
            manifest += ["", "cut to their last bytes:"] + truncated if truncated else []
            manifest += ["", "left out (size limit):"] + omitted if omitted else []
            data = ("\n".join(manifest) + "\n").encode()
            info = tarfile.TarInfo("ARCHIVE-MANIFEST.txt")
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"files": included, "truncated": truncated, "omitted": omitted, "bytes_in": used}

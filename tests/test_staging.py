"""Model staging: real processes racing, kill -9 mid-copy, interrupted stages resumed."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inferx_slurm.sharedfs.locks import LEASE_S, exclusive, read_holder
from inferx_slurm.sharedfs.stage_copy import filesystem_type
from inferx_slurm.sharedfs.staging import MANIFEST_NAME, READY_NAME, StageError, StageSourceError, is_staged, read_manifest, serving_env, stage_model, staged_name

ROOT = Path(__file__).resolve().parents[1]
_FORK = multiprocessing.get_context("fork")


def _make_model(root: Path, files: int = 120, seed: int = 0, big: int = 2 << 20) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "seed": seed}))
    (root / "empty.txt").write_bytes(b"")
    (root / "model-00001-of-00001.safetensors").write_bytes(rng.randbytes(big))
    for i in range(files):
        sub = root / f"part{i % 7}" / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"shard-{i:04d}.bin").write_bytes(rng.randbytes(rng.randint(1, 48_000)))
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name not in (MANIFEST_NAME, READY_NAME)
    }


def _assert_complete_copy(staged: Path, source: Path) -> None:
    assert is_staged(staged)
    assert _tree(staged) == _tree(source)
    manifest = read_manifest(staged)
    assert {f["path"]: f["size"] for f in manifest["files"]} == {k: len(v) for k, v in _tree(source).items()}


def _leftovers(dest: Path) -> list[str]:
    names = sorted(p.name for p in dest.iterdir() if p.name.startswith("."))
    tmp = sorted(str(p) for p in dest.rglob("*.inferx-tmp-*"))
    return names + tmp


# -- one process --------------------------------------------------------------------------------


def test_stage_then_restage_is_instant(tmp_path):
    src = _make_model(tmp_path / "Llama-Tiny")
    dest = tmp_path / "models"
    first = stage_model(src, dest, workers=4)
    assert first.path == dest / "Llama-Tiny" and not first.reused
    assert first.files_copied == len(_tree(src)) and first.files_skipped == 0
    assert first.bytes_copied == first.total_bytes == sum(len(v) for v in _tree(src).values())
    _assert_complete_copy(first.path, src)
    assert _leftovers(dest) == []
    again = stage_model(src, dest)
    assert again.reused and again.files_copied == 0 and again.files_skipped == first.files_copied
    assert again.seconds < 1.0
    assert again.path == first.path and again.total_bytes == first.total_bytes


def test_checksum_manifest(tmp_path):
    src = _make_model(tmp_path / "m", files=10)
    res = stage_model(src, tmp_path / "models", checksum=True, name="with-sums")
    for entry in read_manifest(res.path)["files"]:
        assert entry["sha256"] == hashlib.sha256((src / entry["path"]).read_bytes()).hexdigest()
    plain = stage_model(src, tmp_path / "models", name="without")
    assert all("sha256" not in e for e in read_manifest(plain.path)["files"])


def test_hf_cache_snapshot_is_copied_as_real_files(tmp_path):
    repo = tmp_path / "hub" / "models--meta-llama--Llama-3.1-8B"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    (snap / "sub").mkdir(parents=True)
    for rel, data in {"config.json": b"{}", "sub/model.safetensors": os.urandom(5000)}.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, (snap / rel).parent), snap / rel)
    assert staged_name(snap) == staged_name(repo) == "meta-llama--Llama-3.1-8B--0123456789ab"
    res = stage_model(repo, tmp_path / "models")
    assert res.path.name == "meta-llama--Llama-3.1-8B--0123456789ab"
    assert not (res.path / "config.json").is_symlink()
    assert _tree(res.path) == _tree(snap)


def test_repo_id_without_hub_client_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageSourceError) as info:
        stage_model("meta-llama/Llama-3.1-8B", tmp_path / "models")
    message = str(info.value)
    assert "pip install huggingface_hub" in message and "pre-stage" in message
    assert info.value.exit_code == 2
    assert staged_name("meta-llama/Llama-3.1-8B@main") == "meta-llama--Llama-3.1-8B--main"
    assert not (tmp_path / "models" / "meta-llama--Llama-3.1-8B").exists()


@pytest.mark.parametrize("src", ["missing-dir/../nope", "./nope", "/definitely/not/here"])
def test_missing_source_is_a_user_error(tmp_path, src):
    with pytest.raises(StageSourceError, match="does not exist"):
        stage_model(src, tmp_path / "models")


def test_unusable_path_is_a_user_error(tmp_path):
    with pytest.raises(StageSourceError, match="is not a usable path .File name too long") as info:
        stage_model("m" * 300, tmp_path / "models")
    assert info.value.exit_code == 2 and len(str(info.value)) < 300
    assert not (tmp_path / "models").exists()


def test_bad_sources_are_rejected(tmp_path):
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(StageSourceError, match="not a directory"):
        stage_model(f, tmp_path / "models")
    broken = _make_model(tmp_path / "broken", files=2)
    os.symlink(tmp_path / "gone", broken / "weights.safetensors")
    with pytest.raises(StageSourceError, match="broken symlink"):
        stage_model(broken, tmp_path / "models")
    with pytest.raises(StageSourceError, match="invalid stage name"):
        stage_model(_make_model(tmp_path / "ok", files=1), tmp_path / "models", name="../escape")


def test_never_overwrites_what_it_did_not_stage(tmp_path):
    dest = tmp_path / "models"
    (dest / "m").mkdir(parents=True)
    (dest / "m" / "notes.txt").write_text("mine")
    src = _make_model(tmp_path / "src" / "m", files=3)
    with pytest.raises(StageError, match="not a complete stage"):
        stage_model(src, dest)
    assert (dest / "m" / "notes.txt").read_text() == "mine" and len(list((dest / "m").iterdir())) == 1
    # A different checkpoint with the same directory name is refused, not mixed in.
    stage_model(src, dest, name="m2")
    other = _make_model(tmp_path / "other" / "m2", files=4, seed=9)
    with pytest.raises(StageError, match="differs from"):
        stage_model(other, dest)
    _assert_complete_copy(dest / "m2", src)


def test_lustre_striping_is_set_before_copying(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "lfs.log"
    # Logs its arguments and how many files the target dir (its last argument) holds.
    script = 'for last; do :; done\necho "$@ files=$(find "$last" -type f | wc -l)" >> ' + str(calls) + "\n"
    (fake / "lfs").write_text("#!/bin/sh\n" + script)
    (fake / "lfs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    src = _make_model(tmp_path / "m", files=5)
    dest = tmp_path / "models"
    stage_model(src, dest)
    (line,) = calls.read_text().splitlines()
    assert line.startswith("setstripe ") and f"{dest}/.m.partial" in line
    assert line.endswith("files=0")  # striping precedes the first file
    # A failing lfs costs striping, not the stage.
    (fake / "lfs").write_text("#!/bin/sh\necho 'lfs: not a Lustre filesystem' >&2\nexit 22\n")
    messages: list[str] = []
    res = stage_model(src, dest, name="m-again", log=messages.append)
    assert is_staged(res.path) and any("not a Lustre filesystem" in m for m in messages)


def test_filesystem_type_from_mounts():
    mounts = (
        "/dev/sda1 / ext4 rw 0 0\n"
        "10.0.0.1@o2ib:/scratch /lustre lustre rw,flock 0 0\n"
        "nfs:/home /lustre/home nfs rw 0 0\n"
    )
    assert filesystem_type(Path("/lustre/models/x"), mounts) == "lustre"
    assert filesystem_type(Path("/lustre/home/u"), mounts) == "nfs"
    assert filesystem_type(Path("/lustrefoo"), mounts) == "ext4"


def test_serving_env():
    env = serving_env(Path("/lustre/models/m"))
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["INFERX_MODEL_PATH"] == "/lustre/models/m"
    assert all(isinstance(v, str) for v in env.values())


# -- real processes racing ----------------------------------------------------------------------
# Racers are forked (fast to start, each a real process with its own pid, killed with SIGKILL).


def _stage_worker(src: Path, dest: Path, go: Path, out: Path, workers: int, lease_s: float) -> None:
    while not go.exists():
        time.sleep(0.002)
    res = stage_model(src, dest, workers=workers, timeout_s=60, lease_s=lease_s)
    out.write_text(res.model_dump_json())


def _spawn(n, src, dest, *, workers=2, lease_s=LEASE_S):
    run = dest.parent / f"run-{random.getrandbits(32):08x}"
    run.mkdir(parents=True)
    procs = []
    for i in range(n):
        p = _FORK.Process(target=_stage_worker, args=(src, dest, run / "go", run / f"{i}.json", workers, lease_s))
        p.start()
        p.out = run / f"{i}.json"
        procs.append(p)
    (run / "go").touch()
    return procs


def _collect(procs, timeout=60):
    out = []
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"stager {p.pid} exited with {p.exitcode}"
        out.append(json.loads(p.out.read_text()))
    return out


def test_sixteen_processes_one_stager(tmp_path):
    src = _make_model(tmp_path / "m", files=150)
    dest = tmp_path / "models"
    results = _collect(_spawn(16, src, dest))
    total = len(_tree(src))
    assert sum(r["files_copied"] for r in results) == total  # every file copied exactly once
    assert sum(not r["reused"] for r in results) == 1
    assert {r["path"] for r in results} == {str(dest / "m")}
    _assert_complete_copy(dest / "m", src)
    assert _leftovers(dest) == []


def _complete_in(partial: Path) -> set[str]:
    try:
        return {
            p.relative_to(partial).as_posix()
            for p in partial.rglob("*")
            if p.is_file() and ".inferx-tmp-" not in p.name and p.name not in (MANIFEST_NAME, READY_NAME)
        }
    except FileNotFoundError:  # renamed to its final name under our feet
        return set()


def test_interrupted_stage_resumes_copying_only_what_is_missing(tmp_path):
    src = _make_model(tmp_path / "m", files=600, big=1 << 20)
    dest = tmp_path / "models"
    partial = dest / ".m.partial"
    (p,) = _spawn(1, src, dest, workers=1)
    deadline = time.monotonic() + 30
    while len(_complete_in(partial)) < 40 and time.monotonic() < deadline and p.is_alive():
        time.sleep(0.001)
    p.kill()
    p.join()
    assert not (dest / "m").exists(), "stage finished before it could be interrupted"
    done = _complete_in(partial)
    # Every file under its real name is whole: the source's bytes, not a prefix of them.
    for rel in done:
        assert (partial / rel).read_bytes() == (src / rel).read_bytes()
    total = len(_tree(src))
    assert 0 < len(done) < total
    res = stage_model(src, dest, workers=4)
    assert res.files_skipped == len(done) and res.files_copied == total - len(done)
    _assert_complete_copy(res.path, src)
    assert _leftovers(dest) == []


KILL_LEASE_S = 10.0


@pytest.mark.parametrize("round_", range(4))
def test_kill_9_at_random_moments_then_rerun(tmp_path, round_):
    rng = random.Random(100 + round_)
    src = _make_model(tmp_path / "m", files=300, seed=round_)
    total = len(_tree(src))
    dest = tmp_path / "models"
    final, partial = dest / "m", dest / ".m.partial"
    # A victim killed between creating the lock file and writing its record leaves an empty
    # marker that clears after one lease: keep the lease well inside the survivors' 60 s wait.
    procs = _spawn(16, src, dest, lease_s=KILL_LEASE_S)
    # A random moment of the copy: once a random share of the files is in place (round 0:
    # before the first one), or when it is all over.
    target = 0 if round_ == 0 else rng.randint(1, total)
    deadline = time.monotonic() + 20
    while len(_complete_in(partial)) < target and not final.exists() and time.monotonic() < deadline:
        time.sleep(0.0005)
    holder = read_holder(dest / ".m.lock")
    victims = [p for p in procs if rng.random() < 0.7 or (holder and p.pid == holder.pid)]
    for p in victims:
        p.kill()
    for p in victims:
        p.join()  # reap first: a zombie still counts as a live lock holder
    if final.exists():
        _assert_complete_copy(final, src)  # the final name only ever holds a complete stage
    _collect([p for p in procs if p not in victims])
    if final.exists():
        _assert_complete_copy(final, src)
    rerun = _collect(_spawn(4, src, dest, lease_s=KILL_LEASE_S))
    _assert_complete_copy(final, src)
    assert sum(not r["reused"] for r in rerun) <= 1
    assert _leftovers(dest) == []


def test_waiters_are_told_who_holds_the_lock(tmp_path):
    lock = tmp_path / ".m.lock"
    ready = tmp_path / "held"

    def hold():
        with exclusive(lock, timeout_s=5, purpose="staging /src/m"):
            ready.touch()
            time.sleep(1.0)

    p = _FORK.Process(target=hold)
    p.start()
    try:
        while not ready.exists():
            time.sleep(0.01)
        seen = []
        with exclusive(lock, timeout_s=10, on_wait=seen.append) as held:
            assert held.waited_s > 0.2
        (holder,) = seen
        assert holder.pid == p.pid and holder.purpose == "staging /src/m" and holder.since is not None
        assert f"pid {p.pid} on " in holder.describe()
    finally:
        p.join()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["held"]


# -- command line -------------------------------------------------------------------------------


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "inferx_slurm", *args], env=env, capture_output=True, text=True)


def test_cli_stage_json_and_user_errors(tmp_path):
    src = _make_model(tmp_path / "m", files=5)
    ok = _cli("model", "stage", str(src), "--dest", str(tmp_path / "models"), "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["reused"] is False and doc["files_copied"] == len(_tree(src))
    assert is_staged(doc["path"])
    for args in (["model", "stage", str(tmp_path / "nope"), "--dest", str(tmp_path / "models")],
                 ["model", "stage", str(src)],
                 ["model", "stage", str(src), "--dest", str(tmp_path), "--workers", "0"]):
        bad = _cli(*args)
        assert bad.returncode == 2, bad.stderr
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    help_ = _cli("model", "stage", "--help")
    assert help_.returncode == 0 and "HF_HUB_OFFLINE" in help_.stdout

"""Image import: URI normalisation, and real processes racing and being killed mid-import.

The `enroot` used here is tests/bin/enroot, which builds a real squashfs with mksquashfs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferx_slurm.sharedfs.images import ImageImportError, import_image, verify_squashfs
from inferx_slurm.recipe.image_uri import InvalidImageURI, image_file_name, normalize_image_uri
from inferx_slurm.sharedfs.locks import LockTimeout, read_holder

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "tests" / "bin"
D = "0123456789abcdef" * 4  # a well-formed sha256 digest

needs_squashfs = pytest.mark.skipif(
    not (shutil.which("mksquashfs") and shutil.which("unsquashfs")),
    reason="needs squashfs-tools (apt-get install squashfs-tools)",
)

# enroot 3.x's own parse of an image reference (src/docker.sh); whatever we hand it must match.
ENROOT_RE = re.compile(
    r"^docker://(([A-Za-z0-9_.!~*'()%;:&=+$,-]+)@)?(([^#]+)#)?([a-z0-9/._-]+)(:([A-Za-z0-9._:-]+))?$"
)


# -- normalisation --------------------------------------------------------------------------

ACCEPT = [
    ("nvcr.io/nvidia/pytorch:25.01-py3", "docker://nvcr.io#nvidia/pytorch:25.01-py3"),
    ("docker://nvcr.io/nvidia/pytorch:25.01-py3", "docker://nvcr.io#nvidia/pytorch:25.01-py3"),
    ("docker://nvcr.io#nvidia/pytorch:25.01-py3", "docker://nvcr.io#nvidia/pytorch:25.01-py3"),
    ("nvcr.io#nvidia/pytorch:25.01-py3", "docker://nvcr.io#nvidia/pytorch:25.01-py3"),
    ("docker://user@nvcr.io#nvidia/x:1", "docker://user@nvcr.io#nvidia/x:1"),
    ("nginx:1.27.4", "docker://nginx:1.27.4"),
    ("docker://nginx:1.27.4", "docker://nginx:1.27.4"),
    ("nginx", "docker://nginx"),
    ("bitnami/redis:7.2", "docker://bitnami/redis:7.2"),
    ("docker.io/library/nginx:1.27.4", "docker://library/nginx:1.27.4"),
    ("localhost:5000/team/img:dev", "docker://localhost:5000#team/img:dev"),
    # A Docker Hub path that starts like a host name must not read back as a registry.
    ("docker.io/my.org/img:1", "docker://registry-1.docker.io#my.org/img:1"),
    ("ghcr.io/org/sub/img", "docker://ghcr.io#org/sub/img"),
    (f"nvcr.io/org/x:tag@sha256:{D}", f"docker://nvcr.io#org/x:sha256:{D}"),
    (f"nvcr.io/org/x@sha256:{D}", f"docker://nvcr.io#org/x:sha256:{D}"),
    (f"docker://nvcr.io#org/x:sha256:{D}", f"docker://nvcr.io#org/x:sha256:{D}"),
    (f"nginx@sha256:{D}", f"docker://library/nginx:sha256:{D}"),
    (f"nginx:1.27.4@sha256:{D}", f"docker://library/nginx:sha256:{D}"),
    (f"bitnami/redis@sha256:{D}", f"docker://bitnami/redis:sha256:{D}"),
    ("/shared/images/pytorch.sqsh", "/shared/images/pytorch.sqsh"),
    ("./local.sqsh", "./local.sqsh"),
    ("  nginx:1.27.4  ", "docker://nginx:1.27.4"),
    ("dockerd://nvcr.io/nvidia/x:1", "dockerd://nvcr.io/nvidia/x:1"),
]

REJECT = [
    ("", "empty"),
    ("   ", "empty"),
    ("Nginx:1.0", "Nginx"),
    ("nvcr.io/NVIDIA/x:1", "NVIDIA"),
    ("nvcr.io/x:ta g", "whitespace"),
    ("https://nvcr.io/x:1", "scheme"),
    ("oci://x:1", "scheme"),
    ("docker://", "no image name"),
    ("docker://a#b#c", "'#'"),
    ("nvcr.io/x:tag@sha256:abc", "digest"),
    ("nvcr.io/x:tag@sha256:" + "G" * 64, "digest"),
    ("nvcr.io/x@md5:00", "digest"),
    ("x::1", "cannot split"),
    ("nvcr.io/", "cannot split"),
    ("x:" + "t" * 129, "tag"),
    ("x:-bad", "tag"),
    ("nvcr.io/a//b:1", "component"),
    ("bad_registry!#x:1", "registry"),
]


@pytest.mark.parametrize(("uri", "expected"), ACCEPT)
def test_normalize_accepts(uri, expected):
    assert normalize_image_uri(uri) == expected
    # Normalising is idempotent: a normalised URI is already in enroot's form.
    assert normalize_image_uri(expected) == expected


def test_normalized_uris_parse_as_enroot_parses_them():
    for _, expected in ACCEPT:
        if expected.startswith("docker://"):
            assert ENROOT_RE.match(expected), expected


_component = st.from_regex(r"[a-z0-9]{1,6}([._-][a-z0-9]{1,4})?", fullmatch=True)
_registry = st.sampled_from([None, "nvcr.io", "ghcr.io", "localhost:5000", "registry.example.com:443", "docker.io"])
_tag = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
_digest = st.one_of(st.none(), st.from_regex(r"[0-9a-f]{64}", fullmatch=True).map(lambda h: f"sha256:{h}"))


@settings(max_examples=300, deadline=None)
@given(registry=_registry, path=st.lists(_component, min_size=1, max_size=3), tag=_tag, digest=_digest,
       scheme=st.booleans(), enroot_form=st.booleans())
def test_any_valid_reference_normalizes_for_enroot(registry, path, tag, digest, scheme, enroot_form):
    name = "/".join(path)
    ref = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    if registry:
        uri = f"{registry}#{ref}" if enroot_form else f"{registry}/{ref}"
    else:
        uri = ref
    if scheme:
        uri = "docker://" + uri
    out = normalize_image_uri(uri)
    assert ENROOT_RE.match(out), out
    assert normalize_image_uri(out) == out
    assert image_file_name(out) == image_file_name(uri)
    if digest:
        assert out.endswith(f":{digest}") and "@" not in out.split("#")[-1]
    elif tag:
        assert out.endswith(f":{tag}")


@pytest.mark.parametrize(("uri", "needle"), REJECT)
def test_normalize_rejects_with_clear_message(uri, needle):
    with pytest.raises(InvalidImageURI) as info:
        normalize_image_uri(uri)
    err = info.value
    assert isinstance(err, ValueError)
    message = str(err)
    assert repr(uri) in message and needle in message
    assert "docker://REGISTRY#IMAGE:TAG" in message and ".sqsh" in message
    assert "\n" not in message


def test_file_name_is_shared_by_spellings_of_one_image():
    same = ["nvcr.io/nvidia/x:1", "docker://nvcr.io/nvidia/x:1", "docker://nvcr.io#nvidia/x:1", "docker://me@nvcr.io#nvidia/x:1"]
    assert len({image_file_name(u) for u in same}) == 1
    hub = ["nginx:1.27.4", "docker://nginx:1.27.4", "docker.io/library/nginx:1.27.4", "library/nginx:1.27.4"]
    assert len({image_file_name(u) for u in hub}) == 1
    pinned = [f"nvcr.io/org/x:a@sha256:{D}", f"nvcr.io/org/x:b@sha256:{D}", f"docker://nvcr.io#org/x:sha256:{D}"]
    assert len({image_file_name(u) for u in pinned}) == 1
    assert image_file_name("nginx") == image_file_name("nginx:latest")


def test_file_names_differ_between_images_and_are_safe():
    uris = [
        "nvcr.io/nvidia/x:1", "nvcr.io/nvidia/x:2", "nvcr.io/nvidia/y:1", "ghcr.io/nvidia/x:1",
        "localhost:5000/x:1", "localhost/5000/x:1", f"nvcr.io/nvidia/x@sha256:{D}",
        f"nvcr.io/nvidia/x@sha512:{'ab' * 64}", "a" * 200 + ":1",
    ]
    names = [image_file_name(u) for u in uris]
    assert len(set(names)) == len(uris)
    for name in names:
        assert name.endswith(".sqsh") and len(name) < 200 and not name.startswith(".")
        assert all(c.isalnum() or c in "._+-" for c in name), name
    assert image_file_name("/x/y/my.sqsh") == "my.sqsh"


# -- squashfs verification ------------------------------------------------------------------


def _make_sqsh(tmp_path: Path, name="img.sqsh") -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hello").write_text("hi\n")
    (root / "blob").write_bytes(os.urandom(200_000))
    out = tmp_path / name
    subprocess.run(["mksquashfs", str(root), str(out), "-noappend", "-quiet", "-no-progress"], check=True)
    return out


@needs_squashfs
def test_verify_squashfs_accepts_real_and_rejects_broken(tmp_path):
    good = _make_sqsh(tmp_path)
    verify_squashfs(good)
    data = good.read_bytes()
    (tmp_path / "half.sqsh").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.sqsh").write_bytes(b"not a squashfs" * 100)
    (tmp_path / "tiny.sqsh").write_bytes(b"hsqs")
    # Intact superblock, wrecked tables: only unsquashfs notices.
    wrecked = bytearray(data)
    wrecked[-4096:] = b"\xff" * 4096
    (tmp_path / "wrecked.sqsh").write_bytes(bytes(wrecked))
    for name, needle in [("half", "truncated"), ("junk", "magic"), ("tiny", "bytes long"), ("wrecked", "unsquashfs")]:
        with pytest.raises(ImageImportError, match=needle):
            verify_squashfs(tmp_path / f"{name}.sqsh")


# -- import, one process ----------------------------------------------------------------------


@pytest.fixture
def fake_enroot(tmp_path, monkeypatch):
    log = tmp_path / "enroot.log"
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("INFERX_FAKE_ENROOT_LOG", str(log))
    monkeypatch.delenv("INFERX_FAKE_ENROOT_DELAY", raising=False)
    return log


def _imports(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def _image_uri_inside(path: Path, tmp_path: Path) -> str:
    out = tmp_path / f"x-{random.getrandbits(32)}"
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(out), str(path), "etc/image-uri"], check=True,
                   stdout=subprocess.DEVNULL)
    return (out / "etc" / "image-uri").read_text().strip()


def _only_final(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir())


@needs_squashfs
def test_import_then_reuse(tmp_path, fake_enroot):
    dest = tmp_path / "images"
    first = import_image("nvcr.io/nvidia/x:1", dest)
    assert first.imported and first.path == dest / image_file_name("nvcr.io/nvidia/x:1")
    assert first.uri == "docker://nvcr.io#nvidia/x:1"
    assert _image_uri_inside(first.path, tmp_path) == "docker://nvcr.io#nvidia/x:1"
    again = import_image("docker://nvcr.io#nvidia/x:1", dest)
    assert not again.imported and again.path == first.path
    assert len(_imports(fake_enroot)) == 1
    # Nothing but the image is left behind: no lock, temp file or scratch dir.
    assert _only_final(dest) == [first.path.name]
    # enroot got a private ENROOT_RUNTIME_PATH inside the image dir, since removed.
    runtime = Path(_imports(fake_enroot)[0][3])
    assert runtime.parent == dest and not runtime.exists()


@needs_squashfs
def test_parallel_imports_get_their_own_runtime_path(tmp_path, fake_enroot):
    dest = tmp_path / "images"
    procs = _spawn(["nvcr.io/a/x:1", "nvcr.io/a/y:1", "nvcr.io/a/z:1"], dest, fake_enroot, delay=0.3)
    results = _collect(procs)
    assert all(r["imported"] for r in results)
    runtimes = [line[3] for line in _imports(fake_enroot)]
    assert len(runtimes) == 3 and len(set(runtimes)) == 3


@needs_squashfs
def test_local_sqsh_passes_through(tmp_path, fake_enroot):
    sqsh = _make_sqsh(tmp_path, "mine.sqsh")
    res = import_image(str(sqsh), tmp_path / "images")
    assert res.path == sqsh and not res.imported and res.uri == str(sqsh)
    with pytest.raises(ImageImportError, match="does not exist"):
        import_image(str(tmp_path / "missing.sqsh"), tmp_path / "images")
    assert not _imports(fake_enroot)


@needs_squashfs
def test_failed_and_corrupt_imports_leave_nothing(tmp_path, fake_enroot, monkeypatch):
    dest = tmp_path / "images"
    monkeypatch.setenv("INFERX_FAKE_ENROOT_FAIL", "1")
    with pytest.raises(ImageImportError, match="401 Unauthorized"):
        import_image("nvcr.io/nvidia/x:1", dest)
    monkeypatch.delenv("INFERX_FAKE_ENROOT_FAIL")
    monkeypatch.setenv("INFERX_FAKE_ENROOT_CORRUPT", "1")
    with pytest.raises(ImageImportError, match="not a usable squashfs"):
        import_image("nvcr.io/nvidia/x:1", dest)
    assert _only_final(dest) == []
    monkeypatch.delenv("INFERX_FAKE_ENROOT_CORRUPT")
    assert import_image("nvcr.io/nvidia/x:1", dest).imported


@needs_squashfs
def test_missing_enroot_is_a_clear_error(tmp_path, fake_enroot):
    with pytest.raises(ImageImportError, match="not found on PATH"):
        import_image("nvcr.io/nvidia/x:1", tmp_path / "images", enroot="no-such-enroot")


@needs_squashfs
def test_foreign_file_under_final_name_is_never_replaced(tmp_path, fake_enroot):
    dest = tmp_path / "images"
    dest.mkdir()
    theirs = dest / image_file_name("nvcr.io/nvidia/x:1")
    theirs.write_text("somebody's notes")
    with pytest.raises(ImageImportError, match="move it away"):
        import_image("nvcr.io/nvidia/x:1", dest)
    assert theirs.read_text() == "somebody's notes"


# -- real processes racing ----------------------------------------------------------------------

# Racers are forked, so 16 of them start in milliseconds instead of paying 16 interpreter
# start-ups; each is a real process with its own pid, killed for real with SIGKILL.
_FORK = multiprocessing.get_context("fork")


def _import_worker(uri: str, dest: Path, go: Path, lease: float, out: Path, env: dict) -> None:
    os.environ.update(env)
    while not go.exists():
        time.sleep(0.002)
    res = import_image(uri, dest, lease_s=lease, timeout_s=60)
    out.write_text(res.model_dump_json())


def _spawn(uris, dest, log, *, delay, lease=60.0):
    run = dest.parent / f"run-{random.getrandbits(32):08x}"
    run.mkdir(parents=True)
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "INFERX_FAKE_ENROOT_LOG": str(log),
        "INFERX_FAKE_ENROOT_DELAY": str(delay),
    }
    procs = []
    for i, uri in enumerate(uris):
        p = _FORK.Process(target=_import_worker, args=(uri, dest, run / "go", lease, run / f"{i}.json", env))
        p.start()
        p.out = run / f"{i}.json"
        procs.append(p)
    (run / "go").touch()
    return procs


def _alive(procs) -> bool:
    return any(p.is_alive() for p in procs)


def _collect(procs, timeout=60):
    results = []
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"racer {p.pid} exited with {p.exitcode}"
        results.append(json.loads(p.out.read_text()))
    return results


def _assert_final_valid_whenever_present(final: Path, procs, stop_after: float) -> None:
    # Poll the final name while the race runs: it must never hold a partial file.
    end = time.monotonic() + stop_after
    while time.monotonic() < end and _alive(procs):
        if final.exists():
            verify_squashfs(final, deep=False)
        time.sleep(0.01)


@needs_squashfs
def test_sixteen_processes_one_import(tmp_path):
    dest, log = tmp_path / "images", tmp_path / "enroot.log"
    uri = "nvcr.io/nvidia/pytorch:25.01-py3"
    procs = _spawn([uri] * 16, dest, log, delay=1.0)
    final = dest / image_file_name(uri)
    _assert_final_valid_whenever_present(final, procs, 30)
    results = _collect(procs)
    assert len(_imports(log)) == 1
    assert sum(r["imported"] for r in results) == 1
    assert {r["path"] for r in results} == {str(final)}
    verify_squashfs(final)
    assert _image_uri_inside(final, tmp_path) == normalize_image_uri(uri)
    assert _only_final(dest) == [final.name]


@needs_squashfs
@pytest.mark.parametrize("round_", range(4))
def test_kill_9_mid_import_then_rerun(tmp_path, round_):
    dest, log = tmp_path / "images", tmp_path / "enroot.log"
    uri = "nvcr.io/nvidia/pytorch:25.01-py3"
    final = dest / image_file_name(uri)
    rng = random.Random(round_)
    procs = _spawn([uri] * 16, dest, log, delay=1.0)
    # A random moment: before, during or just after the import; the importer always dies.
    deadline = time.monotonic() + rng.uniform(0.0, 1.3)
    while time.monotonic() < deadline:
        if final.exists():
            verify_squashfs(final, deep=False)
        time.sleep(0.01)
    holder = read_holder(dest / f".{final.name}.lock")
    victims = [p for p in procs if rng.random() < 0.7 or (holder and p.pid == holder.pid)]
    for p in victims:
        p.kill()
    for p in victims:
        p.join()  # reap first: a zombie still counts as a live lock holder
    for p in procs:
        p.join(60)  # survivors take over the dead holder's lock and finish
    if final.exists():
        verify_squashfs(final)
    survivors = [p for p in procs if p not in victims]
    assert all(p.exitcode == 0 for p in survivors)
    # Re-run: one valid image, and every leftover (lock, temp file, scratch) is gone.
    rerun = _collect(_spawn([uri] * 4, dest, log, delay=0.2))
    verify_squashfs(final)
    assert {r["path"] for r in rerun} == {str(final)}
    assert sum(r["imported"] for r in rerun) <= 1
    time.sleep(0.3)  # an orphaned enroot would write now; the killed importers' die with them
    assert _only_final(dest) == [final.name]
    assert _image_uri_inside(final, tmp_path) == normalize_image_uri(uri)


@needs_squashfs
def test_waiter_names_a_frozen_holder_then_takes_over(tmp_path, fake_enroot):
    dest, log = tmp_path / "images", fake_enroot
    uri = "nvcr.io/nvidia/x:1"
    holder = _spawn([uri], dest, log, delay=30, lease=2.0)[0]
    lock = dest / f".{image_file_name(uri)}.lock"
    deadline = time.monotonic() + 20
    while not _imports(log) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _imports(log), "holder never started its import"
    os.kill(holder.pid, signal.SIGSTOP)  # alive but silent: no more heartbeats
    try:
        with pytest.raises(LockTimeout) as info:
            import_image(uri, dest, timeout_s=0.3, lease_s=2.0)
        message = str(info.value)
        assert f"pid {holder.pid}" in message and "importing docker://nvcr.io#nvidia/x:1" in message
        assert str(lock) in message
        res = import_image(uri, dest, timeout_s=20, lease_s=2.0)
        assert res.imported
        verify_squashfs(res.path)
    finally:
        holder.kill()
        os.kill(holder.pid, signal.SIGCONT)
        holder.join()
    assert _only_final(dest) == [res.path.name]


# -- command line -------------------------------------------------------------------------------


def _cli(*args, env_extra=None):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "inferx_slurm", *args], env=env, capture_output=True, text=True)


@needs_squashfs
def test_cli_import_json_and_user_errors(tmp_path):
    dest = tmp_path / "images"
    ok = _cli("image", "import", "nginx:1.27.4", "--dest", str(dest), "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["uri"] == "docker://nginx:1.27.4" and doc["imported"] is True
    verify_squashfs(Path(doc["path"]))
    plain = _cli("image", "import", "docker://nginx:1.27.4", "--dest", str(dest))
    assert plain.returncode == 0 and plain.stdout.strip() == doc["path"]
    bad = _cli("image", "import", "Nginx:1", "--dest", str(dest))
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert "'Nginx:1'" in bad.stderr
    help_ = _cli("image", "import", "--help")
    assert help_.returncode == 0 and "--dest" in help_.stdout and "--json" in help_.stdout

"""The node-local weight cache (model.node_cache) on real files and real processes: copies checked
against the staged manifest, reuse, kill -9 mid-copy then resume, eviction order, pins, a disk too
small or full; the recipe field, the rendered job and the dry run. The jobs themselves are in
test_node_cache_cluster.py."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inferx_slurm.errors import RecipeError
from inferx_slurm.job.node_cache import NODE_MODEL, env_file
from inferx_slurm.job.render import render
from inferx_slurm.job.srun import container_mounts, srun_argv
from inferx_slurm.planning.placement import plan_recipe
from inferx_slurm.recipe.node_cache import cap_bytes, format_bytes, mount_root, parse_size
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.runtime.node_cache_serve import settle, write_env
from inferx_slurm.runtime.node_cache_step import NodeOutcome
from inferx_slurm.runtime.steps import RunningStep
from inferx_slurm.sharedfs import node_cache_index as index
from inferx_slurm.sharedfs.node_cache import NodeCacheError, NodeCacheProblem, ensure_local, entry_name, prune
from inferx_slurm.sharedfs.stage_manifest import MANIFEST_NAME, READY_NAME, is_staged, read_manifest
from inferx_slurm.sharedfs.staging import stage_model

from conftest import GB200_SITE, REPO, local_recipe

ROOT = Path(__file__).resolve().parents[1]
KB = 1000


def staged_model(tmp: Path, name: str = "m", files: int = 20, size: int = 50 * KB, seed: int = 0, checksum: bool = False) -> Path:
    rng = random.Random(seed)
    src = tmp / "src" / name
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "seed": seed}))
    for i in range(files):
        where = src / "sub" if i % 4 == 0 else src
        (where / f"model-{i:05d}.safetensors").write_bytes(rng.randbytes(size))
    return stage_model(src, tmp / "stage", checksum=checksum).path


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name not in (MANIFEST_NAME, READY_NAME)}


def complete_in(partial: Path) -> set[str]:
    try:
        return {p.relative_to(partial).as_posix() for p in partial.rglob("*")
                if p.is_file() and ".inferx-tmp-" not in p.name and p.name not in (MANIFEST_NAME, READY_NAME)}
    except FileNotFoundError:
        return set()


def served_by(root: Path, name: str) -> float:
    return index.last_served(root, name)


# -- copying and reuse --------------------------------------------------------------------


def test_copy_is_checked_against_the_manifest_and_a_second_run_copies_nothing(tmp_path):
    staged = staged_model(tmp_path, checksum=True)
    cache = tmp_path / "cache"
    first = ensure_local(staged, cache, cap="10M", workers=4, pid=os.getpid())
    assert first.path == cache / entry_name(staged, read_manifest(staged)) and is_staged(first.path)
    assert tree(first.path) == tree(staged)
    assert read_manifest(first.path)["staged_from"] == str(staged)
    assert first.files_copied == len(tree(staged)) and first.bytes_copied == first.total_bytes > 0 and not first.reused
    again = ensure_local(staged, cache, cap="10M", pid=os.getpid())
    assert again.reused and again.files_copied == 0 and again.bytes_copied == 0 and again.path == first.path
    assert sorted(p.name for p in cache.iterdir()) == sorted([".pins", f".{first.name}.served", first.name])


def test_a_restage_is_a_new_entry_and_a_damaged_stage_is_never_copied(tmp_path):
    staged = staged_model(tmp_path, checksum=True)
    cache = tmp_path / "cache"
    old = ensure_local(staged, cache, cap="10M", pid=os.getpid())
    # Same bytes count, other content: the stage's sha256 no longer matches.
    victim = staged / "model-00001.safetensors"
    victim.write_bytes(bytes(len(victim.read_bytes())))
    manifest = json.loads((staged / MANIFEST_NAME).read_text())
    manifest["created"] += 1  # as a re-stage under the same path would leave it
    (staged / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(NodeCacheError) as e:
        ensure_local(staged, cache, cap="10M", pid=os.getpid())
    assert e.value.problem is NodeCacheProblem.mismatch and "sha256" in str(e.value)
    new_name = entry_name(staged, manifest)
    assert new_name != old.name and not (cache / new_name).exists() and is_staged(old.path)
    # A file the manifest lists at another size.
    victim.write_bytes(b"short")
    with pytest.raises(NodeCacheError, match="the staged manifest says"):
        ensure_local(staged, cache, cap="10M", pid=os.getpid())
    assert not (cache / new_name).exists()


def test_a_local_copy_damaged_by_hand_is_repaired_not_served(tmp_path):
    staged = staged_model(tmp_path)
    cache = tmp_path / "cache"
    first = ensure_local(staged, cache, cap="10M", pid=os.getpid())
    (first.path / "model-00003.safetensors").unlink()
    again = ensure_local(staged, cache, cap="10M", pid=os.getpid())
    assert again.files_copied == 1 and tree(again.path) == tree(staged)


def _step(staged: Path, cache: Path, out: Path, *, workers: int = 1, cap: str = "100M", mode: str = "optional") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("SLURM_JOB_ID", "SLURMD_NODENAME"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, "-m", "inferx_slurm.runtime.node_cache_step", "--staged", str(staged), "--dir",
                             str(cache), "--cap", cap, "--mode", mode, "--workers", str(workers), "--out", str(out), "--node", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill_9_mid_copy_is_never_served_and_the_next_copy_resumes(tmp_path):
    staged = staged_model(tmp_path, files=400, size=40 * KB)
    name = entry_name(staged, read_manifest(staged))
    cache, out = tmp_path / "cache", tmp_path / "out"
    partial, final = index.partial_path(cache, name), cache / name
    p = _step(staged, cache, out, workers=1)
    deadline = time.monotonic() + 60
    while len(complete_in(partial)) < 30 and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.001)
    p.send_signal(signal.SIGSTOP)
    done = complete_in(partial)
    p.kill()
    p.wait()
    assert not final.exists(), "the copy finished before it could be interrupted"
    assert not (out / "node0.json").exists(), "a killed step reports nothing, so the driver serves nothing from it"
    total = len(tree(staged))
    assert 30 <= len(done) < total
    for rel in done:  # every file under its real name is whole
        assert (partial / rel).read_bytes() == (staged / rel).read_bytes()
    # The killed copier's lock is taken over at once (its pid is gone), and the copy resumes.
    p = _step(staged, cache, out, workers=4)
    assert p.wait(timeout=120) == 0, p.stdout.read()
    res = NodeOutcome.model_validate_json((out / "node0.json").read_text())
    assert res.path == str(final) and res.problem is None
    assert len(done) <= total - res.files_copied < total  # what was whole was kept, the rest copied
    assert tree(final) == tree(staged) and not partial.exists()
    assert not list(cache.rglob("*.inferx-tmp-*"))


# -- eviction and pins ----------------------------------------------------------------------


def _three_models(tmp_path: Path) -> list[Path]:
    # 21 files of 50 kB + config: about 1.05 MB each.
    return [staged_model(tmp_path, name=n, seed=i) for i, n in enumerate(("a", "b", "c"))]


def test_eviction_takes_the_least_recently_served_first(tmp_path):
    a, b, c = _three_models(tmp_path)
    cache = tmp_path / "cache"
    cap = "2.2M"  # two models fit, not three
    ra = ensure_local(a, cache, cap=cap, pid=os.getpid())
    rb = ensure_local(b, cache, cap=cap, pid=os.getpid())
    for r in (ra, rb):
        index.unpin(next((cache / index.PINS / r.name).glob("*.json")))
    time.sleep(0.01)
    ensure_local(a, cache, cap=cap)  # a served again: b is now the least recently served
    for pin in (cache / index.PINS / ra.name).glob("*.json"):
        index.unpin(pin)
    assert served_by(cache, rb.name) < served_by(cache, ra.name)
    assert [e.name for e in index.entries(cache)] == [rb.name, ra.name]  # ls order: next evicted first
    rc = ensure_local(c, cache, cap=cap)
    assert rc.evicted == [rb.name]
    assert sorted(e.name for e in index.entries(cache)) == sorted([ra.name, rc.name])
    assert not (cache / rb.name).exists() and not index.served_path(cache, rb.name).exists()


def test_a_model_in_use_is_never_evicted(tmp_path):
    a, b, c = _three_models(tmp_path)
    cache = tmp_path / "cache"
    user = subprocess.Popen(["sleep", "60"])  # a live process serving a
    try:
        ra = ensure_local(a, cache, cap="2.2M", pid=user.pid)
        rb = ensure_local(b, cache, cap="2.2M")
        assert served_by(cache, ra.name) < served_by(cache, rb.name)  # a is the least recently served...
        rc = ensure_local(c, cache, cap="2.2M")
        assert rc.evicted == [rb.name] and (cache / ra.name).exists()  # ...but pinned, so b goes
        # With everything that is left in use, there is no room: an error naming who holds it.
        user2 = subprocess.Popen(["sleep", "60"])
        try:
            index.pin(cache, rc.name, pid=user2.pid)
            with pytest.raises(NodeCacheError) as e:
                ensure_local(b, cache, cap="2.2M")
            assert e.value.problem is NodeCacheProblem.too_small and ra.name in str(e.value) and rc.name in str(e.value)
            assert not index.partial_path(cache, rb.name).exists()
            assert prune(cache, everything=True).kept == sorted([ra.name, rc.name])
        finally:
            user2.kill()
            user2.wait()
    finally:
        user.kill()
        user.wait()
    # Their processes are gone: the pins no longer hold.
    res = prune(cache, everything=True)
    assert sorted(res.evicted) == sorted([ra.name, rc.name]) and res.kept == []
    assert index.entries(cache) == []


def test_a_pin_of_a_dead_process_or_an_ended_job_does_not_hold(tmp_path):
    (a, *_) = _three_models(tmp_path)
    cache = tmp_path / "cache"
    gone = subprocess.Popen(["true"])
    gone.wait()
    r = ensure_local(a, cache, cap="10M", pid=gone.pid)
    assert index.live_pins(cache, r.name) == []
    index.pin(cache, r.name, job_id="123")
    assert index.pin_alive({"job_id": "123"}, job_running=lambda j: None), "Slurm not answering: keep it"
    assert not index.pin_alive({"job_id": "123"}, job_running=lambda j: False)
    assert prune(cache, everything=True, job_running=lambda j: False).evicted == [r.name]


def test_prune_to_a_cap_and_by_name(tmp_path):
    a, b, c = _three_models(tmp_path)
    cache = tmp_path / "cache"
    names = [ensure_local(m, cache, cap="10M").name for m in (a, b, c)]  # no pins: nobody serves them
    assert prune(cache, cap="2.2M").evicted == names[:1]
    assert prune(cache, names=[names[2]]).evicted == [names[2]]
    with pytest.raises(NodeCacheError, match="holds no model nope"):
        prune(cache, names=["nope"])
    assert [e.name for e in index.entries(cache)] == [names[1]]


# -- disks too small or full ----------------------------------------------------------------


def test_a_cap_smaller_than_the_model_copies_nothing(tmp_path):
    staged = staged_model(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(NodeCacheError) as e:
        ensure_local(staged, cache, cap="100K", pid=os.getpid())
    assert e.value.problem is NodeCacheProblem.too_small and "model.node_cache.cap (100K)" in str(e.value)
    assert [p.name for p in cache.iterdir()] == [index.PINS] and not list((cache / index.PINS).rglob("*.json"))


@pytest.fixture
def tmpfs(tmp_path):
    """A small real filesystem: mount a tmpfs (needs root)."""
    mounted = []

    def make(name: str, options: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_a_disk_too_small_for_the_model(tmp_path, tmpfs):
    staged = staged_model(tmp_path)  # about 1 MB
    small = tmpfs("small", "size=512k")
    with pytest.raises(NodeCacheError) as e:
        ensure_local(staged, small / "cache", cap="100%", pid=os.getpid())
    assert e.value.problem is NodeCacheProblem.too_small and str(small / "cache") in str(e.value)
    out = tmp_path / "out"
    for mode, rc in (("optional", 0), ("required", 1)):
        p = _step(staged, small / "cache", out, cap="100%", mode=mode)
        assert p.wait(timeout=60) == rc, p.stdout.read()
        res = NodeOutcome.model_validate_json((out / "node0.json").read_text())
        assert res.path is None and res.problem == "too_small"


def test_a_disk_that_fills_up_mid_copy_is_a_clear_error_and_nothing_is_served(tmp_path, tmpfs):
    staged = staged_model(tmp_path, files=30)  # 32 files, 1.5 MB
    # Room for the bytes, not for the files: the copy runs out of inodes (ENOSPC) part way.
    full = tmpfs("full", "size=8m,nr_inodes=24")
    cache = full / "cache"
    with pytest.raises(NodeCacheError) as e:
        ensure_local(staged, cache, cap="100%", workers=2, pid=os.getpid())
    assert e.value.problem is NodeCacheProblem.disk_full
    assert f"the disk of {cache} filled up while copying" in str(e.value) and "nothing of it is served" in str(e.value)
    name = entry_name(staged, read_manifest(staged))
    assert not (cache / name).exists() and not index.partial_path(cache, name).exists()
    assert not any(".evicting-" in p.name for p in cache.iterdir())


def test_a_failing_disk_falls_back_or_fails_when_required(tmp_path):
    staged = staged_model(tmp_path)
    (tmp_path / "not-a-dir").write_text("a file where the cache's parent should be")
    bad = tmp_path / "not-a-dir" / "cache"
    with pytest.raises(NodeCacheError) as e:
        ensure_local(staged, bad, cap="10M", pid=os.getpid())
    assert e.value.problem is NodeCacheProblem.unavailable and "model.node_cache.dir" in str(e.value)
    out = tmp_path / "out"
    for mode, rc in (("optional", 0), ("required", 1)):
        p = _step(staged, bad, out, mode=mode)
        log = p.communicate(timeout=60)[0]
        assert p.returncode == rc, log
        assert ("FAILED: " if rc else "falling back to the shared copy: ") + "cannot create the node cache" in log
        assert NodeOutcome.model_validate_json((out / "node0.json").read_text()).problem == "unavailable"


def test_model_cache_ls_and_prune_from_the_command_line(tmp_path):
    staged = staged_model(tmp_path)
    copy = ensure_local(staged, tmp_path / "cache" / "n1", cap="10M")
    name, size = copy.name, format_bytes(copy.total_bytes)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INFERX_SITE": "none"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "inferx_slurm", "model", "cache", *args], capture_output=True, text=True, env=env)

    template = str(tmp_path / "cache" / "{node}")
    ls = cli("ls", "--dir", template, "--node", "n1", "--node", "n2", "--json")
    assert ls.returncode == 0, ls.stderr
    docs = json.loads(ls.stdout)
    assert [d["node"] for d in docs] == ["n1", "n2"] and not docs[1]["exists"]
    assert [m["name"] for m in docs[0]["models"]] == [name] and docs[0]["models"][0]["complete"]
    text = cli("ls", "--dir", template, "--node", "n1", "--cap", "5M").stdout
    assert f"n1: {tmp_path / 'cache' / 'n1'}: {size} of cap 5M = 5.0 MB" in text and name in text
    missing = cli("ls", "--dir", template)
    assert missing.returncode == 2 and "--node" in missing.stderr
    pruned = cli("prune", "--dir", template, "--node", "n1", "--model", name)
    assert pruned.returncode == 0 and f"evicted 1 ({size}): {name}" in pruned.stdout
    assert index.entries(tmp_path / "cache" / "n1") == []


# -- where the engines read ------------------------------------------------------------------


def _steps_with_outcomes(job_dir: Path, outcomes: dict[int, dict], exits: dict[int, int]) -> list[RunningStep]:
    from inferx_slurm.job.rendered import Step

    steps = []
    for node, doc in outcomes.items():
        if doc is not None:
            (job_dir / "node-cache").mkdir(parents=True, exist_ok=True)
            (job_dir / "node-cache" / f"node{node}.json").write_text(json.dumps({"node": node, "host": f"n{node}", "dir": "/c", **doc}))
        st = Step(name=f"node-cache.node{node}", kind="node_cache", node=node, script="s")
        rs = RunningStep(step=st, host=f"n{node}", argv=[], log=job_dir / "logs" / f"{st.name}.log")
        rs.returncode = exits.get(node, 0)
        steps.append(rs)
    return steps


def test_a_role_reads_local_copies_only_when_all_its_nodes_have_one(tmp_path):
    recipe = local_recipe("mocker-1p1d.yaml", **{"topology": "1P1D TP1->DEP8"})
    plan = plan_recipe(recipe)  # prefill-0 on node 0, decode-0 on nodes 1 and 2
    local = {n: {"path": f"/c/n{n}/m"} for n in range(3)}
    settled = settle(tmp_path / "1", plan, _steps_with_outcomes(tmp_path / "1", local, {}), "/shared/m")
    assert settled.paths == {("prefill-0", 0): "/c/n0/m", ("decode-0", 0): "/c/n1/m", ("decode-0", 1): "/c/n2/m"}
    assert settled.warnings == [] and settled.failed is None
    write_env(tmp_path / "1", settled)
    assert (tmp_path / "1" / env_file("decode-0", 1)).read_text() == "export INFERX_NODE_MODEL=/c/n2/m\n"

    one_short = {**local, 2: {"path": None, "problem": "too_small", "message": "m needs 2 GB"}}
    settled = settle(tmp_path / "2", plan, _steps_with_outcomes(tmp_path / "2", one_short, {}), "/shared/m")
    assert settled.paths == {("prefill-0", 0): "/c/n0/m", ("decode-0", 0): "/shared/m", ("decode-0", 1): "/shared/m"}
    assert settled.warnings[0] == "node 2 (n2) reads the shared copy: m needs 2 GB"
    assert "decode workers read the shared copy /shared/m" in settled.warnings[1] and "node 2 has no local copy" in settled.warnings[1]

    settled = settle(tmp_path / "3", plan, _steps_with_outcomes(tmp_path / "3", {**local, 1: None}, {1: 1}), "/shared/m")
    assert settled.failed is not None and settled.failed[0].step.node == 1 and "without an outcome" in settled.failed[1]


def test_leaders_of_one_role_on_differently_named_copies_read_the_shared_copy(tmp_path):
    recipe = local_recipe("mocker-2p1d.yaml", topology="2P1D TP4")
    plan = plan_recipe(recipe)  # two prefill workers, one on node 0 and one on node 1
    local = {n: {"path": f"/c/n{n}/m"} for n in range(3)}
    settled = settle(tmp_path, plan, _steps_with_outcomes(tmp_path, local, {}), "/shared/m")
    assert settled.paths[("prefill-0", 0)] == settled.paths[("prefill-1", 0)] == "/shared/m"
    assert settled.paths[("decode-0", 0)] == "/c/n2/m"
    assert "different paths ({node} in model.node_cache.dir)" in settled.warnings[0]


# -- the recipe, the rendered job, the dry run ------------------------------------------------


def test_cap_and_dir_parse_and_errors_name_the_field():
    assert parse_size("800G") == 800 * 10**9 and parse_size("1.5T") == 1.5e12 and parse_size("2GiB") == 2 << 30
    assert cap_bytes("50%", 1000) == 500 and cap_bytes(123, 1000) == 123
    assert mount_root("/var/tmp/c/{node}") == "/var/tmp/c" and mount_root("/l/cache-{node}/x") == "/l" and mount_root("/nvme/m") == "/nvme/m"
    r = local_recipe("mocker-1p1d.yaml", **{"model.stage_dir": "/s"})
    for bad, field in ((dict(dir="rel"), "model.node_cache.dir"), (dict(dir="/x", cap="lots"), "model.node_cache.cap"),
                       (dict(dir="/x", cap="0%"), "model.node_cache.cap"), (dict(dir="/x/{host}"), "model.node_cache.dir"),
                       (dict(dir="/x", mode="maybe"), "model.node_cache.mode"), (dict(dir="/x", wokers=2), "model.node_cache.wokers")):
        with pytest.raises(RecipeError) as e:
            r.with_overrides({"model.node_cache": bad})
        assert str(e.value).startswith(field), e.value
    with pytest.raises(RecipeError, match="set model.stage_dir too"):
        local_recipe("mocker-1p1d.yaml", **{"model.node_cache": {"dir": "/x"}})
    off = local_recipe("mocker-1p1d.yaml", **{"model.node_cache": {"dir": "/x", "mode": "off"}})
    assert render(off, "/j").files == render(local_recipe("mocker-1p1d.yaml"), "/j").files


def test_the_site_sets_it_and_a_recipe_opts_out():
    site = REPO / "examples" / "sites" / "gb200-lustre-nvme.yaml"
    gb200 = REPO / "recipes" / "disagg" / "gb200" / "minimax-m3-2p1d-dep8-dep16-1k1k.yaml"
    r = Recipe.load(gb200, site=str(site))
    assert r.model.node_cache.dir == "/local/nvme/inferx-models" and r.origins["model.node_cache"].startswith("site")
    assert Recipe.load(gb200, site=str(GB200_SITE)).model.node_cache is None
    r2 = r.with_overrides({"model.node_cache.mode": "required"})
    assert r2.model.node_cache.mode.value == "required" and r2.model.node_cache.dir == r.model.node_cache.dir


def test_the_job_copies_on_every_node_first_and_the_engines_read_their_nodes_copy():
    r = local_recipe("mocker-1p1d.yaml", **{"topology": "1P1D TP1->DEP8", "model.stage_dir": "/stage",
                                            "model.path": "/stage/tiny", "model.node_cache": {"dir": "/nvme/{node}", "cap": "1T"}})
    job = render(r, "/j")
    cache = [s for s in job.steps if s.kind == "node_cache"]
    assert [s.node for s in cache] == [0, 1, 2]
    argv = srun_argv(r, cache[1], "node2", "/j")
    assert argv[-3:] == ["bash", "/j/scripts/node-cache.sh", "1"] and "--gpus-per-node=0" in argv
    script = job.files["scripts/node-cache.sh"]
    assert "-m inferx_slurm.runtime.node_cache_step --staged /stage/tiny --dir '/nvme/{node}' --cap 1T --mode optional" in script
    decode = job.files["scripts/decode-0.sh"]
    assert 'source /j/node-cache/decode-0.n"$node_rank".env' in decode
    assert '--model-path "${INFERX_NODE_MODEL}" --model-name inferx/tiny-moe' in decode
    assert decode.index("node-cache/decode-0") < decode.index("identity_probe.py")  # the probe reads the same path
    assert '--model "${INFERX_NODE_MODEL}"' in decode and NODE_MODEL not in job.files["scripts/frontend.sh"]
    pyxis = r.with_overrides({"container": {"runtime": "pyxis", "image": "/i/x.sqsh"}})
    assert "/nvme:/nvme" in container_mounts(pyxis, "/j")


def test_dry_run_and_plan_say_where_each_node_reads_its_weights(tmp_path):
    gb200 = REPO / "recipes" / "disagg" / "gb200" / "minimax-m3-2p1d-dep8-dep16-1k1k.yaml"
    site = REPO / "examples" / "sites" / "gb200-lustre-nvme.yaml"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("STAGE_DIR", "NODE_CACHE_DIR"):
        env.pop(k, None)
    dry = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(gb200), "--dry-run", "--site", str(site),
                          "--results-dir", "/shared/r"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout
    assert "# weights: node cache (model.node_cache: dir /local/nvme/inferx-models, cap 80%, mode optional)" in out
    assert "#   staged copy /lustre/staged-models/MiniMax-M3-FP8: 444.0 GB (from model.weights_gb)" in out
    assert "#   node 7   decode-0                     reads /local/nvme/inferx-models/MiniMax-M3-FP8--<stage id>" in out
    assert "est. 3m42s per node at 2 GB/s" in out
    assert out.count("bash /shared/r/scripts/node-cache.sh") == 8
    assert "source /shared/r/node-cache/decode-0.n\"$node_rank\".env" in out
    plan = subprocess.run([sys.executable, "-m", "inferx_slurm", "plan", str(gb200), "--site", str(site)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert "weights: node cache" in plan.stdout and "est. 3m42s per node" in plan.stdout
    plain = subprocess.run([sys.executable, "-m", "inferx_slurm", "launch", str(gb200), "--dry-run", "--site", str(GB200_SITE),
                            "--results-dir", "/shared/r"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert "weights:" not in plain.stdout and "node-cache" not in plain.stdout

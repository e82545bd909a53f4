"""Ports taken on the node at start: the recipe's checked free (a taken one refused, naming its
holder), or free ones chosen (auto); and how the rendered scripts and the recipe carry them.

The port line runs here as on a node: the job dir's copy of runtime/ports.py, as a script, in
its own process; the sockets it must refuse are real ones this test holds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import local_recipe

from inferx_slurm.errors import RecipeError
from inferx_slurm.job.render import render
from inferx_slurm.planning.placement import PORTS_PER_WORKER
from inferx_slurm.runtime.ports import AUTO_RANGE, bindable, read_ports

SCRIPT = Path(__file__).resolve().parent.parent / "inferx_slurm" / "runtime" / "ports.py"
ME = Path("/proc/self/comm").read_text().strip()


def port_line(tmp_path, *args, env=None, timeout=60):
    # Claims go under TMPDIR: each test gets its own, as each node has its own /tmp.
    env = {**os.environ, "TMPDIR": str(tmp_path), **(env or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def listening_socket(port=0):
    s = socket.socket()
    s.bind(("0.0.0.0", port))
    s.listen()
    return s


def test_a_taken_explicit_port_is_refused_naming_port_field_and_holder(tmp_path):
    with listening_socket() as held:
        port = held.getsockname()[1]
        out = port_line(tmp_path, tmp_path / "frontend.env", f"frontend.http_port={port}:INFERX_HTTP_PORT")
    assert out.returncode == 3
    assert (f"port {port} (frontend.http_port) is taken on {socket.gethostname()} by pid {os.getpid()} ({ME}): "
            "stop that process, set frontend.http_port to a free port, or leave frontend.http_port out (auto)") in out.stderr
    assert not (tmp_path / "frontend.env").exists()


def test_a_block_is_refused_for_any_taken_port_in_it(tmp_path):
    with listening_socket() as held:
        port = held.getsockname()[1]
        base = port  # the first port checked is the held one
        out = port_line(tmp_path, tmp_path / "w.env", f"placement.port_base={base}:A,B/{PORTS_PER_WORKER}")
    assert out.returncode == 3
    assert f"port {port} of the block {base}-{base + PORTS_PER_WORKER - 1} (placement.port_base) is taken" in out.stderr
    assert f"pid {os.getpid()} ({ME})" in out.stderr


def test_a_free_explicit_port_is_kept(tmp_path):
    with listening_socket() as probe:
        port = probe.getsockname()[1]
    assert bindable(port)
    out = port_line(tmp_path, tmp_path / "f.env", f"frontend.http_port={port}:INFERX_HTTP_PORT")
    assert out.returncode == 0, out.stderr
    assert read_ports(tmp_path / "f.env") == {"INFERX_HTTP_PORT": port}
    assert f"INFERX_HTTP_PORT={port}" in out.stdout  # the step's log says what it took


def test_steps_starting_together_choose_apart(tmp_path):
    # Eight workers' port lines at once on one node (one network namespace, like the local
    # cluster): every block is free, inside the auto range and apart from every other.
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / f"w{i}.env"),
                               f"placement.port_base=auto:S,K,R,E/{PORTS_PER_WORKER}", "frontend.http_port=auto:H"],
                              env={**os.environ, "TMPDIR": str(tmp_path)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(8)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    taken = []
    for i in range(8):
        got = read_ports(tmp_path / f"w{i}.env")
        assert [got[k] - got["S"] for k in "SKRE"] == [0, 1, 2, 3]
        taken += [*range(got["S"], got["S"] + PORTS_PER_WORKER), got["H"]]
    assert len(taken) == len(set(taken))
    assert all(AUTO_RANGE[0] <= p < AUTO_RANGE[1] and bindable(p) for p in taken)


def test_followers_take_the_leaders_rendezvous_and_wait_for_it(tmp_path):
    leader, follower = tmp_path / "d.n0.env", tmp_path / "d.n1.env"
    req = f"placement.port_base=auto:S,K,R,E/{PORTS_PER_WORKER}"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(follower), req, "--rank", "1", "--leader", f"{leader}:R"],
                            env={**os.environ, "TMPDIR": str(tmp_path)}, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    assert proc.poll() is None  # waiting for its leader
    assert port_line(tmp_path, leader, req, "--rank", "0", "--leader", f"{leader}:R").returncode == 0
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    lead, own = read_ports(leader), read_ports(follower)
    assert own["R"] == lead["R"] and own["S"] != lead["S"]


def test_a_take_that_never_comes_names_the_file(tmp_path):
    out = port_line(tmp_path, tmp_path / "f.env", "frontend.http_port=auto:H", "--take", tmp_path / "infra.env", "--timeout", "1")
    assert out.returncode == 3 and f"{tmp_path / 'infra.env'} did not name its ports within 1 s" in out.stderr


def test_a_followers_explicit_block_may_be_held_by_its_own_job_only(tmp_path):
    # One network namespace for every node (the local cluster): the worker's leader holds the
    # block the follower checks. Held by another job, it is refused as ever.
    hold = ("import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(); "
            "print(s.getsockname()[1], flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold],
                              env={**os.environ, "SLURM_JOB_ID": "77"}, stdout=subprocess.PIPE, text=True)
    try:
        port = int(holder.stdout.readline())
        req = f"placement.port_base={port}:S"
        assert port_line(tmp_path, tmp_path / "a.env", req, "--rank", "1", env={"SLURM_JOB_ID": "77"}).returncode == 0
        assert port_line(tmp_path, tmp_path / "b.env", req, "--rank", "0", env={"SLURM_JOB_ID": "77"}).returncode == 3
        other = port_line(tmp_path, tmp_path / "c.env", req, "--rank", "1", env={"SLURM_JOB_ID": "78"})
        assert other.returncode == 3 and f"by pid {holder.pid} (python" in other.stderr
    finally:
        holder.kill()
        holder.wait()


def test_bad_request_is_named(tmp_path):
    out = port_line(tmp_path, tmp_path / "f.env", "frontend.http_port=80a:H")
    assert out.returncode == 3 and "bad request 'frontend.http_port=80a:H'" in out.stderr


def test_recipe_ports_default_to_auto_and_name_the_field_when_bad():
    r = local_recipe("mocker-2p1d-dep8.yaml")
    assert (r.frontend.http_port, r.frontend.etcd_port, r.frontend.nats_port, r.placement.port_base) == (None,) * 4
    assert local_recipe("mocker-1p1d.yaml", **{"frontend.http_port": "auto"}).frontend.http_port is None
    with pytest.raises(RecipeError, match=r"frontend.http_port: expected a port number, or auto"):
        local_recipe("mocker-1p1d.yaml", **{"frontend.http_port": "eighty"})


def test_scripts_take_auto_ports_at_start_and_check_explicit_ones(tmp_path):
    job = str(tmp_path)
    auto = render(local_recipe("mocker-2p1d-dep8.yaml"), job).files
    assert "frontend.etcd_port=auto:INFERX_ETCD_PORT,INFERX_ETCD_PEER_PORT frontend.nats_port=auto:INFERX_NATS_PORT" in auto["scripts/infra.sh"]
    front = auto["scripts/frontend.sh"]
    assert f"frontend.http_port=auto:INFERX_HTTP_PORT --take {job}/ports/infra.env" in front
    assert '--http-port "${INFERX_HTTP_PORT}"' in front and 'ETCD_ENDPOINTS=http://"${INFRA_ADDR}":"${INFERX_ETCD_PORT}"' in front
    dec = auto["scripts/decode-0.sh"]
    assert f'--rank "$node_rank" --leader {job}/ports/decode-0.n0.env:INFERX_RENDEZVOUS_PORT' in dec
    assert dec.index("scripts/ports.py") < dec.index("export ETCD_ENDPOINTS")  # its ports before what uses them
    fixed = render(local_recipe("mocker-2p1d-dep8.yaml", **{"frontend.http_port": 18081, "frontend.etcd_port": 12379,
                                                             "frontend.nats_port": 14222, "placement.port_base": 22000}), job).files
    front = fixed["scripts/frontend.sh"]
    assert "frontend.http_port=18081:INFERX_HTTP_PORT" in front and "--http-port 18081" in front and "--take" not in front
    assert "frontend.etcd_port=12379:INFERX_ETCD_PORT,INFERX_ETCD_PEER_PORT" in fixed["scripts/infra.sh"]
    assert "--listen-peer-urls http://127.0.0.1:12380" in fixed["scripts/infra.sh"]
    block = "INFERX_SYSTEM_PORT,INFERX_KV_SIDE_CHANNEL_PORT,INFERX_RENDEZVOUS_PORT,INFERX_KV_EVENTS_PORT"
    assert f"placement.port_base=22020:{block}/10" in fixed["scripts/decode-0.sh"]
    assert "DYN_SYSTEM_PORT=22020" in fixed["scripts/decode-0.sh"]
    assert auto["scripts/ports.py"] == SCRIPT.read_text()


@pytest.mark.parametrize("where", ["env", "engine.env", "engine.prefill.env"])
@pytest.mark.parametrize("var", ["VLLM_NIXL_SIDE_CHANNEL_PORT", "DYN_SYSTEM_PORT"])
def test_a_worker_port_written_in_env_is_refused_naming_the_field(where, var):
    # Each worker's script sets these from its port block after the recipe's environment: a
    # value in env would be replaced without a word, so it is refused at load.
    with pytest.raises(RecipeError) as e:
        local_recipe("mocker-1p1d.yaml", **{where: {var: "5600"}})
    assert e.value.field == where and var in str(e.value) and "placement.port_base" in str(e.value)
    # The way to fix them is accepted, and reaches the worker.
    fixed = render(local_recipe("mocker-1p1d.yaml", **{"placement.port_base": 22000}), "/job").files["scripts/prefill-0.sh"]
    assert "DYN_SYSTEM_PORT=22000" in fixed and "VLLM_NIXL_SIDE_CHANNEL_PORT=22001" in fixed

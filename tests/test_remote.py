"""Remote submission through a real sshd on 127.0.0.1 (key auth, host key checked)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sshd(d: Path, key_pub: Path, extra: str = ""):
    """A real sshd on 127.0.0.1 with its own host key; returns (process, port, known_hosts line)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")], check=True)
    (d / "authorized_keys").write_text(key_pub.read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    (d / "sshd_config").write_text(f"""
Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AcceptEnv LANG
{extra}
""")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation dir sshd insists on
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "sshd.log", "w"))
    end = time.time() + 30
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("sshd did not start: " + (d / "sshd.log").read_text())
    host_pub = (d / "host.pub").read_text().split()
    return proc, port, f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "user")], check=True)
    proc, port, known = start_sshd(d, d / "user.pub", "Subsystem sftp internal-sftp")
    (d / "known_hosts").write_text(known)
    yield {"port": port, "key": str(d / "user"), "known_hosts": str(d / "known_hosts"), "dir": d}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def bastion(sshd, tmp_path_factory):
    """A jump host that only forwards: no shell, no command, no SFTP, no TTY."""
    d = tmp_path_factory.mktemp("bastion")
    proc, port, known = start_sshd(d, Path(sshd["key"] + ".pub"),
                                   "AllowTcpForwarding yes\nForceCommand /bin/false\nPermitTTY no\nX11Forwarding no\nLogLevel DEBUG1")
    with open(sshd["known_hosts"], "a") as f:
        f.write(known)
    yield {"port": port, "log": d / "sshd.log"}
    proc.terminate()
    proc.wait(timeout=10)


def ssh_config_home(tmp_path, sshd, bastion) -> dict[str, str]:
    """A HOME whose ~/.ssh/config reaches the login node only by alias, through the bastion."""
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(f"""
Host login
    HostName 127.0.0.1
    Port {sshd['port']}
    User root
    IdentityFile {sshd['key']}
    ProxyJump jump
    ServerAliveInterval 5
    UserKnownHostsFile {sshd['known_hosts']}

Host jump
    HostName 127.0.0.1
    Port {bastion['port']}
    User root
    IdentityFile {sshd['key']}
    UserKnownHostsFile {sshd['known_hosts']}
""")
    return {"HOME": str(tmp_path)}


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "inferx_slurm", *args], capture_output=True, text=True, timeout=300, cwd=REPO, **kw)


def ssh_args(sshd, *extra):
    return ["--identity", sshd["key"], "--known-hosts", sshd["known_hosts"],
            "--remote-command", f"cd {REPO} && {sys.executable} -m inferx_slurm", *extra]


def test_remote_dry_run_matches_local(sshd):
    recipe = "recipes/disagg/gb200/minimax-m3-2p1d-dep8-dep16-1k1k.yaml"
    remote = cli("launch", recipe, "--dry-run", "--results-dir", "/shared/r", "--remote", f"root@127.0.0.1:{sshd['port']}", *ssh_args(sshd))
    assert remote.returncode == 0, remote.stderr
    local = cli("launch", recipe, "--dry-run", "--results-dir", "/shared/r")
    assert remote.stdout.strip() == local.stdout.strip()
    uploaded = list(Path.home().joinpath(".inferx-slurm").glob("minimax-m3-gb200-2p1d-dep8-dep16-1k1k-*.yaml"))
    assert uploaded and "topology: 2P1D DEP8->DEP16" in uploaded[-1].read_text()


def test_bad_recipe_never_leaves_this_machine(sshd, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nmodel: {path: m}\ntopology: 1P1D TP4\nbenchmark: {concurency: [1]}\n")
    out = cli("launch", str(bad), "--remote", "root@127.0.0.1:1", *ssh_args(sshd))  # port 1: nothing listens
    assert out.returncode == 2 and "benchmark.concurency" in out.stderr


def test_unknown_host_key_is_refused(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    out = cli("remote", "--identity", sshd["key"], "--known-hosts", str(empty), f"root@127.0.0.1:{sshd['port']}", "--", "profiles")
    assert out.returncode == 1 and "unknown host key" in out.stderr
    ok = cli("remote", "--identity", sshd["key"], "--known-hosts", str(empty), "--accept-new-host-key",
             "--remote-command", f"{sys.executable} -m inferx_slurm", f"root@127.0.0.1:{sshd['port']}", "--", "profiles")
    assert ok.returncode == 0 and "gb200-nvl72" in ok.stdout
    assert "127.0.0.1" in empty.read_text()


def test_remote_exit_status_and_stderr_come_back(sshd):
    out = cli("remote", *ssh_args(sshd), f"root@127.0.0.1:{sshd['port']}", "--", "plan", "1P1D DEP6")
    assert out.returncode == 2 and "topology.prefill" in out.stderr


@pytest.mark.cluster
def test_remote_launch_runs_on_the_cluster(sshd, cluster, tmp_path):
    out = cli("launch", "recipes/disagg/local/mocker-1p1d.yaml", "--wait", "--results-dir", str(tmp_path / "run"),
              "--remote", f"root@127.0.0.1:{sshd['port']}", *ssh_args(sshd, "--remote-env", f"SLURM_CONF={cluster.slurm_conf}",
                                                                    "--remote-env", f"INFERX_LOCAL_CLUSTER_DIR={cluster.state_dir}"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "requests through prefill and decode: 30" in out.stdout
    assert (tmp_path / "run" / "summary.json").exists()


def test_bastion_only_forwards(sshd, bastion, tmp_path):
    env = {**os.environ, **ssh_config_home(tmp_path, sshd, bastion)}
    out = cli("remote", "--remote-command", f"{sys.executable} -m inferx_slurm", "jump", "--", "profiles", env=env)
    # Reached and authenticated, but ForceCommand /bin/false runs instead of anything asked.
    assert out.returncode == 1 and out.stdout == "" and "error" not in out.stderr


def test_alias_through_proxyjump_runs_remote_commands(sshd, bastion, tmp_path):
    env = {**os.environ, **ssh_config_home(tmp_path, sshd, bastion)}
    out = cli("remote", "--remote-command", f"cd {REPO} && {sys.executable} -m inferx_slurm", "login", "--", "plan", "1P1D DEP6", env=env)
    assert out.returncode == 2 and "topology.prefill" in out.stderr
    assert f"target 127.0.0.1 port {sshd['port']}" in bastion["log"].read_text()


def test_jump_host_that_refuses_forwarding_is_named(sshd, tmp_path):
    d = tmp_path / "closed"
    d.mkdir()
    proc, port, known = start_sshd(d, Path(sshd["key"] + ".pub"), "AllowTcpForwarding no\nForceCommand /bin/false")
    try:
        kh = tmp_path / "known_hosts"
        kh.write_text(Path(sshd["known_hosts"]).read_text() + known)
        cfg = tmp_path / "ssh_config"
        cfg.write_text(f"Host login\n HostName 127.0.0.1\n Port {sshd['port']}\n User root\n ProxyJump root@127.0.0.1:{port}\n")
        out = cli("remote", "--ssh-config", str(cfg), "--identity", sshd["key"], "--known-hosts", str(kh), "login", "--", "profiles")
        assert out.returncode == 1 and f"jump host 127.0.0.1:{port} would not forward to 127.0.0.1:{sshd['port']}" in out.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.cluster
def test_remote_alias_launch_through_bastion_runs_on_the_cluster(sshd, bastion, cluster, tmp_path):
    env = {**os.environ, **ssh_config_home(tmp_path, sshd, bastion)}
    out = cli("launch", "recipes/disagg/local/mocker-1p1d.yaml", "--wait", "--results-dir", str(tmp_path / "run"), "--remote", "login",
              "--remote-command", f"cd {REPO} && {sys.executable} -m inferx_slurm", "--remote-env", f"SLURM_CONF={cluster.slurm_conf}",
              "--remote-env", f"INFERX_LOCAL_CLUSTER_DIR={cluster.state_dir}", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "requests through prefill and decode: 30" in out.stdout
    assert (tmp_path / "run" / "summary.json").exists()
    log = bastion["log"].read_text()
    assert f"target 127.0.0.1 port {sshd['port']}" in log


@pytest.mark.cluster
def test_ci_remote_brings_the_result_files_and_report_back(sshd, cluster, tmp_path):
    """A runner outside the cluster: `ci --remote` checks here, runs on the login node, and
    leaves the result files, step summary and outputs here as a local run would; the baseline
    gate runs here against the runner's own baseline files."""
    import json

    def ci(ws: Path, *extra: str):
        ws.mkdir()
        gha = {"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(ws), "GITHUB_STEP_SUMMARY": str(ws.parent / f"{ws.name}.md"),
               "GITHUB_OUTPUT": str(ws.parent / f"{ws.name}.out"), "RESULT_FILENAME": "m3_remote"}
        return cli("ci", "recipes/disagg/local/mocker-1p1d.yaml", "--remote", f"root@127.0.0.1:{sshd['port']}",
                   *ssh_args(sshd, "--remote-env", f"SLURM_CONF={cluster.slurm_conf}",
                             "--remote-env", f"INFERX_LOCAL_CLUSTER_DIR={cluster.state_dir}"), *extra, env={**os.environ, **gha})

    out = ci(tmp_path / "ws")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "ws").iterdir())
    assert names == ["LOGS", "agg_m3_remote_isl_128_osl_32_conc1_gpus_2_ctx_1_gen_1.json", "agg_m3_remote_isl_128_osl_32_conc4_gpus_2_ctx_1_gen_1.json",
                     "m3_remote_isl_128_osl_32_conc1_gpus_2_ctx_1_gen_1.json", "m3_remote_isl_128_osl_32_conc4_gpus_2_ctx_1_gen_1.json",
                     "multinode_server_logs.tar.gz"]
    doc = json.loads((tmp_path / "ws" / names[2]).read_text())
    assert doc["conc"] == 4 and doc["tput_per_gpu"] > 0
    # LOGS/ comes back with its subdirectories
    assert (tmp_path / "ws" / "LOGS" / "isl_128_osl_32" / "results_concurrency_4_gpus_2_ctx_1_gen_1.json").is_file()
    summary = (tmp_path / "ws.md").read_text()
    assert ": passed" in summary and f"127.0.0.1:{sshd['port']}:" in summary and str(tmp_path / "ws" / names[1]) in summary
    outputs = dict(line.split("=", 1) for line in (tmp_path / "ws.out").read_text().splitlines() if "=" in line)
    assert outputs["outcome"] == "passed" and float(outputs["best_tput_per_gpu"]) > 0 and outputs["job_id"]

    slow = ci(tmp_path / "ws2", "--set", "engine.args.speedup-ratio=1", "--baseline", str(tmp_path / "ws" / names[2]))
    assert slow.returncode == 5, slow.stdout[-3000:] + slow.stderr[-3000:]
    assert "::error title=inferx-slurm regression (exit 5)::tput_per_gpu at ISL 128 OSL 32 conc 4" in slow.stdout
    assert "REGRESSION" in (tmp_path / "ws2.md").read_text()

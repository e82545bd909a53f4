"""Remote submission over SSH: validate here, run on the cluster's login node.

The recipe is loaded, expanded and checked on this machine (a typo never costs a round
trip), uploaded over SFTP as the exact YAML that will run, and `inferx-slurm` runs on the
login node with its output streamed back line by line. The remote exit status is returned,
so scripts and notebooks see a failed run as a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from inferx_slurm.errors import InferxError, RecipeError
from inferx_slurm.recipe.schema import Recipe

_TARGET_RE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>[^:@\s]+)(?::(?P<port>\d+))?$")


class RemoteError(InferxError):
    exit_code = 1


@dataclass
class Hop:
    """One SSH endpoint after ~/.ssh/config is applied."""

    hostname: str
    port: int = 22
    user: Optional[str] = None
    identities: list[str] = field(default_factory=list)
    proxy_jump: Optional[str] = None
    keepalive_s: Optional[int] = None
    known_hosts: Optional[str] = None

    def label(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.hostname}:{self.port}"


def load_ssh_config(path: Optional[str]):
    """The user's ssh_config (~/.ssh/config unless another is named); empty when there is none."""
    import paramiko

    p = Path(os.path.expanduser(path or "~/.ssh/config"))
    if not p.is_file():
        if path:
            raise RecipeError("--ssh-config", path, "no such file: name an ssh_config file, or leave it out for ~/.ssh/config")
        return paramiko.SSHConfig()
    return paramiko.SSHConfig.from_path(str(p))


def resolve_hop(target: str, config, *, user: Optional[str] = None, port: Optional[int] = None,
                identity: Optional[str] = None) -> Hop:
    """[USER@]HOST[:PORT] through ssh_config: what the target spells out wins over the config's
    Host block (HostName, User, Port, IdentityFile, ProxyJump, ServerAliveInterval,
    UserKnownHostsFile), which wins over ssh's defaults."""
    m = _TARGET_RE.match(target or "")
    if not m:
        raise RecipeError("--remote", target, "expected [USER@]HOST[:PORT] or a Host alias from ~/.ssh/config")
    found = config.lookup(m.group("host"))
    jump = found.get("proxyjump")
    alive = found.get("serveraliveinterval")
    return Hop(
        hostname=found.get("hostname", m.group("host")),
        port=int(m.group("port") or port or found.get("port", 22)),
        user=m.group("user") or user or found.get("user"),
        identities=[identity] if identity else [os.path.expanduser(i) for i in found.get("identityfile", [])],
        proxy_jump=None if not jump or jump.lower() == "none" else jump,
        keepalive_s=int(alive) if alive and alive.isdigit() and int(alive) > 0 else None,
        known_hosts=os.path.expanduser(found["userknownhostsfile"].split()[0]) if found.get("userknownhostsfile") else None,
    )


@dataclass
class Remote:
    """A login node reached over SSH, as ~/.ssh/config describes it (aliases, ProxyJump through
    bastions). Host keys are checked against known_hosts; an unknown host is refused unless
    accept_new_host_key is set (first contact, trust on first use)."""

    host: str
    user: Optional[str] = None
    port: Optional[int] = None
    identity: Optional[str] = None
    known_hosts: Optional[str] = None
    accept_new_host_key: bool = False
    command: str = "inferx-slurm"
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ".inferx-slurm"
    ssh_config: Optional[str] = None
    # Long `launch --wait` runs print nothing for minutes; NAT and firewalls drop idle sessions.
    keepalive_s: int = 30
    target: str = ""

    @classmethod
    def parse(cls, target: str, **kw) -> "Remote":
        m = _TARGET_RE.match(target or "")
        if not m:
            raise RecipeError("--remote", target, "expected [USER@]HOST[:PORT] or a Host alias from ~/.ssh/config, e.g. alice@login.cluster:22")
        return cls(host=m.group("host"), user=m.group("user"), port=int(m.group("port")) if m.group("port") else None,
                   target=target, **kw)

    def _open(self, hop: Hop, sock=None):
        import paramiko

        client = paramiko.SSHClient()
        known = self.known_hosts or hop.known_hosts
        if known:
            if Path(known).exists():
                client.load_host_keys(known)
        else:
            client.load_system_host_keys()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy() if self.accept_new_host_key else paramiko.RejectPolicy())
        try:
            client.connect(hop.hostname, port=hop.port, username=hop.user, key_filename=hop.identities or None, timeout=15,
                           allow_agent=not hop.identities, look_for_keys=not hop.identities, sock=sock)
        except paramiko.SSHException as e:
            hint = " (unknown host key: add it to known_hosts or pass --accept-new-host-key)" if "not found in known_hosts" in str(e) else ""
            raise RemoteError(f"ssh {hop.label()}: {e}{hint}") from None
        except OSError as e:
            raise RemoteError(f"ssh {hop.label()}: cannot connect: {e}") from None
        if self.accept_new_host_key and known:
            client.save_host_keys(known)
        client.get_transport().set_keepalive(hop.keepalive_s or self.keepalive_s)
        return client

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """One SSH connection (through every ProxyJump hop) for everything done inside."""
        import paramiko

        config = load_ssh_config(self.ssh_config)
        hop = resolve_hop(self.target or self.host, config, user=self.user, port=self.port, identity=self.identity)
        clients: list[Any] = []
        try:
            sock = None
            for jump in (hop.proxy_jump.split(",") if hop.proxy_jump else []):
                jhop = resolve_hop(jump.strip(), config)
                if not jhop.identities and self.identity:
                    jhop.identities = [self.identity]  # --identity serves hops the config gives no key
                if clients:
                    sock = self._forward(clients[-1], jhop)
                clients.append(self._open(jhop, sock))
            if clients:
                sock = self._forward(clients[-1], hop)
            clients.append(self._open(hop, sock))
            yield clients[-1]
        except paramiko.SSHException as e:
            raise RemoteError(f"ssh {hop.label()}: {e}") from None
        finally:
            for c in reversed(clients):
                c.close()

    @staticmethod
    def _forward(via, to: Hop):
        import paramiko

        try:
            return via.get_transport().open_channel("direct-tcpip", (to.hostname, to.port), ("127.0.0.1", 0))
        except (paramiko.ChannelException, paramiko.SSHException) as e:
            peer = via.get_transport().getpeername()
            raise RemoteError(f"ssh jump host {peer[0]}:{peer[1]} would not forward to {to.hostname}:{to.port} ({e}); "
                              "it needs AllowTcpForwarding yes") from None

    def run(self, argv: list[str], *, out: Optional[Callable[[str], None]] = None, err: Optional[Callable[[str], None]] = None,
            client=None) -> int:
        """Run `command ARGV` on the login node, streaming its stdout and stderr lines to `out`
        and `err` (dropped where not given); returns its exit status."""
        if client is None:
            with self.session() as c:
                return self.run(argv, out=out, err=err, client=c)
        out = out or _drop
        err = err or _drop
        # export, not a VAR=value prefix: the command may be several (cd DIR && ...).
        env = "".join(f"export {k}={shlex.quote(v)}; " for k, v in self.env.items())
        line = f"{env}{self.command} {shlex.join(argv)}"
        chan = client.get_transport().open_session()
        chan.exec_command(f"bash -lc {shlex.quote(line)}")
        buffers = {"out": b"", "err": b""}
        while True:
            moved = False
            if chan.recv_ready():
                buffers["out"] += chan.recv(65536)
                moved = True
            if chan.recv_stderr_ready():
                buffers["err"] += chan.recv_stderr(65536)
                moved = True
            for key, sink in (("out", out), ("err", err)):
                *lines, buffers[key] = buffers[key].split(b"\n")
                for ln in lines:
                    sink(ln.decode(errors="replace"))
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if not moved:
                time.sleep(0.05)
        for key, sink in (("out", out), ("err", err)):
            if buffers[key]:
                sink(buffers[key].decode(errors="replace"))
        return chan.recv_exit_status()

    def upload(self, text: str, name: str, *, client=None) -> str:
        """Write `text` to WORKDIR/name on the login node (atomically) and return the remote path."""
        if client is None:
            with self.session() as c:
                return self.upload(text, name, client=c)
        sftp = client.open_sftp()
        try:
            home = sftp.normalize(".")
            root = self.workdir if self.workdir.startswith("/") else f"{home}/{self.workdir}"
            _mkdirs(sftp, root)
            final = f"{root}/{name}"
            tmp = f"{final}.part"
            with sftp.open(tmp, "w") as f:
                f.write(text)
            sftp.posix_rename(tmp, final)
            return final
        finally:
            sftp.close()

    def download_dir(self, remote_dir: str, local_dir: Path, *, client) -> list[Path]:
        """Copy the plain files of a remote dir and its subdirs into local_dir (each under a
        temporary name, then renamed, so a reader never sees half a file); returns the local
        paths of the top-level files."""
        import stat as stat_mod

        sftp = client.open_sftp()
        got: list[Path] = []

        def copy(rdir: str, ldir: Path, top: bool) -> None:
            ldir.mkdir(parents=True, exist_ok=True)
            for entry in sftp.listdir_attr(rdir):
                mode = entry.st_mode or 0
                if stat_mod.S_ISDIR(mode):
                    copy(f"{rdir}/{entry.filename}", ldir / entry.filename, False)
                if not stat_mod.S_ISREG(mode):
                    continue
                final = ldir / entry.filename
                tmp = ldir / f".{entry.filename}.part"
                sftp.get(f"{rdir}/{entry.filename}", str(tmp))
                tmp.replace(final)
                if top:
                    got.append(final)

        try:
            copy(remote_dir, local_dir, True)
        except FileNotFoundError:
            return got
        finally:
            sftp.close()
        return got

    def launch(self, recipe: Recipe, args: list[str], *, subcommand: str = "launch", **kw) -> int:
        """Upload the validated recipe and run `launch` (or `ci`) with it, over one connection."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        with self.session() as client:
            # Only what this side set (recipe and site): the cluster's own site file fills the rest there.
            path = self.upload(recipe.to_yaml(only_set=True), f"{recipe.name}-{stamp}.yaml", client=client)
            return self.run([subcommand, path, *args], client=client, **kw)


def _drop(line: str) -> None:
    pass


def _mkdirs(sftp, path: str) -> None:
    current = ""
    for part in path.split("/"):
        if not part:
            current = current or "/"
            continue
        current = f"{current.rstrip('/')}/{part}" if current else part
        try:
            sftp.stat(current)
        except FileNotFoundError:
            sftp.mkdir(current)

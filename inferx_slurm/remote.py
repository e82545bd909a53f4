"""Remote submission over SSH: validate here, run on the cluster's login node.

The recipe is loaded, expanded and checked on this machine (a typo never costs a round
trip), uploaded over SFTP as the exact YAML that will run, and `inferx-slurm` runs on the
login node with its output streamed back line by line. The remote exit status is returned,
so scripts and notebooks see a failed run as a failure.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import InferxError, RecipeError
from .recipe import Recipe

_TARGET_RE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>[^:@\s]+)(?::(?P<port>\d+))?$")


class RemoteError(InferxError):
    exit_code = 1


@dataclass
class Remote:
    """A login node reached over SSH. Host keys are checked against known_hosts; an unknown
    host is refused unless accept_new_host_key is set (first contact, trust on first use)."""

    host: str
    user: Optional[str] = None
    port: int = 22
    identity: Optional[str] = None
    known_hosts: Optional[str] = None
    accept_new_host_key: bool = False
    command: str = "inferx-slurm"
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ".inferx-slurm"

    @classmethod
    def parse(cls, target: str, **kw) -> "Remote":
        m = _TARGET_RE.match(target or "")
        if not m:
            raise RecipeError("--remote", target, "expected [USER@]HOST[:PORT], e.g. alice@login.cluster:22")
        return cls(host=m.group("host"), user=m.group("user"), port=int(m.group("port") or 22), **kw)

    def _connect(self):
        import paramiko

        client = paramiko.SSHClient()
        if self.known_hosts:
            client.load_host_keys(self.known_hosts)
        else:
            client.load_system_host_keys()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy() if self.accept_new_host_key else paramiko.RejectPolicy())
        try:
            client.connect(self.host, port=self.port, username=self.user, key_filename=self.identity, timeout=15,
                           allow_agent=self.identity is None, look_for_keys=self.identity is None)
        except paramiko.SSHException as e:
            hint = " (unknown host key: add it to known_hosts or pass --accept-new-host-key)" if "not found in known_hosts" in str(e) else ""
            raise RemoteError(f"ssh {self.user + '@' if self.user else ''}{self.host}:{self.port}: {e}{hint}") from None
        except OSError as e:
            raise RemoteError(f"ssh {self.host}:{self.port}: cannot connect: {e}") from None
        if self.accept_new_host_key and self.known_hosts:
            client.save_host_keys(self.known_hosts)
        return client

    def run(self, argv: list[str], *, out: Callable[[str], None] = print, err: Optional[Callable[[str], None]] = None) -> int:
        """Run `command ARGV` on the login node, streaming its output; returns its exit status."""
        err = err or (lambda line: print(line, file=sys.stderr))
        client = self._connect()
        try:
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
        finally:
            client.close()

    def upload(self, text: str, name: str) -> str:
        """Write `text` to WORKDIR/name on the login node (atomically) and return the remote path."""
        client = self._connect()
        try:
            sftp = client.open_sftp()
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
            client.close()

    def launch(self, recipe: Recipe, args: list[str], **kw) -> int:
        """Upload the validated recipe and run `launch` with it on the login node."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.upload(recipe.to_yaml(), f"{recipe.name}-{stamp}.yaml")
        return self.run(["launch", path, *args], **kw)


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

"""`inferx-slurm remote TARGET -- ARGS`: any subcommand on a cluster's login node over SSH,
and the SSH options `launch --remote` shares."""

from __future__ import annotations

import argparse

from inferx_slurm.commands.output import to_stderr, to_stdout
from inferx_slurm.errors import RecipeError
from inferx_slurm.job.remote import Remote


def add_remote_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    g = p.add_argument_group("remote (SSH)")
    if not required:
        g.add_argument("--remote", metavar="[USER@]HOST[:PORT]",
                       help="validate here, then run on this login node over SSH (a Host alias from ~/.ssh/config works, ProxyJump included)")
    g.add_argument("--identity", metavar="KEY", help="SSH private key (default: IdentityFile from ~/.ssh/config, else agent and ~/.ssh keys)")
    g.add_argument("--known-hosts", metavar="FILE", help="known_hosts to check the host key against (default: system and ~/.ssh)")
    g.add_argument("--accept-new-host-key", action="store_true", help="trust an unknown host key on first contact")
    g.add_argument("--remote-command", default="inferx-slurm", metavar="CMD", help="how to run inferx-slurm there (default: inferx-slurm)")
    g.add_argument("--ssh-config", metavar="FILE", help="ssh_config to read Host aliases from (default: ~/.ssh/config)")
    g.add_argument("--remote-env", action="append", default=[], metavar="NAME=VALUE", help="environment for the remote command (repeatable), e.g. SLURM_CONF=...")


def remote_from_args(args: argparse.Namespace, target: str | None = None) -> Remote:
    env = {}
    for item in args.remote_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise RecipeError("--remote-env", item, "expected NAME=VALUE")
        env[name] = value
    return Remote.parse(
        target or args.remote, identity=args.identity, known_hosts=args.known_hosts,
        accept_new_host_key=args.accept_new_host_key, command=args.remote_command, env=env, ssh_config=args.ssh_config,
    )


def run(args: argparse.Namespace) -> int:
    argv = list(args.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise RecipeError("ARGS", "", "give the subcommand to run remotely, e.g. -- status 1234")
    return remote_from_args(args, args.target).run(argv, out=to_stdout, err=to_stderr)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "remote",
        help="run a subcommand on a login node over SSH",
        description="Run `inferx-slurm ARGS` on a cluster's login node over SSH, streaming its output; e.g. "
        "`inferx-slurm remote alice@login -- status 1234`.",
    )
    p.add_argument("target", metavar="[USER@]HOST[:PORT]", help="login node, or a Host alias from ~/.ssh/config")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="-- ARGS")
    add_remote_args(p, required=True)
    p.set_defaults(func=run)

"""`vllm serve` stand-in: Dynamo's frontend on the engine's port, Dynamo's mock engine behind it."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "serve":
        print("vllm stand-in: only `serve MODEL [flags]` is provided", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="vllm serve (stand-in)")
    p.add_argument("model")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--block-size", type=int, default=64)
    args, ignored = p.parse_known_args(argv[1:])
    name = args.served_model_name or args.model
    print(f"vllm stand-in: serving {name} on :{args.port} (flags left to vLLM's parser: {' '.join(ignored)})", flush=True)

    env = dict(os.environ, DYN_DISCOVERY_BACKEND="file", DYN_FILE_KV=tempfile.mkdtemp(prefix="vllm-standin-"))
    py = sys.executable
    engine = subprocess.Popen([py, "-m", "dynamo.mocker", "--model-path", args.model, "--model-name", name,
                               "--speedup-ratio", "10", "--num-gpu-blocks-override", "4096",
                               "--max-num-seqs", str(args.max_num_seqs), "--block-size", str(args.block_size)], env=env)
    # The frontend serves no system port of its own: the engine's is the one the launcher assigned.
    front_env = {k: v for k, v in env.items() if k != "DYN_SYSTEM_PORT"}
    front = subprocess.Popen([py, "-m", "dynamo.frontend", "--http-port", str(args.port)], env=front_env)
    procs = [engine, front]

    def stop(*_: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Like the real server: when any part dies, the server is gone.
    while all(proc.poll() is None for proc in procs):
        time.sleep(0.2)
    stop()
    for proc in procs:
        proc.wait()
    bad = [proc.returncode for proc in procs if proc.returncode not in (0, -signal.SIGTERM)]
    return bad[0] if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

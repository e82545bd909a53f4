"""Holds a node of a multi-node mock worker for the worker's lifetime.

A real multi-node engine runs headless ranks on its non-leader nodes; the mock engine
simulates the whole worker in the leader process, so the other nodes run this instead. It
exits when signalled, like a headless rank whose job step is cancelled.
"""

import signal
import sys
import time


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("[inferx] holding node for a multi-node mock worker", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()

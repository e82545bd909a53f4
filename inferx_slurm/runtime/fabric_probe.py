"""A small NIXL transfer between nodes, with the workers' own UCX settings, before any engine
loads weights (planning/fabric.py says which nodes, why, and reads what this writes).

    python fabric_probe.py target --node D --port P --initiators N --record FILE
    python fabric_probe.py initiator --node P --target D ADDR PORTS_FILE RECORD [--target ...] --record FILE

A target (decode node) creates a NIXL agent with the UCX backend, registers one slot of DRAM
per initiator and serves, over a plain TCP socket on the port its step took, its agent metadata
and one slot's descriptors to each initiator that connects. An initiator (prefill node) creates
its agent, and for every target in turn: reads the port from the target's ports file, connects,
loads the target's metadata, WRITEs a pattern into its slot with a notification, READs it back
and compares. The target checks the bytes when the notification arrives. Both write a JSON
record (planning/fabric.py's SideRecord) and exit 0 only when everything verified.

Standard library and NIXL only: the job dir carries a copy that the engine's interpreter runs
(inside its container where there is one); it also runs as ``python -m``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import select
import socket
import struct
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

NOTIF = b"inferx-fabric"
# Native lines worth quoting in a diagnosis: UCX's own complaints and NIXL's C++ errors.
_NATIVE_ERROR = re.compile(r"UCX\s+(ERROR|WARN)|Failed to create|backend creation failed|nixl.*error", re.I)


def transport() -> str:
    return os.environ.get("UCX_TLS") or "(unset)"


def pattern(prefill: int, decode: int, size: int) -> bytes:
    unit = f"inferx-fabric {prefill}->{decode} ".encode()
    return (unit * (size // len(unit) + 1))[:size]


def write_record(path: str, record: dict[str, Any]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)  # whole or absent: the driver and the initiators poll for it


def read_json(path: str) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def native_output(lines: list[str]) -> Iterator[None]:
    """Collect what native code (UCX, NIXL's C++) prints to fds 1 and 2 meanwhile, and echo it:
    the exception NIXL raises says only NIXL_ERR_BACKEND, UCX says which transport is missing."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile() as cap:
        os.dup2(cap.fileno(), 1)
        os.dup2(cap.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            cap.seek(0)
            text = cap.read().decode(errors="replace")
            sys.stderr.write(text)
            sys.stderr.flush()
            lines.extend(ln.strip() for ln in text.splitlines() if _NATIVE_ERROR.search(ln))


def error_text(e: BaseException, native: list[str]) -> str:
    # "[ts] [host:pid] ucp_context.c:1508 UCX  WARN  transport ..." and glog's
    # "E1202 04:30:51.300617   433 backend_plugin.h:102] Failed to ..." lose their prefixes.
    quoted = [re.sub(r"^.*?(?=UCX\s+(ERROR|WARN))|^[EWF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ", "", ln) for ln in native]
    text = f"{type(e).__name__}: {e}"
    return text + (" (" + " | ".join(dict.fromkeys(quoted)) + ")" if quoted else "")


def make_agent(name: str) -> tuple[Any, float]:
    from nixl import nixl_agent, nixl_agent_config

    t0 = time.monotonic()
    native: list[str] = []
    try:
        with native_output(native):
            agent = nixl_agent(name, nixl_agent_config(backends=["UCX"]))
    except Exception as e:
        raise ProbeError("agent", error_text(e, native)) from None
    if "UCX" not in agent.backends:
        raise ProbeError("agent", "the UCX backend was not created: " + (" | ".join(native) or "no UCX plugin"))
    return agent, time.monotonic() - t0


class ProbeError(Exception):
    def __init__(self, stage: str, text: str):
        super().__init__(text)
        self.stage = stage


class Buffer:
    """DRAM that NIXL registers: descriptors are (address, length, device id)."""

    def __init__(self, size: int):
        self.raw = ctypes.create_string_buffer(size)
        self.size = size

    def desc(self, offset: int = 0, length: Optional[int] = None) -> tuple[int, int, int]:
        return (ctypes.addressof(self.raw) + offset, self.size - offset if length is None else length, 0)

    def register(self, agent: Any) -> None:
        agent.register_memory([(*self.desc(), "")], "DRAM")

    def read(self, offset: int, length: int) -> bytes:
        return ctypes.string_at(ctypes.addressof(self.raw) + offset, length)


def send_msg(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack("!I", len(data)) + data)


def recv_msg(sock: socket.socket) -> bytes:
    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the peer closed the connection")
            buf += chunk
        return buf

    (n,) = struct.unpack("!I", exact(4))
    return exact(n)


def base_record(side: str, node: int) -> dict[str, Any]:
    return {"side": side, "node": node, "host": socket.gethostname(), "transport": transport(), "ok": False,
            "stage": "agent", "error": "", "pairs": [], "seen": []}


# --- target ----------------------------------------------------------------------------------


def target(a: argparse.Namespace) -> int:
    rec = base_record("target", a.node)
    t0 = time.monotonic()
    try:
        agent, rec["agent_seconds"] = make_agent(f"inferx-fabric-target-{a.node}")
        buf = Buffer(a.size * a.initiators)
        buf.register(agent)
        rec["stage"] = "rendezvous"
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", a.port))
        srv.listen(max(a.initiators, 1))
        print(f"[inferx] fabric target on {rec['host']}:{a.port}, {a.initiators} initiator(s), UCX_TLS={rec['transport']}",
              flush=True)
        rec["stage"] = "transfer"
        _serve(agent, srv, buf, a, rec)
    except ProbeError as e:
        rec["stage"], rec["error"] = e.stage, str(e)
    except Exception as e:  # whatever broke, the record says so: the driver reads nothing else
        rec["error"] = f"{type(e).__name__}: {e}"
    rec["seconds"] = round(time.monotonic() - t0, 3)
    rec["ok"] = not rec["error"] and len(rec["seen"]) == a.initiators
    if rec["ok"]:
        rec["stage"] = "done"
    write_record(a.record, rec)
    return 0 if rec["ok"] else 1


def _serve(agent: Any, srv: socket.socket, buf: Buffer, a: argparse.Namespace, rec: dict[str, Any]) -> None:
    """Hand each initiator a slot, verify the bytes its notification announces, and stay up
    until every initiator has read back and hung up (or the time is up)."""
    deadline = time.monotonic() + a.timeout
    conns: list[socket.socket] = []
    slots: dict[int, int] = {}  # prefill node -> slot
    closed = 0
    bad: list[str] = []
    while closed < a.initiators and time.monotonic() < deadline:
        ready, _, _ = select.select([srv, *conns], [], [], 0.02)
        for s in ready:
            if s is srv:
                conn, _ = srv.accept()
                conn.settimeout(a.timeout)
                prefill = int(json.loads(recv_msg(conn))["node"])
                slot = slots.setdefault(prefill, len(slots))
                if slot >= a.initiators:
                    raise ProbeError("rendezvous", f"more initiators than the {a.initiators} planned (prefill node {prefill})")
                xfer = agent.get_xfer_descs([buf.desc(slot * a.size, a.size)], "DRAM")
                send_msg(conn, json.dumps({"slot": slot, "size": a.size}).encode())
                send_msg(conn, agent.get_agent_metadata())
                send_msg(conn, agent.get_serialized_descs(xfer))
                conns.append(conn)
            else:
                try:
                    s.recv(1)  # an initiator says it is done (or hangs up): the READ is over
                except OSError:
                    pass
                conns.remove(s)
                s.close()
                closed += 1
        for msgs in agent.get_new_notifs().values():
            for m in msgs:
                if not m.startswith(NOTIF):
                    continue
                prefill = int(m.split(b":")[1])
                got = buf.read(slots[prefill] * a.size, a.size)
                if got == pattern(prefill, a.node, a.size):
                    rec["seen"].append(prefill)
                else:
                    bad.append(f"prefill node {prefill}'s bytes arrived altered")
    srv.close()
    missing = a.initiators - len(rec["seen"])
    if bad or missing:
        why = bad + ([f"{missing} initiator(s) wrote nothing within {a.timeout:.0f} s"] if missing else [])
        raise ProbeError("verify" if bad else "transfer", "; ".join(why))


# --- initiator -------------------------------------------------------------------------------


def wait_port(ports_file: str, target_record: str, deadline: float) -> int:
    """The target's port, once its step took one; fails at once when the target already gave up."""
    while True:
        m = None
        try:
            m = re.search(r"^export INFERX_FABRIC_PORT=(\d+)$", Path(ports_file).read_text(), re.M)
        except OSError:
            pass
        if m:
            return int(m.group(1))
        _target_failed(target_record)
        if time.monotonic() > deadline:
            raise ProbeError("rendezvous", f"the target never took its port ({ports_file} not written)")
        time.sleep(0.1)


def _target_failed(target_record: str) -> None:
    rec = read_json(target_record)
    if rec and not rec.get("ok") and rec.get("stage") in ("agent", "rendezvous"):
        raise ProbeError("rendezvous", f"the target failed first ({rec.get('stage')}): {rec.get('error')}")


def connect(addr: str, port: int, target_record: str, deadline: float) -> socket.socket:
    """Connect, retrying while the target starts; stop early when it has failed."""
    last: Optional[OSError] = None
    while time.monotonic() < deadline:
        try:
            return socket.create_connection((addr, port), timeout=max(0.5, deadline - time.monotonic()))
        except OSError as e:
            last = e
        _target_failed(target_record)
        time.sleep(0.1)
    raise ProbeError("rendezvous", f"nothing accepted a connection on {addr}:{port} ({last})")


def wait_xfer(agent: Any, handle: Any, deadline: float) -> str:
    state = agent.transfer(handle)
    while state == "PROC" and time.monotonic() < deadline:
        state = agent.check_xfer_state(handle)
    return "TIMEOUT" if state == "PROC" else state


def pair(agent: Any, node: int, decode: int, addr: str, ports_file: str, target_record: str, size: int,
         timeout: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"prefill_node": node, "decode_node": decode, "prefill_host": socket.gethostname(),
                           "decode_addr": addr, "transport": transport(), "ok": False, "stage": "rendezvous",
                           "seconds": 0.0, "bytes": 0, "error": ""}
    t0 = time.monotonic()
    deadline = t0 + timeout
    native: list[str] = []
    try:
        port = wait_port(ports_file, target_record, deadline)
        with connect(addr, port, target_record, deadline) as sock:
            send_msg(sock, json.dumps({"node": node}).encode())
            hello = json.loads(recv_msg(sock))
            meta, descs = recv_msg(sock), recv_msg(sock)
            rec["stage"] = "metadata"
            with native_output(native):
                peer = agent.add_remote_agent(meta)
                remote = agent.deserialize_descs(descs)
            src, back = Buffer(hello["size"]), Buffer(hello["size"])
            ctypes.memmove(src.raw, pattern(node, decode, src.size), src.size)
            for b in (src, back):
                b.register(agent)
            rec["stage"], which = "transfer", "WRITE"
            with native_output(native):
                write = agent.initialize_xfer("WRITE", agent.get_xfer_descs([src.desc()], "DRAM"), remote, peer,
                                              NOTIF + f":{node}".encode())
                state = wait_xfer(agent, write, deadline)
                if state == "DONE":
                    which = "READ back"
                    read = agent.initialize_xfer("READ", agent.get_xfer_descs([back.desc()], "DRAM"), remote, peer)
                    state = wait_xfer(agent, read, deadline)
            if state != "DONE":
                raise ProbeError("transfer", f"the {which} ended in state {state}"
                                 + (" (" + " | ".join(native) + ")" if native else ""))
            rec["stage"] = "verify"
            if back.read(0, back.size) != pattern(node, decode, back.size):
                raise ProbeError("verify", "the bytes read back differ from those written")
            rec.update(ok=True, stage="done", bytes=2 * src.size)
            send_msg(sock, b"done")
    except ProbeError as e:
        rec["stage"], rec["error"] = e.stage, str(e)
    except Exception as e:
        rec["error"] = error_text(e, native)
    rec["seconds"] = round(time.monotonic() - t0, 4)
    return rec


def initiator(a: argparse.Namespace) -> int:
    rec = base_record("initiator", a.node)
    t0 = time.monotonic()
    try:
        agent, rec["agent_seconds"] = make_agent(f"inferx-fabric-initiator-{a.node}")
        rec["stage"] = "transfer"
        for decode, addr, ports_file, target_record in a.target:
            rec["pairs"].append(pair(agent, a.node, int(decode), addr, ports_file, target_record, a.size, a.timeout))
            p = rec["pairs"][-1]
            print(f"[inferx] fabric {a.node}->{decode} ({addr}) UCX_TLS={p['transport']}: "
                  f"{'ok' if p['ok'] else 'FAILED at ' + p['stage'] + ': ' + p['error']} in {p['seconds']:.3f} s", flush=True)
    except ProbeError as e:
        rec["stage"], rec["error"] = e.stage, str(e)
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"
    rec["seconds"] = round(time.monotonic() - t0, 3)
    rec["ok"] = not rec["error"] and all(p["ok"] for p in rec["pairs"]) and len(rec["pairs"]) == len(a.target)
    if rec["ok"]:
        rec["stage"] = "done"
    write_record(a.record, rec)
    return 0 if rec["ok"] else 1


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="side", required=True)
    for side in ("target", "initiator"):
        s = sub.add_parser(side)
        s.add_argument("--node", type=int, required=True, help="this node's plan index")
        s.add_argument("--record", required=True, help="where this side's JSON record goes")
        s.add_argument("--size", type=int, default=64 * 1024, help="bytes per pair")
        s.add_argument("--timeout", type=float, default=30.0)
    t = sub.choices["target"]
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--initiators", type=int, required=True)
    sub.choices["initiator"].add_argument("--target", nargs=4, action="append", required=True,
                                          metavar=("NODE", "ADDR", "PORTS_FILE", "RECORD"))
    a = p.parse_args(argv)
    return target(a) if a.side == "target" else initiator(a)


if __name__ == "__main__":
    sys.exit(main())

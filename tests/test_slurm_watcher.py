"""The Slurm watcher: squeue/sacct output parsed, and many jobs followed with one query per poll.

The parsing tests read output as this Slurm prints it. The watcher's batching is proven on the
real local cluster: a logging wrapper in front of the real squeue/sacct counts the calls.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time

import pytest

from inferx_slurm.job.slurm import (
    ENDED_STATES,
    FINAL_STATES,
    SlurmState,
    SlurmWatcher,
    default_watcher,
    expand_ids,
    parse_sacct,
    parse_squeue,
)
from inferx_slurm.job.handle import JobHandle


def test_squeue_lines_with_array_tasks():
    out = "1_0 RUNNING\n1_1 RUNNING\n5_[8-10,12%4] PENDING\n2 COMPLETING\n\n"
    assert parse_squeue(out) == {
        "1_0": SlurmState.RUNNING, "1_1": SlurmState.RUNNING, "5_8": SlurmState.PENDING, "5_9": SlurmState.PENDING,
        "5_10": SlurmState.PENDING, "5_12": SlurmState.PENDING, "2": SlurmState.COMPLETING,
    }


def test_sacct_reads_jobid_not_jobidraw_and_cancelled_by():
    # sacct -X -n -P -o JobID,State as Slurm 22.05 prints it; task 1_2's raw id is the array's (1).
    out = "2|COMPLETED\n1_0|COMPLETED\n1_1|FAILED\n1_2|CANCELLED by 1000\n7_[3-4]|PENDING\n8|NEW_STATE_OF_A_LATER_SLURM\n"
    states = parse_sacct(out)
    assert states == {
        "2": SlurmState.COMPLETED, "1_0": SlurmState.COMPLETED, "1_1": SlurmState.FAILED, "1_2": SlurmState.CANCELLED,
        "7_3": SlurmState.PENDING, "7_4": SlurmState.PENDING, "8": SlurmState.UNKNOWN,
    }
    assert "1" not in states


def test_a_requeued_jobs_later_record_wins():
    assert parse_sacct("9|NODE_FAIL\n9|RUNNING\n") == {"9": SlurmState.RUNNING}


def test_id_expansion_leaves_what_it_cannot_read():
    assert expand_ids("12") == ["12"] and expand_ids("12_3") == ["12_3"]
    assert expand_ids("12_[1-3]") == ["12_1", "12_2", "12_3"]
    assert expand_ids("12_[a-b]") == ["12_[a-b]"]


def test_state_sets():
    assert SlurmState.COMPLETING in ENDED_STATES and SlurmState.COMPLETING not in FINAL_STATES
    # A node failure or a preemption can put the job back in the queue.
    assert SlurmState.NODE_FAIL in ENDED_STATES and SlurmState.NODE_FAIL not in FINAL_STATES
    assert SlurmState.RUNNING not in ENDED_STATES and SlurmState.PENDING not in ENDED_STATES
    # status.json and the CLI carry plain strings: they test against the same sets.
    assert "COMPLETED" in ENDED_STATES and "RUNNING" not in ENDED_STATES
    assert SlurmState.parse("CANCELLED by 0") is SlurmState.CANCELLED and SlurmState.parse("") is SlurmState.UNKNOWN


class FakeSlurm:
    """squeue/sacct semantics over a dict: the queue lists active jobs, accounting all of them."""

    def __init__(self):
        self.queue: dict[str, str] = {}
        self.acct: dict[str, str] = {}
        self.queue_down = False

    def __call__(self, argv, env):
        ids = argv[argv.index("-j") + 1].split(",")
        if argv[0] == "squeue":
            if self.queue_down:
                return subprocess.CompletedProcess(argv, 1, "", "slurm_load_jobs error: Socket timed out on send/recv operation")
            lines = [f"{j} {self.queue[j]}" for j in ids if j in self.queue]
            if not lines:
                return subprocess.CompletedProcess(argv, 1, "", "slurm_load_jobs error: Invalid job id specified")
            return subprocess.CompletedProcess(argv, 0, "\n".join(lines) + "\n", "")
        return subprocess.CompletedProcess(argv, 0, "".join(f"{j}|{self.acct[j]}\n" for j in ids if j in self.acct), "")


def test_watcher_reads_queue_then_accounting_and_unknown_ids():
    fake = FakeSlurm()
    fake.queue = {"10": "RUNNING", "11_0": "PENDING"}
    fake.acct = {"12": "FAILED"}
    w = SlurmWatcher(run=fake, max_age_s=0)
    w.register("10", "11_0", "12", "404")
    assert {j: w.state(j) for j in ("10", "11_0", "12", "404")} == {
        "10": SlurmState.RUNNING, "11_0": SlurmState.PENDING, "12": SlurmState.FAILED, "404": SlurmState.UNKNOWN}


def test_watcher_keeps_the_last_state_when_the_queue_does_not_answer():
    fake = FakeSlurm()
    fake.queue = {"10": "RUNNING"}
    w = SlurmWatcher(run=fake, max_age_s=0)
    assert w.state("10") is SlurmState.RUNNING
    fake.queue_down = True
    assert w.state("10") is SlurmState.RUNNING
    fake.queue_down, fake.queue, fake.acct = False, {}, {"10": "COMPLETED"}
    assert w.state("10") is SlurmState.COMPLETED


def test_watcher_caches_for_max_age_and_final_states_for_good():
    fake = FakeSlurm()
    fake.queue = {"20": "RUNNING"}
    w = SlurmWatcher(run=fake, max_age_s=60)
    assert w.state("20") is SlurmState.RUNNING
    fake.queue = {}
    fake.acct = {"20": "COMPLETED"}
    assert w.state("20") is SlurmState.RUNNING  # within max_age: the poll's answer stands
    w.max_age_s = 0
    assert w.state("20") is SlurmState.COMPLETED
    fake.acct = {"20": "RUNNING"}  # a final state is never asked for again
    assert w.state("20") is SlurmState.COMPLETED


def test_an_id_the_last_poll_did_not_cover_is_polled_at_once():
    fake = FakeSlurm()
    fake.queue = {"30": "RUNNING"}
    w = SlurmWatcher(run=fake, max_age_s=60)
    assert w.state("30") is SlurmState.RUNNING
    fake.queue["31"] = "PENDING"
    assert w.state("31") is SlurmState.PENDING


def test_handles_of_one_environment_share_a_watcher(tmp_path):
    env = {"SLURM_CONF": str(tmp_path / "a.conf")}
    a, b = JobHandle("1", tmp_path, env=env), JobHandle("2", tmp_path, env=dict(env))
    other = JobHandle("3", tmp_path, env={"SLURM_CONF": str(tmp_path / "b.conf")})
    assert a.watcher is b.watcher is default_watcher(env)
    assert other.watcher is not a.watcher and other.watcher.env == {"SLURM_CONF": str(tmp_path / "b.conf")}


def _logging_wrappers(bin_dir, log):
    """squeue/sacct in bin_dir that record each call and exec the real client."""
    bin_dir.mkdir()
    for name in ("squeue", "sacct"):
        real = shutil.which(name)
        assert real, f"{name} not on PATH"
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexec "{real}" "$@"\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.cluster
def test_one_squeue_and_at_most_one_sacct_per_poll_for_many_jobs(cluster, tmp_path):
    log = tmp_path / "calls.log"
    log.touch()
    _logging_wrappers(tmp_path / "bin", log)
    env = {**cluster.env, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}

    def sbatch(*args):
        out = subprocess.run(["sbatch", "--parsable", "-p", "local", "-o", "/dev/null", *args],
                             env={**os.environ, **cluster.env}, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().split(";")[0]

    ids = [sbatch("--wrap", f"sleep {s}") for s in (1, 3, 5)]
    array = sbatch("--array=0-1", "--wrap", "sleep 2")
    ids += [f"{array}_0", f"{array}_1"]
    watcher = SlurmWatcher(env, max_age_s=0.5)
    handles = [JobHandle(j, tmp_path, env=env, watcher=watcher) for j in ids]

    rounds = []
    seen: dict[str, list[SlurmState]] = {j: [] for j in ids}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        before = log.read_text().splitlines()
        states = {h.job_id: h.slurm_state() for h in handles}
        calls = log.read_text().splitlines()[len(before):]
        rounds.append(calls)
        for j, s in states.items():
            seen[j].append(s)
        if all(s in ENDED_STATES for s in states.values()):
            break
        time.sleep(0.7)  # longer than max_age: every round polls
    assert all(seen[j][-1] is SlurmState.COMPLETED for j in ids), seen
    assert len(rounds) >= 3, rounds
    for calls in rounds:
        # every round has an unfinished job, so exactly one squeue for all five, at most one sacct
        assert sum(c.startswith("squeue ") for c in calls) == 1, calls
        assert sum(c.startswith("sacct ") for c in calls) <= 1, calls
    squeues = [c for calls in rounds for c in calls if c.startswith("squeue ")]
    assert all(",".join(ids) in c for c in squeues[:1]), squeues[:1]
    # finished jobs were asked of sacct together, while others were still in the queue
    saccts = [c for calls in rounds for c in calls if c.startswith("sacct ")]
    assert saccts and any(len(c.split(" -j ")[1].split()[0].split(",")) >= 2 for c in saccts), saccts
    # the short job ended while the long one was still running or pending
    first_done = next(i for i, s in enumerate(seen[ids[0]]) if s in ENDED_STATES)
    assert seen[ids[2]][first_done] not in ENDED_STATES, seen

"""The results dir contract: every file and folder name of a job dir and of a sweep root.

Writers (prepare, the driver, CI) and readers (the CLI, sweeps, results, archives) name
these files only through this module. It depends on pathlib alone, so any layer may import it.

A job dir, as `launch` prepares it and the driver fills it::

    recipe.yaml recipe.json plan.json rendered.json   the deployment, as built before submit
    launch.json                                        each step's srun command (job/launch.py)
    provenance.json image.json job.json                what produced it, its image, its Slurm job
    status.json summary.json diagnosis.txt             the run's phase and timeline, results, why it failed
    ci-report.json                                     what `ci` reported
    nodes.env                                          plan node i -> host and address (the driver writes it)
    scripts/ logs/ submitit/ provenance/               step scripts, step logs, submitit's files, worker reports
    discovery/ infra/ cache/                           file discovery, etcd/NATS state, per-node compile caches
    ports/ node-cache/                                 the ports each step took at start, each node's weight copy
    fabric/                                            the NIXL fabric preflight's record of each node's side
    eval/                                              each eval task's results and samples (lm-eval's layout)
    bench/SCENARIO/cCONCURRENCY/                       one benchmark point: client.log and aiperf's export
"""

from __future__ import annotations

from pathlib import Path, PurePath


def _path(name: str) -> property:
    return property(lambda self: self.root / name, doc=f"the job dir's {name}")


class JobPaths:
    """The files of one job dir; class attributes are the names, properties the paths."""

    RECIPE_YAML = "recipe.yaml"
    RECIPE_JSON = "recipe.json"
    PLAN = "plan.json"
    RENDERED = "rendered.json"
    LAUNCH = "launch.json"
    STATUS = "status.json"
    SUMMARY = "summary.json"
    DIAGNOSIS = "diagnosis.txt"
    JOB = "job.json"
    IMAGE = "image.json"
    PROVENANCE = "provenance.json"
    CI_REPORT = "ci-report.json"
    NODES_ENV = "nodes.env"
    LOGS = "logs"
    SUBMITIT = "submitit"
    SCRIPTS = "scripts"
    WORKER_REPORTS = "provenance"
    DISCOVERY = "discovery"
    INFRA = "infra"
    CACHE = "cache"
    PORTS = "ports"
    NODE_CACHE = "node-cache"
    FABRIC = "fabric"
    EVAL = "eval"
    BENCH = "bench"
    CLIENT_LOG = "client.log"

    def __init__(self, root: str | PurePath):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"JobPaths({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobPaths) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    recipe_yaml = _path(RECIPE_YAML)
    recipe_json = _path(RECIPE_JSON)
    plan = _path(PLAN)
    rendered = _path(RENDERED)
    launch = _path(LAUNCH)
    status = _path(STATUS)
    summary = _path(SUMMARY)
    diagnosis = _path(DIAGNOSIS)
    job = _path(JOB)
    image = _path(IMAGE)
    provenance = _path(PROVENANCE)
    ci_report = _path(CI_REPORT)
    nodes_env = _path(NODES_ENV)
    logs = _path(LOGS)
    submitit = _path(SUBMITIT)
    scripts = _path(SCRIPTS)
    worker_reports = _path(WORKER_REPORTS)
    discovery = _path(DISCOVERY)
    infra = _path(INFRA)
    cache = _path(CACHE)
    ports = _path(PORTS)
    node_cache = _path(NODE_CACHE)
    fabric = _path(FABRIC)
    eval = _path(EVAL)

    def file(self, rel: str) -> Path:
        """A path given relative to the job dir (a rendered file, a step's script)."""
        return self.root / rel

    def log(self, step: str) -> Path:
        """What a step's task writes (srun --output)."""
        return self.logs / f"{step}.log"

    def worker_report(self, worker: str) -> Path:
        """A worker's identity report, without its node rank (the script appends .nRANK.json)."""
        return self.worker_reports / worker

    def point(self, scenario: str, concurrency: int) -> Path:
        return self.root / self.point_rel(scenario, concurrency)

    @classmethod
    def script_rel(cls, name: str) -> str:
        """A script's path relative to the job dir, as rendered files and steps name it."""
        return f"{cls.SCRIPTS}/{name}"

    @classmethod
    def point_rel(cls, scenario: str, concurrency: int) -> str:
        """One benchmark point's folder relative to the job dir."""
        return f"{cls.BENCH}/{scenario}/c{concurrency}"


def srun_err(log: Path) -> Path:
    """Where srun's own complaints about a step go, beside the step's log."""
    return log.with_suffix(".srun.err")


class SweepPaths:
    """A sweep's results root: its manifest, its pack manifests, one job dir per deployment."""

    MANIFEST = "sweep.json"

    def __init__(self, root: str | PurePath):
        self.root = Path(root)

    @property
    def manifest(self) -> Path:
        return self.root / self.MANIFEST

    def job(self, name: str) -> JobPaths:
        return JobPaths(self.root / name)

    def pack_manifest(self, index: int) -> Path:
        """A new pack manifest's path: a resumed sweep's later packs get numbered siblings."""
        return unused_file(self.root / f"pack-{index}.json")

    @staticmethod
    def array_submitit(job_dir: Path, job_name: str) -> Path:
        """submitit's folder for a job array, beside its first deployment's job dir."""
        return job_dir.parent / f"{JobPaths.SUBMITIT}-{job_name}-{job_dir.name}"

    def pack_submitit(self, manifest: Path) -> Path:
        return self.root / f"{JobPaths.SUBMITIT}-{manifest.stem}"

    def job_dirs(self) -> list[Path]:
        """Every deployment's job dir under the root, by name."""
        return sorted(p.parent for p in self.root.glob(f"*/{JobPaths.RECIPE_JSON}"))


def unused_dir(path: Path, taken: frozenset[Path] | set[Path] = frozenset()) -> Path:
    """`path`, or its first numbered sibling (`name.N`) that is missing or empty and not in
    `taken`: results are never overwritten. Nothing is created; the first write does that."""
    candidate, n = path, 1
    while candidate in taken or (candidate.exists() and any(candidate.iterdir())):
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def unused_file(path: Path) -> Path:
    """`path`, or the first numbered sibling (`stem.N.suffix`) that does not exist."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
    return candidate

"""The engines' own word on their KV cache, read from their Prometheus metrics (and logs): the
KV-transfer counters on the decode workers, taken before and after each benchmark point, and
each worker's KV capacity, set beside the memory planner's prediction. Thin: it reads, and
`results/validity.py` and `results/kv_capacity.py` judge."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable, Optional

from inferx_slurm import engines
from inferx_slurm.engines.kv_metrics import KVCapacityMetric, KVTransferMetrics, Series
from inferx_slurm.planning.placement import Plan, WorkerPlacement
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.results.kv_capacity import WorkerCapacity, compare
from inferx_slurm.results.validity import KVCounters, PointValidity, judge
from inferx_slurm.runtime import metrics

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric `name` in a Prometheus text."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        head, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        labels = dict(_LABEL.findall(head[len(name):])) if "{" in head else {}
        out.append((labels, v))
    return out


def series_total(text: str, s: Series) -> Optional[float]:
    """The series summed over its samples (engines, DP ranks); None when absent."""
    got = [v for labels, v in samples(text, s.name) if s.label is None or labels.get(s.label[0]) == s.label[1]]
    return sum(got) if got else None


def counters(text: str, spec: KVTransferMetrics) -> KVCounters:
    return KVCounters(**{field: series_total(text, getattr(spec, field)) for field in KVCounters.model_fields})


def kv_counters(urls: Iterable[str], spec: Optional[KVTransferMetrics], scrape: Callable[[str], Optional[str]] = metrics.scrape
                ) -> Optional[KVCounters]:
    """The decode engines' KV counters summed over `urls`; None when the engine names none or
    no URL answered (not measured)."""
    if spec is None:
        return None
    total: Optional[dict[str, Optional[float]]] = None
    for url in urls:
        text = scrape(url)
        if text is None:
            continue
        one = counters(text, spec).model_dump()
        total = one if total is None else {k: _add(total[k], v) for k, v in one.items()}
    return None if total is None else KVCounters(**total)


def _add(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return b if a is None else a if b is None else a + b


def capacity_from_metrics(text: str, spec: KVCapacityMetric) -> Optional[int]:
    """Tokens of the smallest KV cache among the engines (DP ranks) of one metrics text."""
    found = []
    for labels, v in samples(text, spec.metric):
        if spec.tokens_label is None:
            found.append(int(v))
        elif labels.get(spec.tokens_label, "").isdigit():
            found.append(int(labels[spec.tokens_label]))
        elif spec.blocks_labels and all(labels.get(k, "").isdigit() for k in spec.blocks_labels):
            blocks, size = (int(labels[k]) for k in spec.blocks_labels)
            found.append(blocks * size)
    return min(found) if found else None


def capacity_from_log(log: Path, spec: KVCapacityMetric) -> Optional[int]:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    found = [int(m.group(1).replace(",", "")) for m in re.finditer(spec.log_pattern, text)]
    return min(found) if found else None


def worker_capacity(worker: str, role: str, url: Optional[str], log: Path, spec: Optional[KVCapacityMetric],
                    planned: Optional[int], scrape: Callable[[str], Optional[str]] = metrics.scrape) -> WorkerCapacity:
    """One worker's KV capacity: from its metrics where it serves them, else its start-up log."""
    tokens, source = None, None
    if spec is not None:
        text = scrape(url) if url else None
        tokens = capacity_from_metrics(text, spec) if text else None
        source = "metrics" if tokens is not None else None
        if tokens is None:
            tokens = capacity_from_log(log, spec)
            source = "log" if tokens is not None else None
    return compare(worker, role, tokens, source, planned)


def capacities(recipe: Recipe, plan: Plan, url_of: Callable[[WorkerPlacement], Optional[str]], logs: Path
               ) -> tuple[list[WorkerCapacity], Optional[str]]:
    """Every worker's capacity beside the plan's; and why there is no plan, when there is none."""
    from inferx_slurm.planning.feasibility import memory_plan

    note = None
    try:
        mp = memory_plan(recipe)
    except Exception as e:  # the plan is context here: a checkpoint it cannot read must not fail the run
        mp, note = None, f"the memory plan failed: {e!r}"
    if mp is None and note is None:
        note = "no memory plan: GPU memory (slurm.gpu_memory_gb or the profile's) or the model's size is unknown"
    planned = {r.role: r.tokens_per_rank for r in mp.roles} if mp else {}
    spec = engines.kv_capacity_metric(recipe)
    return [worker_capacity(w.name, w.role, url_of(w), logs / f"{w.name}.n0.log", spec, planned.get(w.role))
            for w in plan.workers], note


class PointProbe:
    """The decode engines' KV counters around each benchmark point, and the point's verdict."""

    def __init__(self, recipe: Recipe, decode_urls: Callable[[], list[str]],
                 scrape: Callable[[str], Optional[str]] = metrics.scrape):
        self.recipe, self.urls, self.scrape = recipe, decode_urls, scrape
        self.spec = engines.kv_transfer_metrics(recipe)
        self.before: Optional[KVCounters] = None

    def _counters(self) -> Optional[KVCounters]:
        return None if self.recipe.topology.aggregated else kv_counters(self.urls(), self.spec, self.scrape)

    def start(self) -> None:
        self.before = self._counters()

    def judge(self, row: dict, *, osl: int, ignore_eos: bool) -> PointValidity:
        after = self._counters()
        return judge(row, osl=osl, ignore_eos=ignore_eos, disaggregated=not self.recipe.topology.aggregated,
                     kv_known=self.spec is not None, kv=after.minus(self.before) if after and self.before else None,
                     limits=self.recipe.benchmark.validity)

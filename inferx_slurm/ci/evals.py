"""`ci` and the eval: the accuracy gate's verdict in the report, and the eval's files in the
workspace as InferenceX lays them out (results*.json, samples*.jsonl and meta_env.json, flat)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from inferx_slurm.ci import inferencex as ix
from inferx_slurm.ci import report as cr
from inferx_slurm.evals.results import failure_line, failures
from inferx_slurm.fsutil import atomic_write_json
from inferx_slurm.recipe.schema import Recipe
from inferx_slurm.recipe.topology import Topology


def meta_env(block: dict[str, Any], recipe: Recipe, labels: ix.ResultLabels, total_nodes: int) -> dict[str, Any]:
    """meta_env.json: the labels and layout InferenceX's eval collector reads beside the results."""
    topo = Topology.parse(str(recipe.topology))
    scen = recipe.benchmark.scenarios[0]
    layout = ix.agg_result({"isl": scen.isl, "osl": scen.osl, "num_prefill_gpu": 0, "num_decode_gpu": 0},
                           {"max_concurrency": block["concurrency"]}, topo=topo, total_nodes=total_nodes, labels=labels)
    keep = ("is_multinode", "framework", "precision", "spec_decoding", "recipe_fingerprint", "model", "infmax_model_prefix", "hw")
    doc = {k: layout[k] for k in keep}
    doc.update({k: v for k, v in layout.items() if k.split("_")[0] in ("tp", "pp", "dcp", "pcp", "ep", "dp", "prefill", "decode")
                and not k.endswith("_gpu")})
    doc.update(conc=block["concurrency"], eval_concs=[block["concurrency"]], completed_eval_concs=[block["concurrency"]],
               failed_eval_concs=[], isl=str(scen.isl), osl=str(scen.osl))
    return doc


def gather(rep: cr.CIReport, block: Optional[dict[str, Any]], recipe: Recipe, labels: ix.ResultLabels, total_nodes: int,
           out_dir: Path) -> list[str]:
    """Put the eval's verdict (the summary's `eval` block) in the report (exit 8 when a task is below its threshold) and its
    files in out_dir; the files written."""
    if not block:
        return []
    rep.eval = block
    bad = failures(block)
    if bad and rep.exit_code == cr.EXIT_OK:
        rep.failed(cr.Category.accuracy, "\n".join(failure_line(t) for t in bad))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for f in map(Path, block.get("files", [])):
        if f.is_file():
            shutil.copyfile(f, out_dir / f.name)
            written.append(str(out_dir / f.name))
    written.append(str(atomic_write_json(out_dir / "meta_env.json", meta_env(block, recipe, labels, total_nodes))))
    return written

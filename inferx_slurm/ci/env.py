"""The environment a CI matrix passes, mapped onto recipe overrides. Pure: no I/O.

InferenceX's multi-node workflow template exports one matrix point as environment variables
(model, image, ISL/OSL, concurrency list, per-role TP/EP/DP-attention and worker counts,
framework, precision, result file name). `inferx-slurm ci` reads the same names, so a runner
script is one line. The mapping:

| variable | recipe / output |
|---|---|
| `MODEL_PATH` (else `MODEL`) | `model.path` |
| `IMAGE` | `container.image` (needs `container.runtime: pyxis`) |
| `ISL`, `OSL` | `benchmark.scenarios: [{isl, osl}]` (both or neither) |
| `CONC_LIST` (space separated), `CONC` | `benchmark.concurrency` (`CONC` must be in `CONC_LIST` when both are set) |
| `FRAMEWORK` | `engine.backend`: dynamo-vllm, dynamo-sglang, dynamo-trt, mocker (or vllm, sglang, trtllm); the result files name the framework that ran as InferenceX does (`dynamo-vllm`, `dynamo-trt`, `vllm`, ...; `dynamo-mocker` for Dynamo's mock engine) |
| `PREFILL_NUM_WORKERS`, `PREFILL_TP`, `PREFILL_EP`, `PREFILL_DP_ATTN`, same with `DECODE_` | `topology` (`xPyD SPEC->SPEC`; DP attention -> DEPn, EP = TP -> TEPn, EP 1 -> TPn) |
| `DISAGG` | `true` or `false`: labels the results and must agree with the recipe's `topology` (`xPyD ...` is disaggregated, `NA SPEC` aggregated); `false` contradicts `PREFILL_*`/`DECODE_*` |
| `SPEC_DECODING` | `none`, `mtp`, `eagle3`, `eagle` or `ngram`: labels the results and must match the recipe's `speculative.method` (`none`: no `speculative:` section) |
| `SLURM_PARTITION`, `SLURM_ACCOUNT` | `slurm.partition`, `slurm.account` |
| `RUNNER_NAME` | `slurm.job_name` (the workflow's pre-run cleanup cancels jobs by this name) |
| `RESULT_FILENAME` | prefix of the result files |
| `GITHUB_WORKSPACE` | where result files and the archive go (default: the current dir) |
| `RUNNER_TYPE`, `PRECISION`, `MODEL_PREFIX`, `EXP_NAME`, `MODEL`, `RECIPE_FINGERPRINT` | copied into every result file (`hw`, `precision`, `infmax_model_prefix`, `exp_name`, `model`, `recipe_fingerprint`); unset, each comes from the recipe (`hw` from its profile, `recipe_fingerprint` a hash of what it deploys) |

An empty variable counts as unset (GitHub renders a missing matrix key as ""). A value that
cannot be used, or two that contradict each other, is a RecipeError naming the variable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from inferx_slurm.errors import RecipeError

FRAMEWORKS = {
    "dynamo-vllm": "vllm", "vllm": "vllm",
    "dynamo-sglang": "sglang", "sglang": "sglang",
    "dynamo-trt": "trtllm", "dynamo-trtllm": "trtllm", "trtllm": "trtllm", "trt": "trtllm",
    "mocker": "mocker", "dynamo-mocker": "mocker",
}
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
ROLE_VARS = ("NUM_WORKERS", "TP", "EP", "DP_ATTN")
# Every variable `from_environ` reads.
VARIABLES = frozenset({
    "MODEL", "MODEL_PATH", "IMAGE", "ISL", "OSL", "CONC_LIST", "CONC", "FRAMEWORK", "DISAGG", "SPEC_DECODING",
    "SLURM_PARTITION", "SLURM_ACCOUNT", "RUNNER_NAME", "RESULT_FILENAME", "GITHUB_WORKSPACE", "RUNNER_TYPE",
    "PRECISION", "MODEL_PREFIX", "EXP_NAME", "RECIPE_FINGERPRINT", "RUN_EVAL", "EVAL_ONLY", "EVAL_LIMIT", "EVAL_CONC", *(f"{r}_{v}" for r in ("PREFILL", "DECODE") for v in ROLE_VARS),
})


@dataclass
class CIEnv:
    """What the environment asks for: recipe overrides plus the labels result files carry."""

    sets: dict[str, Any] = field(default_factory=dict)
    used: dict[str, str] = field(default_factory=dict)  # variable -> value, for the report
    result_filename: Optional[str] = None
    out_dir: Optional[str] = None
    labels: dict[str, Any] = field(default_factory=dict)
    disagg: Optional[bool] = None  # DISAGG, checked against the recipe's topology
    spec_decoding: Optional[str] = None  # SPEC_DECODING, checked against the recipe's speculative method


def _get(env: Mapping[str, str], name: str) -> Optional[str]:
    v = env.get(name)
    return v.strip() if v is not None and v.strip() != "" else None


def _int(env: Mapping[str, str], name: str, *, minimum: int = 1) -> Optional[int]:
    v = _get(env, name)
    if v is None:
        return None
    try:
        n = int(v)
    except ValueError:
        raise RecipeError(name, v, f"expected a whole number >= {minimum}") from None
    if n < minimum:
        raise RecipeError(name, v, f"expected a whole number >= {minimum}")
    return n


def _bool(env: Mapping[str, str], name: str) -> Optional[bool]:
    v = _get(env, name)
    if v is None:
        return None
    if v.lower() in _TRUE:
        return True
    if v.lower() in _FALSE:
        return False
    raise RecipeError(name, v, "expected true or false")


def role_spec(env: Mapping[str, str], role: str) -> Optional[tuple[int, str]]:
    """(workers, SPEC) of one role from ROLE_NUM_WORKERS / _TP / _EP / _DP_ATTN, or None if unset."""
    p = role.upper()
    present = [f"{p}_{v}" for v in ROLE_VARS if _get(env, f"{p}_{v}") is not None]
    if not present:
        return None
    for need in ("NUM_WORKERS", "TP"):
        if _get(env, f"{p}_{need}") is None:
            raise RecipeError(f"{p}_{need}", None, f"is needed with {', '.join(present)}: set it (e.g. {p}_{need}=1)")
    workers = _int(env, f"{p}_NUM_WORKERS")
    tp = _int(env, f"{p}_TP")
    ep = _int(env, f"{p}_EP") or 1
    dpa = _bool(env, f"{p}_DP_ATTN") or False
    assert workers is not None and tp is not None
    if dpa:
        if ep not in (1, tp):
            raise RecipeError(f"{p}_EP", str(ep), f"with {p}_DP_ATTN=true the expert-parallel size must equal {p}_TP ({tp}): DEP{tp}")
        return workers, f"DEP{tp}"
    if ep == 1:
        return workers, f"TP{tp}"
    if ep == tp:
        return workers, f"TEP{tp}"
    raise RecipeError(f"{p}_EP", str(ep), f"expected 1 (TP{tp}) or {p}_TP={tp} (TEP{tp}); other EP sizes have no topology here")


# InferenceX's spec-decoding labels; the recipe's speculative.method must agree.
SPEC_DECODING = ("none", "mtp", "eagle3", "eagle", "ngram")


def check_against_recipe(env: CIEnv, recipe: Any) -> None:
    """DISAGG and SPEC_DECODING label the results; a label the recipe does not serve is refused."""
    if env.disagg is not None and env.disagg == recipe.topology.aggregated:
        raise RecipeError("DISAGG", str(env.disagg).lower(), f"contradicts the recipe's topology {recipe.topology}: "
                          f"set DISAGG={'false' if recipe.topology.aggregated else 'true'}, or unset")
    if env.spec_decoding is not None:
        have = recipe.speculative.method.value if recipe.speculative else "none"
        if env.spec_decoding != have:
            raise RecipeError("SPEC_DECODING", env.spec_decoding, f"the recipe serves speculative decoding {have!r} "
                              "(its speculative: section): set SPEC_DECODING to that, or unset")


def from_environ(env: Mapping[str, str]) -> CIEnv:
    out = CIEnv()

    def use(name: str) -> Optional[str]:
        v = _get(env, name)
        if v is not None:
            out.used[name] = v
        return v

    model = use("MODEL_PATH") or use("MODEL")
    if model:
        out.sets["model.path"] = model
    if (image := use("IMAGE")) is not None:
        out.sets["container.image"] = image

    isl, osl = _int(env, "ISL"), _int(env, "OSL")
    if (isl is None) != (osl is None):
        missing = "OSL" if osl is None else "ISL"
        raise RecipeError(missing, None, f"is needed with {'ISL' if missing == 'OSL' else 'OSL'}: set both or neither")
    if isl is not None:
        use("ISL"), use("OSL")
        out.sets["benchmark.scenarios"] = [{"isl": isl, "osl": osl}]

    conc_list = None
    if (raw := use("CONC_LIST")) is not None:
        try:
            conc_list = [int(w) for w in raw.replace(",", " ").split()]
        except ValueError:
            raise RecipeError("CONC_LIST", raw, "expected whole numbers separated by spaces, e.g. '4 8 16'") from None
        if not conc_list or min(conc_list) < 1:
            raise RecipeError("CONC_LIST", raw, "expected whole numbers >= 1 separated by spaces, e.g. '4 8 16'")
    conc = _int(env, "CONC")
    if conc is not None:
        use("CONC")
        if conc_list is not None and conc not in conc_list:
            raise RecipeError("CONC", str(conc), f"contradicts CONC_LIST={' '.join(map(str, conc_list))}: CONC must be one of them, or unset")
    if conc_list or conc:
        out.sets["benchmark.concurrency"] = conc_list or [conc]

    if (fw := use("FRAMEWORK")) is not None:
        if fw.lower() not in FRAMEWORKS:
            raise RecipeError("FRAMEWORK", fw, f"expected one of {', '.join(sorted(FRAMEWORKS))}")
        out.sets["engine.backend"] = FRAMEWORKS[fw.lower()]

    prefill, decode = role_spec(env, "prefill"), role_spec(env, "decode")
    if (prefill is None) != (decode is None):
        given, other = ("PREFILL", "DECODE") if prefill else ("DECODE", "PREFILL")
        raise RecipeError(f"{other}_NUM_WORKERS", None, f"{given}_* is set but {other}_* is not: give both roles (workers and TP)")
    if prefill and decode:
        for role in ("PREFILL", "DECODE"):
            for v in ROLE_VARS:
                use(f"{role}_{v}")
        out.sets["topology"] = f"{prefill[0]}P{decode[0]}D {prefill[1]}->{decode[1]}"

    if (disagg := _bool(env, "DISAGG")) is not None:
        use("DISAGG")
        if not disagg and prefill:
            raise RecipeError("DISAGG", env.get("DISAGG"), "false contradicts PREFILL_*/DECODE_*: unset those for an "
                              "aggregated recipe, or set DISAGG=true")
        out.disagg = disagg
    if (spec := use("SPEC_DECODING")) is not None:
        if spec.lower() not in SPEC_DECODING:
            raise RecipeError("SPEC_DECODING", spec, f"expected one of {', '.join(SPEC_DECODING)}")
        out.spec_decoding = spec.lower()

    if (part := use("SLURM_PARTITION")) is not None:
        out.sets["slurm.partition"] = part
    if (acct := use("SLURM_ACCOUNT")) is not None:
        out.sets["slurm.account"] = acct
    if (runner := use("RUNNER_NAME")) is not None:
        out.sets["slurm.job_name"] = runner

    # InferenceX's eval switches: the recipe's eval: section says what to run.
    for name, run in (("RUN_EVAL", "after"), ("EVAL_ONLY", "only")):
        if _bool(env, name):
            use(name)
            out.sets["eval.run"] = run
    for name, path in (("EVAL_LIMIT", "eval.limit"), ("EVAL_CONC", "eval.concurrency")):
        if (n := _int(env, name)) is not None:
            use(name)
            out.sets[path] = n

    out.result_filename = use("RESULT_FILENAME")
    out.out_dir = _get(env, "GITHUB_WORKSPACE")
    out.labels = {
        "hw": _get(env, "RUNNER_TYPE"),
        "precision": _get(env, "PRECISION"),
        "infmax_model_prefix": _get(env, "MODEL_PREFIX"),
        "exp_name": _get(env, "EXP_NAME"),
        "model": _get(env, "MODEL"),
        "recipe_fingerprint": _get(env, "RECIPE_FINGERPRINT"),
    }
    return out


def check_image_runtime(sets: dict[str, Any], runtime: str) -> None:
    """IMAGE with a recipe that runs bare processes would be silently ignored: refuse it."""
    if "container.image" in sets and sets.get("container.runtime", runtime) != "pyxis":
        raise RecipeError("IMAGE", sets["container.image"],
                          "the recipe runs bare processes (container.runtime: none): add --set container.runtime=pyxis, or unset IMAGE")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """--set dotted.path=value; the value is read as YAML, so numbers, booleans and lists work."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise RecipeError("--set", item, "expected dotted.path=value, e.g. engine.args.speedup-ratio=2")
        try:
            out[path.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[path.strip()] = raw
    return out

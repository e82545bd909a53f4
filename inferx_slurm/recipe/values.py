"""Recipe values: ${VAR} expansion, dotted-path setting, environment strings. Shared by
the recipe and the site settings, which both read user mappings."""

from __future__ import annotations

import os
import re
from typing import Any, Optional

from inferx_slurm.errors import RecipeError
from inferx_slurm.recipe.topology import ROLES

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(data: Any, path: str = "", environ: Optional[dict[str, str]] = None) -> Any:
    """Expand ${NAME} and ${NAME:-default} from the submitting environment in every string.

    Recipes name site paths (model dirs, caches) that differ per cluster; CI launchers pass
    them as environment variables. Expansion happens once, at load, so the saved recipe
    records the values that ran.
    """
    env = os.environ if environ is None else environ
    if isinstance(data, dict):
        return {k: expand_vars(v, f"{path}.{k}" if path else str(k), env) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_vars(v, f"{path}.{i}", env) for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise RecipeError(path, data, f"${{{name}}} is not set: export {name} or write ${{{name}:-default}}")

        return _VAR_RE.sub(sub, data)
    return data


def env_str(v: Any) -> Any:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (int, float)):
        return str(v)
    return v


def normalize_role_env(data: dict[str, Any]) -> dict[str, Any]:
    engine = data.get("engine")
    if isinstance(engine, dict):
        engine = dict(engine)
        for key in ("env", *ROLES):
            part = engine.get(key)
            if key == "env" and isinstance(part, dict):
                engine["env"] = {k: env_str(v) for k, v in part.items()}
            elif isinstance(part, dict) and isinstance(part.get("env"), dict):
                engine[key] = {**part, "env": {k: env_str(v) for k, v in part["env"].items()}}
        data = {**data, "engine": engine}
    return data


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    # Engine flags contain dots never, but do contain dashes; split on dots only.
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise RecipeError(dotted, value, f"'{part}' is not a section that can hold '{parts[-1]}'")
        node = nxt
    node[parts[-1]] = value

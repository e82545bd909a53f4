"""Site settings: what every recipe on one cluster shares, in one file recipes do not repeat.

A site file holds a cluster's partition, account, image and stage dirs, the driver's interpreter,
the discovery binaries, extra sbatch flags and the environment its fabric needs, so one recipe
runs unchanged on two clusters. Precedence per field: the recipe, then the site, then the schema's
default. Mappings (``slurm.sbatch_args``, ``env``) merge key by key with the recipe's keys winning;
lists (``container.mounts``, ``slurm.srun_args``, ``setup_scripts``) are the site's followed by the
recipe's.

Which file: ``--site FILE``, else ``$INFERX_SITE``, else ``$XDG_CONFIG_HOME/inferx-slurm/site.yaml``
(``~/.config/...``) when it exists; ``none`` for either turns site settings off.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from inferx_slurm.errors import RecipeError
from inferx_slurm.recipe.node_cache import NodeCacheSpec

ENV_SITE = "INFERX_SITE"
OFF = "none"


class _SiteSection(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteSlurm(_SiteSection):
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    python: Optional[str] = Field(None, description="interpreter of the in-allocation driver on the nodes (see slurm.python)")
    sbatch_args: dict[str, Any] = Field(default_factory=dict, description="extra #SBATCH options every job of this site needs")
    srun_args: list[str] = Field(default_factory=list, description="extra flags for every srun step")


class SiteContainer(_SiteSection):
    runtime: Optional[str] = Field(None, description="pyxis where the site runs containers, none for bare processes")
    image_dir: Optional[str] = Field(None, description="shared dir where imported .sqsh images live")
    mounts: list[str] = Field(default_factory=list, description="SRC:DST mounts every container gets (e.g. the shared FS)")


class SiteModel(_SiteSection):
    stage_dir: Optional[str] = Field(None, description="shared dir models are staged into before serving")
    node_cache: Optional[NodeCacheSpec] = Field(None, description="node-local weight cache every job copies the staged model into")


class SiteFrontend(_SiteSection):
    infra_bin_dir: Optional[str] = Field(None, description="dir holding etcd and nats-server on the shared filesystem")


class SiteBenchmark(_SiteSection):
    client_command: Optional[str] = Field(None, description="the aiperf executable at this site")


class SiteSettings(_SiteSection):
    """One cluster's defaults. Every field is optional; a recipe that sets a field wins."""

    slurm: SiteSlurm = Field(default_factory=SiteSlurm)
    container: SiteContainer = Field(default_factory=SiteContainer)
    model: SiteModel = Field(default_factory=SiteModel)
    frontend: SiteFrontend = Field(default_factory=SiteFrontend)
    benchmark: SiteBenchmark = Field(default_factory=SiteBenchmark)
    env: dict[str, str] = Field(default_factory=dict, description="environment for every process on this site")
    setup_scripts: list[str] = Field(default_factory=list, description="scripts sourced on every node first")

    # Where the settings came from, for plan and dry-run output.
    _source: str = PrivateAttr("site")

    @property
    def source(self) -> str:
        return self._source

    def fields(self) -> dict[str, Any]:
        """Dotted recipe path -> value, for every field this site sets."""
        data = self.model_dump()
        return {k: v for k in SITE_FIELDS if (v := _get(data, k)) not in (None, {}, [])}


def _schema_paths(model: type[BaseModel]) -> tuple[str, ...]:
    paths: list[str] = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            paths += [f"{name}.{k}" for k in sub.model_fields]
        else:
            paths.append(name)
    return tuple(paths)


# Every recipe field a site may set (the schema above, as dotted recipe paths), shown with its
# origin by `plan` and `--dry-run`.
SITE_FIELDS = _schema_paths(SiteSettings)


def site_path(explicit: Optional[str] = None, environ: Optional[dict[str, str]] = None) -> Optional[Path]:
    """The site file in force, or None."""
    env = os.environ if environ is None else environ
    choice = explicit if explicit is not None else env.get(ENV_SITE)
    if choice is not None:
        if choice.strip().lower() in (OFF, ""):
            return None
        p = Path(choice).expanduser()
        if not p.is_file():
            field = "--site" if explicit is not None else ENV_SITE
            raise RecipeError(field, choice, f"expected a readable site YAML file, or '{OFF}' for no site settings")
        return p
    base = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", "~")) / ".config").expanduser()
    default = base / "inferx-slurm" / "site.yaml"
    return default if default.is_file() else None


def load_site(explicit: Optional[str] = None, environ: Optional[dict[str, str]] = None) -> Optional[SiteSettings]:
    path = site_path(explicit, environ)
    return None if path is None else read_site(path)


def read_site(path: str | Path) -> SiteSettings:
    from inferx_slurm.recipe.values import expand_vars

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError("site", str(p), f"is not a readable YAML file: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError("site", str(p), "must be a mapping of site fields (slurm, container, model, frontend, benchmark, env, setup_scripts)")
    try:
        site = SiteSettings.model_validate(expand_vars(data, "site"))
    except ValidationError as e:
        raise RecipeError.from_validation(e, prefix=f"site({p})", model=SiteSettings) from None
    site._source = f"site {p}"  # noqa: SLF001 (set where SiteSettings is defined)
    return site


def apply_site(data: dict[str, Any], site: Optional[SiteSettings]) -> tuple[dict[str, Any], dict[str, str]]:
    """Fill what the raw recipe leaves unset from the site; returns (data, origin of every site field)."""
    from inferx_slurm.recipe.values import set_dotted as _set_dotted

    data = copy.deepcopy(data)
    set_by_site = site.fields() if site else {}
    origins: dict[str, str] = {}
    for dotted in SITE_FIELDS:
        ours = _get(data, dotted)
        theirs = set_by_site.get(dotted)
        if theirs is None:
            origins[dotted] = "recipe" if ours not in (None, {}, []) else "default"
            continue
        assert site is not None
        if isinstance(theirs, dict) and isinstance(ours, dict):
            merged: Any = {**theirs, **ours}
        elif isinstance(theirs, list) and isinstance(ours, list):
            merged = [*theirs, *(x for x in ours if x not in theirs)]
        elif ours is None:
            merged = theirs
        else:
            origins[dotted] = "recipe"  # a value of another type is the recipe's to get wrong, and validation says so
            continue
        if ours in (None, {}, []):
            origins[dotted] = site.source
        elif merged == ours:
            origins[dotted] = "recipe"
        else:
            origins[dotted] = f"{site.source} + recipe"
        try:
            _set_dotted(data, dotted, merged)
        except RecipeError:
            pass  # the recipe's section is not a mapping: validation names it
    return data, origins


def origin_lines(values: dict[str, Any], origins: dict[str, str]) -> list[str]:
    """One line per site field that has a value: the value and where it came from; then one
    line naming the fields left unset."""
    width = max(len(k) for k in SITE_FIELDS)
    shown = {}
    for dotted in SITE_FIELDS:
        value = values.get(dotted)
        if value in (None, {}, []):
            continue
        text = (" ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict)
                else " ".join(map(str, value)) if isinstance(value, list) else str(value))
        shown[dotted] = text if len(text) <= 60 else text[:57] + "..."
    vw = max((len(t) for t in shown.values()), default=0)
    lines = [f"{k:<{width}}  {t:<{vw}}  {origins.get(k, 'default')}" for k, t in shown.items()]
    unset = [k for k in SITE_FIELDS if k not in shown]
    if unset:
        lines.append(f"unset: {', '.join(unset)}")
    return lines


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def settings_lines(recipe: Any) -> list[str]:
    """The site-settable fields of a loaded recipe, each with its value and origin."""
    data = recipe.to_dict()
    return origin_lines({k: _get(data, k) for k in SITE_FIELDS}, recipe.origins)


def settings_json(recipe: Any) -> dict[str, dict[str, Any]]:
    data = recipe.to_dict()
    return {k: {"value": _get(data, k), "origin": recipe.origins.get(k, "default")} for k in SITE_FIELDS}

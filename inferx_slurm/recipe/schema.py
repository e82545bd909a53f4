"""The recipe: one deployment and the benchmark to run on it, and how a file becomes one.

The pydantic models here, in `sections` and in `sweep_spec` are the recipe format and its documentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from inferx_slurm.errors import RecipeError
from inferx_slurm.recipe.evals import EvalSpec
from inferx_slurm.recipe.topology import Topology
from inferx_slurm.recipe.sections import (
    Backend, BenchmarkSpec, ContainerSpec, EngineSpec, ExpectSpec, FrontendServer, FrontendSpec, ModelSpec, PlacementSpec,
    SlurmSpec, SpeculativeSpec, Strict,
)
from inferx_slurm.recipe.engine_values import check_env
from inferx_slurm.recipe.sweep_spec import SweepSpec
from inferx_slurm.recipe.values import env_str, expand_vars, normalize_role_env, set_dotted


if TYPE_CHECKING:
    from inferx_slurm.recipe.site import SiteSettings


class Recipe(Strict):
    """A disaggregated serving deployment and the benchmark to run on it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="job and results name")
    profile: str = Field("generic", description="environment profile: see `inferx-slurm profiles`")
    model: ModelSpec
    container: ContainerSpec = Field(default_factory=ContainerSpec)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    topology: Topology
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    frontend: FrontendSpec = Field(default_factory=FrontendSpec)
    env: dict[str, str] = Field(default_factory=dict, description="environment for every process; wins over the profile")
    setup_scripts: list[str] = Field(default_factory=list, description="scripts sourced on every node before a worker starts")
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    expect: ExpectSpec = Field(default_factory=ExpectSpec, description="identity pins every worker checks before loading weights")
    speculative: Optional[SpeculativeSpec] = Field(None, description="speculative decoding: method, draft model, tokens per step")
    sweep: Optional[SweepSpec] = None
    eval: Optional[EvalSpec] = Field(None, description="accuracy tasks run on the deployment's engines, with thresholds")
    # The file the recipe was loaded from, for provenance (hash and git revision of its repo).
    _source: Optional[str] = PrivateAttr(default=None)
    # Where each site-settable field came from (recipe / site FILE / default), for plan and dry-run.
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_serializer("topology")
    def _ser_topo(self, v: Topology) -> str:
        return str(v)

    @model_validator(mode="after")
    def _serving(self) -> "Recipe":
        topos = [self.topology, *(self.sweep.topologies if self.sweep else [])]
        if self.frontend.server is FrontendServer.engine:
            bad = next((t for t in topos if not t.aggregated or t.role("agg").workers != 1), None)
            if bad is not None:
                raise ValueError(f"frontend.server engine serves one aggregated worker (topology 1A SPEC), not {bad}; "
                                 "use server dynamo to route to several workers or to prefill and decode")
            if self.engine.backend not in (Backend.vllm, Backend.sglang):
                raise ValueError(f"frontend.server engine needs backend vllm or sglang (their own OpenAI servers), "
                                 f"not {self.engine.backend.value}; use server dynamo")
        return self

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, v: Any) -> Any:
        # YAML turns `NCCL_CUMEM_ENABLE: 1` into an int; environment values are strings.
        if isinstance(v, dict):
            return {k: env_str(val) for k, val in v.items()}
        return v

    @field_validator("env")
    @classmethod
    def _env_ports(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str) -> str:
        from inferx_slurm.recipe.profiles import PROFILES

        if v not in PROFILES:
            raise ValueError(f"unknown profile; valid: {', '.join(sorted(PROFILES))}")
        return v

    @property
    def gpus_per_node(self) -> int:
        from inferx_slurm.recipe.profiles import PROFILES

        return self.slurm.gpus_per_node or PROFILES[self.profile].gpus_per_node

    # --- I/O -------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "recipe", site: "Optional[SiteSettings]" = None) -> "Recipe":
        """Validate a recipe mapping; fields it leaves unset come from ``site`` when given."""
        from inferx_slurm.recipe.site import apply_site

        if not isinstance(data, dict):
            raise RecipeError("<recipe>", type(data).__name__, f"{source} must be a mapping of recipe fields")
        data, origins = apply_site(normalize_role_env(expand_vars(data)), site)
        try:
            recipe = cls.model_validate(data)
        except ValidationError as e:
            raise RecipeError.from_validation(e, model=cls) from None
        recipe._origins = origins  # noqa: SLF001 (a Recipe setting its own private state)
        return recipe

    @classmethod
    def load(cls, path: str | Path, *, site: "str | SiteSettings | None" = None) -> "Recipe":
        """Read a recipe file. ``site``: a site file, settings, or None for the one in force
        (``$INFERX_SITE``, else ``~/.config/inferx-slurm/site.yaml``; ``"none"`` for no site)."""
        from inferx_slurm.recipe.site import SiteSettings, load_site

        p = Path(path)
        if not p.is_file():
            raise RecipeError("recipe", str(path), "expected a readable YAML or JSON recipe file")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise RecipeError("recipe", str(path), f"is not valid YAML: {e}") from None
        settings = site if isinstance(site, SiteSettings) else load_site(site)
        recipe = cls.from_dict(data, source=str(path), site=settings)
        recipe._source = str(p.resolve())  # noqa: SLF001 (a Recipe setting its own private state)
        return recipe

    @property
    def origins(self) -> dict[str, str]:
        """recipe / site FILE / default, for each field a site file may set."""
        return dict(self._origins)

    @property
    def source(self) -> Optional[str]:
        return self._source

    def __eq__(self, other: object) -> bool:
        # Two recipes are equal when they say the same; where they were read from is not part of it.
        return isinstance(other, Recipe) and self.__dict__ == other.__dict__

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_yaml(self, *, only_set: bool = False) -> str:
        """The recipe as YAML; ``only_set`` leaves out what was left to the schema's defaults, so
        a reader (a remote login node) applies its own site settings and defaults to those."""
        data = self.model_dump(mode="json", exclude_none=True, exclude_unset=True) if only_set else self.to_dict()
        return yaml.safe_dump(data, sort_keys=False)

    def with_overrides(self, sets: dict[str, Any]) -> "Recipe":
        """A copy with dotted-path fields replaced, validated again."""
        data = self.to_dict()
        for dotted, value in sets.items():
            set_dotted(data, dotted, value)
        out = Recipe.from_dict(data)
        out._source = self._source  # noqa: SLF001 (a Recipe setting its own private state)
        out._origins = {**self._origins, **{k: "override" for k in sets if k in self._origins}}  # noqa: SLF001 (a Recipe setting its own private state)
        return out


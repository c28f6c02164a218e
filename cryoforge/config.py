"""Typed configuration: component options, training settings and the whole run.

Every component declares a nested ``Options`` model (a subclass of
:class:`cryoforge.options.Options`, which forbids unknown keys). A :class:`RunConfig` names one
component per role and holds their options as plain dicts until :func:`resolve` validates each
against its component's model and fills in defaults.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cryoforge.errors import ConfigError
from cryoforge.options import Options as Options  # re-export: engine.loop, engine.search, sources.base
from cryoforge.options import format_validation_error

ROLES = ("source", "encoder", "volume", "imaging", "loss", "schedule")


class ComponentLookup(Protocol):
    """What :func:`resolve` needs of a registry: the component class of a role and a name.

    :class:`cryoforge.registry.Registry` satisfies it; the config does not import the registry,
    which sits above it.
    """

    def get(self, kind: str, name: str) -> type: ...


class ComponentConfig(BaseModel):
    """One role's choice: the component name and its options."""

    model_config = ConfigDict(extra="forbid")
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


MAX_STEPS = 10**12
"""The largest step, epoch or log count a setting may name (far beyond any run; a typo above)."""


class TrainConfig(BaseModel):
    """Training settings (the cryoAI defaults, sized for a CPU demo where noted).

    Every number is finite and within the bounds of its field, so that a run refuses a bad value
    before it starts rather than in a later stage.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    epochs: int = Field(20, ge=0, le=MAX_STEPS, description="passes over the data (0 = only the time budget)")
    max_time_s: float | None = Field(None, gt=0, description="stop after this wall-clock time")
    batch_size: int = Field(
        32, ge=1, le=1_000_000, description="particles per optimizer step on each process"
    )
    lr_encoder: float = Field(1e-3, gt=0, le=10, description="Adam learning rate of the encoder")
    lr_volume: float | None = Field(
        None, gt=0, le=10, description="Adam learning rate of the volume (None: the volume's recommended_lr)"
    )
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm (None: off)")
    seed: int = Field(0, ge=0, lt=2**63, description="random seed of weights, batch order and half-set split")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        """A device torch knows ('auto' is resolved at run time): ``tpu`` fails here, not mid-run."""
        if value == "auto":
            return value
        import torch

        try:
            torch.device(value)
        except (RuntimeError, ValueError, TypeError):
            raise ValueError("not a device: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
        return value

    amp: bool = Field(False, description="bfloat16 autocast (CUDA only)")
    compile: bool = Field(False, description="torch.compile the encoder and volume")
    max_steps: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS,
        description="the run's step budget over all stages together (a search iteration counts as "
        "a step); a stage's own budget applies within it",
    )
    checkpoint_every_steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, description="also checkpoint every N steps"
    )
    checkpoint_every_s: float = Field(120.0, gt=0, description="seconds between checkpoints")
    export_every_s: float = Field(300.0, gt=0, description="seconds between map/pose exports")
    log_every: int = Field(10, ge=1, le=MAX_STEPS, description="steps between log lines / scalars")
    half_sets: bool = Field(False, description="two independent runs on the two halves")
    half_start: Literal["shared", "independent"] = Field(
        "shared",
        description="half sets: 'shared' starts both halves' searches from one map of all the particles "
        "low-passed to the search's initial_lowpass_angstrom (RELION's and cryoSPARC's practice: the "
        "halves share nothing finer); 'independent': each half from its own random start",
    )
    half_encoders: Literal["both", "first"] = Field(
        "both",
        description="half sets, default schedule: 'both' trains each half's encoder; 'first' only half "
        "1's (the frame of map.mrc: cryoforge infer RUN/half1), saving one encoder's training; half 2 "
        "then runs without amortization, so every particle of it is searched (no subset path)",
    )
    gt_poses: bool = Field(False, description="use the source's known poses (no encoder)")
    halfmap_mask: str = Field(
        "auto",
        description="mask of the half-map FSC (half_sets): 'auto' (the half maps' average at 15 Å, "
        "thresholded at 0.2 of its maximum, dilated 6 Å, soft edge to 14 Å), 'none', or an .mrc "
        "file of the box; the masked FSC is corrected by phase randomisation, the unmasked one kept",
    )
    tensorboard: bool = Field(True, description="write TensorBoard scalars when installed")
    progress: bool = Field(
        True, description="show progress: a bar on a terminal, else plain log lines every log_every_s"
    )
    log_every_s: float = Field(
        30.0, gt=0, description="seconds between plain progress lines when stdout is not a terminal"
    )
    pictures: bool = Field(
        True, description="write slices.png, progress.png and report.html at each export and at the end"
    )


class RunConfig(BaseModel):
    """A whole run: one component per role, training settings, outputs."""

    model_config = ConfigDict(extra="forbid")
    source: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="star"))
    encoder: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="vgg"))
    volume: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="fouriernet"))
    imaging: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="cryoai"))
    loss: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="symmetrized"))
    schedule: ComponentConfig = Field(
        default_factory=lambda: ComponentConfig(name="abinit"),
        description="what trains when: the stages (abinit: search, fit, amortize; cryoai: the paper's)",
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str = "runs/cryoforge"
    ground_truth_map: str | None = Field(None, description=".mrc used for FSC plots")
    plugins: dict[str, str] = Field(default_factory=dict, description="filled in by run()")


def load_config_file(path: str | Path) -> RunConfig:
    """Read a TOML or JSON run configuration.

    Raises
    ------
    ConfigError
        When the file is missing, unparsable or has unknown/invalid fields.
    """
    from cryoforge.io.validate import check_readable_file, decode_utf8

    path = Path(path)
    check_readable_file(path, "config file")  # a folder or /dev/zero is said to be one
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    text = decode_utf8(path, raw).removeprefix("\ufeff")  # a byte-order mark: ignored
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else loads_json(text, str(path))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply (more than a few hundred levels)") from None
    if _depth(data) > MAX_DEPTH:
        raise ConfigError(f"{path}: nested too deeply (no setting is nested more than {MAX_DEPTH} levels)")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict; a key given twice is an error (which one was meant?)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ConfigError(f"key {k!r} appears twice in one JSON object")
        out[k] = v
    return out


def loads_json(text: str, where: str) -> Any:
    """``json.loads`` that refuses a key given twice in an object and nesting too deep to read.

    Raises
    ------
    ConfigError
        ``where: key 'x' appears twice ...`` or ``where: nested too deeply``.
    json.JSONDecodeError
        When ``text`` is not JSON.
    """
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except RecursionError:
        value = None
    if (value is None and text.strip() != "null") or _depth(value) > MAX_DEPTH:
        raise ConfigError(f"{where}: nested too deeply (no setting is nested more than {MAX_DEPTH} levels)")
    return value


MAX_DEPTH = 32
"""The deepest nesting of lists and tables a configuration value may have."""


def _depth(value: Any) -> int:
    """Nesting depth of lists and dicts in ``value`` (0 for a scalar), without recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (list, dict)):
            if d + 1 > MAX_DEPTH:
                return d + 1
            deepest = max(deepest, d + 1)
            todo.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_value(text: str, key: str = "-o") -> Any:
    """Parse a ``-o key value`` value: JSON when it parses (numbers, booleans, lists), else a string.

    Raises
    ------
    ConfigError
        For JSON with a key given twice, or nested too deeply to read.
    """
    try:
        return loads_json(text, key)
    except json.JSONDecodeError:
        return text


def apply_override(config: RunConfig, key: str, value: Any) -> RunConfig:
    """Return a copy of ``config`` with ``key`` (``volume.hidden_dim``, ``train.batch_size``) set.

    For a role, ``role.x`` and ``role.options.x`` both set option ``x``.
    """
    data = config.model_dump()
    parts = key.split(".")
    if parts[0] in ROLES and len(parts) >= 2:
        if parts[1] == "name" and len(parts) == 2:
            data[parts[0]]["name"] = value
        else:
            opt = parts[2:] if parts[1] == "options" else parts[1:]
            if not opt:
                raise ConfigError(f"{key}: expected {parts[0]}.<option>")
            _set_nested(data[parts[0]]["options"], opt, value)
    elif parts[0] == "train" and len(parts) == 2:
        data["train"][parts[1]] = value
    elif len(parts) == 1 and parts[0] in RunConfig.model_fields:
        data[parts[0]] = value
    else:
        roles = ", ".join(f"{r}.<option>" for r in ROLES)
        raise ConfigError(f"-o {key}: unknown key (use {roles}, train.<field> or a top-level field)")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def _set_nested(d: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def resolve(config: RunConfig, registry: ComponentLookup) -> RunConfig:
    """Validate every component's options with its own model and fill in all defaults.

    Raises
    ------
    ConfigError
        Naming the field, e.g. ``volume.options.omega_0: Input should be a valid number``.
    PluginError
        When a component name is unknown (the message lists what is available).
    """
    data = config.model_dump()
    for role in ROLES:
        comp = getattr(config, role)
        cls = registry.get(role, comp.name)
        try:
            opts = cls.Options.model_validate(comp.options)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"{role}.options")) from None
        data[role] = {"name": comp.name, "options": opts.model_dump(mode="json")}
    return RunConfig.model_validate(data)

"""The default schedule: global pose search, a volume fit to the found poses, then amortization."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from cryoforge.options import Options
from cryoforge.roles import Schedule
from cryoforge.schedules.base import Stage

SUBSET: int | None = 20_000
"""Particles the default schedule searches at most; the others are posed by the encoder, checked
against one global search iteration and refined locally (the ``infer`` and ``refine`` stages).
Measured (``docs/validation.md``, *Many particles*): on 100,000 particles at SNR 0.05 (3PWP) a
subset of 20,000 gave 4.27° in 35 min at 1.42 GB against 4.28° in 45 min at 2.04 GB searching
every particle; on 30,000 with 10,000 searched, 5.67° against 5.36°. Inputs of at most 20,000
particles (every test, the demo, the real-data walkthrough) are searched whole."""


class AbinitSchedule(Schedule):
    """Search → fit → amortize (→ infer → refine): solves the poses, then teaches them to the encoder.

    1. ``search`` (kind ``search``): soft-assignment global search over ~7,000 rotations on a
       16-px voxel map, band widened from 3 to 8 Fourier pixels, then local refinement at full
       size below the grid's spacing. Leaves a pose per particle (the pose table) for a random
       subset of at most ``subset`` particles.
    2. ``fit`` (kind ``gradient``, ``poses = "table"``): the volume (``--volume``) is fitted to
       the images at the table's poses.
    3. ``amortize`` (kind ``amortize``): the encoder (``--encoder``) learns the table's poses
       (and those of fresh projections of the map), so ``cryoforge infer`` needs no search.
    4. ``infer`` (kind ``infer``): the encoder predicts the poses of the particles the search left
       out, in one pass each.
    5. ``refine`` (kind ``refine``): those poses are refined locally at full size against the
       searched particles' map, and the volume is fitted to every particle.

    With at most ``subset`` particles, stages 4 and 5 have nothing to do. Exported poses are the
    table's (searched or refined per particle); the encoder is what ``infer`` uses.
    """

    name = "abinit"

    class Options(Options):
        search: dict[str, Any] = Field(
            default_factory=dict, description="options of the search stage (see docs/components.md)"
        )
        fit_steps: int = Field(300, ge=1, description="volume fit steps at the table's poses")
        amortize_steps: int = Field(6000, ge=0, description="encoder training steps (0: no amortization)")
        amortize: dict[str, Any] = Field(default_factory=dict, description="options of the amortize stage")
        subset: int | None = Field(
            SUBSET,
            ge=100,
            le=10**9,
            description="particles the global search scores at most (a random subset); the encoder "
            "then poses the others, a global check and a local search refine them. None: search "
            "every particle. Without an encoder (amortize_steps 0) every particle is searched",
        )
        infer: dict[str, Any] = Field(default_factory=dict, description="options of the infer stage")
        refine: dict[str, Any] = Field(default_factory=dict, description="options of the refine stage")

        @model_validator(mode="after")
        def _subset_needs_encoder(self) -> AbinitSchedule.Options:
            if self.amortize_steps == 0 and "subset" in self.search:
                raise ValueError(
                    "search.subset needs an encoder to pose the other particles: set amortize_steps > 0"
                )
            return self

    def stages(self) -> list[Stage]:
        o = self.options
        amortized = o.amortize_steps > 0
        search = dict(o.search)
        if amortized:  # without an encoder, every particle is searched
            search.setdefault("subset", o.subset)
        stages = [
            Stage(name="search", kind="search", options=search),
            Stage(name="fit", kind="gradient", max_steps=o.fit_steps, options={"poses": "table"}),
        ]
        if amortized:
            refine = dict(o.refine)
            # the refine stage scores as the search did
            for key in ("symmetry", "whiten", "scale", "mask_diameter_angstrom", "directions", "inplane"):
                if key in search:
                    refine.setdefault(key, search[key])
            # its global check scores at the search's box and last band
            if "size" in search:
                refine.setdefault("global_size", search["size"])
            if "band_px" in search:
                refine.setdefault("global_band_px", search["band_px"][1])
            stages += [
                Stage(name="amortize", kind="amortize", max_steps=o.amortize_steps, options=o.amortize),
                Stage(name="infer", kind="infer", options=o.infer),
                Stage(name="refine", kind="refine", options=refine),
            ]
        return stages


class StagedSchedule(Schedule):
    """Stages declared in the config: a list of stage tables, schedule.options.stages, run in order."""

    name = "staged"

    class Options(Options):
        stages: list[Stage] = Field(
            default_factory=lambda: [Stage(name="train", kind="gradient")],
            description="the stages, each with name, kind, encoder, band, max_steps/epochs, options",
        )

    def stages(self) -> list[Stage]:
        return list(self.options.stages)

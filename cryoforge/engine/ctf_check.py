"""Check the particles' CTF metadata against their Thon rings, micrograph by micrograph.

The particles of one micrograph share its defocus (CTFFIND's), so their pooled power spectrum
shows its rings (:mod:`cryoforge.imaging.thon`). A defocus that the rings contradict makes every
reconstruction beyond the first CTF zero wrong in sign, band by band, and no search or refinement
recovers from it: on the β-galactosidase tutorial set a CTFFIND job run at the wrong pixel size
wrote defoci of 3.5–5 µm for micrographs whose particles show rings of 0.8–1.2 µm
(``docs/validation.md``, *Real particles*). ``cryoforge ctf-check`` reports it and can write the
star with the fitted defoci; ``cryoforge run`` warns before training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryoforge.imaging.thon import RingFit, fit_defocus_scale, radial_power

AGREE_RANGE = (0.85, 1.18)
"""Fitted/metadata defocus ratios counted as agreeing (CTFFIND's own spread is a few %)."""
MIN_PER_GROUP = 30
"""Fewest particles whose pooled spectrum is fitted; smaller micrographs are pooled as :data:`OTHERS`."""
OTHERS = "others"
"""The group of micrographs with too few particles each: reported, never corrected (their
defoci differ, so one factor need not fit them)."""


@dataclass
class GroupCheck:
    """One micrograph's (or group's) particles: their metadata defocus and the ring fit.

    Attributes
    ----------
    name
        The micrograph (``rlnMicrographName``), stack file, or ``"all particles"``.
    rows
        ``(n,)`` the source's particle positions in the group.
    defocus_angstrom
        Mean metadata defocus ``(U + V) / 2`` of the group, Å.
    fit
        The ring fit (:class:`cryoforge.imaging.thon.RingFit`).
    """

    name: str
    rows: np.ndarray
    defocus_angstrom: float
    fit: RingFit

    @property
    def fitted_defocus_angstrom(self) -> float:
        return self.defocus_angstrom * self.fit.best_scale

    @property
    def verdict(self) -> str:
        """``agrees``, ``disagrees`` or ``no rings`` (nothing above the permutation null)."""
        if not self.fit.detected:
            return "no rings"
        lo, hi = AGREE_RANGE
        return "agrees" if lo <= self.fit.best_scale <= hi else "disagrees"


@dataclass
class CtfCheck:
    """Every group's result; ``checked`` counts the groups whose rings were detected."""

    groups: list[GroupCheck] = field(default_factory=list)
    box: int = 0
    pixel_angstrom: float = 0.0

    @property
    def checked(self) -> list[GroupCheck]:
        return [g for g in self.groups if g.verdict != "no rings"]

    @property
    def disagreeing(self) -> list[GroupCheck]:
        return [g for g in self.groups if g.verdict == "disagrees"]

    @property
    def disagrees(self) -> bool:
        """Most groups with detected rings contradict the metadata."""
        return bool(self.checked) and len(self.disagreeing) > len(self.checked) / 2

    def median_ratio(self) -> float:
        r = [g.fit.best_scale for g in self.checked]
        return float(np.median(r)) if r else float("nan")

    def summary(self) -> str:
        """One line: how many groups agree, and the typical ratio."""
        n, c, d = len(self.groups), len(self.checked), len(self.disagreeing)
        if not c:
            return (
                f"CTF check: no Thon rings above noise in {n} group(s) of particles "
                "(too few particles, or rings finer than the box resolves); the defocus is not checked"
            )
        if not d:
            return f"CTF check: the defocus agrees with the particles' Thon rings ({c} of {n} groups checked)"
        fitted = [g.fitted_defocus_angstrom for g in self.disagreeing]
        stated = [g.defocus_angstrom for g in self.disagreeing]
        return (
            f"CTF check: the defocus disagrees with the particles' Thon rings in {d} of {c} groups "
            f"checked (rings of {min(fitted) / 1e4:.2f}–{max(fitted) / 1e4:.2f} µm where the metadata "
            f"say {min(stated) / 1e4:.2f}–{max(stated) / 1e4:.2f} µm; median ratio "
            f"{self.median_ratio():.2f}); maps beyond the first CTF zero will be wrong. See "
            "`cryoforge ctf-check --out` (a CTFFIND run at the wrong pixel size gives this)"
        )


def particle_groups(source) -> dict[str, np.ndarray]:
    """The source's particles grouped by micrograph, else by stack file, else one group.

    ``rlnMicrographName`` is read from a ``.star`` source's particle table; without it, the stack
    file of each ``rlnImageName`` stands for the micrograph (RELION writes one per micrograph).
    """
    n = len(source)
    names = None
    path = Path(str(getattr(source, "path", "")))
    if path.suffix.lower() == ".star" and path.is_file():
        from cryoforge.io.star_document import read_star_document

        block = read_star_document(path).particles
        if "rlnMicrographName" in block.labels:
            in_file = np.asarray(block.column("rlnMicrographName"))
            names = in_file[np.asarray(source.row_index)]
    if names is None:
        image_names = getattr(source.table, "image_names", None)
        names = (
            np.array([str(v).split("@", 1)[-1] for v in image_names])
            if image_names is not None
            else np.full(n, "all particles")
        )
    groups: dict[str, list[int]] = {}
    for r in range(n):
        groups.setdefault(str(names[r]), []).append(r)
    return {k: np.asarray(v) for k, v in groups.items()}


def check_particle_ctf(
    source,
    max_per_group: int = 400,
    max_groups: int | None = None,
    seed: int = 0,
    progress=None,
) -> CtfCheck:
    """Fit the defocus scale of each group of ``source``'s particles from its Thon rings.

    Parameters
    ----------
    source
        A particle source with CTF values (``source.ctf``).
    max_per_group
        Particles read per group (a random sample above it).
    max_groups
        Groups fitted at most (a random sample; ``None``: all).
    seed
        Seeds both samples and the permutation nulls.
    progress
        ``progress(particles_done, particles_total)`` after each group.

    Returns
    -------
    CtfCheck
        Groups under :data:`MIN_PER_GROUP` particles are pooled into one :data:`OTHERS` group.
    """
    ctf = source.ctf
    if ctf is None:
        return CtfCheck([], source.image_size, float(source.pixel_size_angstrom))
    rng = np.random.default_rng(seed)
    groups = particle_groups(source)
    small = [k for k, v in groups.items() if len(v) < MIN_PER_GROUP]
    if small:
        others = np.concatenate([groups.pop(k) for k in small])
        if len(others) >= MIN_PER_GROUP:
            groups[OTHERS] = others
    names = sorted(groups)
    if max_groups is not None and len(names) > max_groups:
        names = sorted(rng.choice(names, max_groups, replace=False).tolist())
    df = ((ctf.defocus_u_angstrom + ctf.defocus_v_angstrom) / 2).double().numpy()
    L = source.image_size
    px_all = ctf.pixel_size_angstrom
    out = CtfCheck([], L, float(source.pixel_size_angstrom))
    picked = {
        name: np.sort(rng.choice(groups[name], max_per_group, replace=False))
        if len(groups[name]) > max_per_group
        else groups[name]
        for name in names
    }
    total, done = sum(len(v) for v in picked.values()), 0
    for i, name in enumerate(names):
        rows = picked[name]
        first = int(rows[0])
        px = float(px_all[first]) if px_all is not None else float(source.pixel_size_angstrom)
        power = radial_power(source.read_images(rows).astype(np.float64))
        fit = fit_defocus_scale(
            power,
            L,
            px,
            df[rows],
            float(ctf.voltage_kv[first]),
            float(ctf.cs_mm[first]),
            float(ctf.amplitude_contrast[first]),
            float(ctf.phase_shift_deg[first]),
            seed=seed + i,
        )
        out.groups.append(GroupCheck(name, groups[name], float(df[rows].mean()), fit))
        done += len(rows)
        if progress is not None:
            progress(done, total)
    return out


def ctf_warning(source, max_per_group: int = 200, max_groups: int = 20) -> str | None:
    """The one-line warning of :meth:`CtfCheck.summary` when most sampled micrographs' rings
    contradict ``source``'s defocus; ``None`` when they agree, show no rings, or there is no CTF."""
    if getattr(source, "ctf", None) is None:
        return None
    check = check_particle_ctf(source, max_per_group, max_groups)
    return check.summary() if check.disagrees else None


def corrected_defocus_factors(check: CtfCheck, n: int) -> np.ndarray:
    """``(n,)`` per-particle factors for the metadata defocus: each disagreeing group's fitted
    ratio, 1 elsewhere (agreeing groups, groups without rings and :data:`OTHERS` keep the
    metadata)."""
    factors = np.ones(n)
    for g in check.disagreeing:
        if g.name != OTHERS:
            factors[g.rows] = g.fit.best_scale
    return factors


def corrected_star_document(path: str | Path, source, check: CtfCheck):
    """The STAR file ``path`` with each disagreeing group's ``rlnDefocusU/V`` scaled to its rings.

    Returns the document (every other block, label and value as written) and the number of
    particles changed. ``source`` is the source read from ``path`` (its ``row_index`` maps its
    particles to the file's rows).
    """
    from dataclasses import replace

    from cryoforge.io.star_document import StarBlock, format_float, read_star_document, split_tokens

    doc = read_star_document(path)
    block = doc.particles
    cols = [block.labels.index(lab) for lab in ("rlnDefocusU", "rlnDefocusV") if lab in block.labels]
    factors = corrected_defocus_factors(check, len(source))
    lines = list(block.lines)
    changed = 0
    for r, f in zip(np.asarray(source.row_index).tolist(), factors.tolist(), strict=True):
        if f == 1.0:
            continue
        values = split_tokens(lines[r])
        for j in cols:
            values[j] = format_float(float(values[j]) * f)
        lines[r] = " ".join(values)
        changed += 1
    out = StarBlock(block.name, block.labels, lines, block.loop)
    return replace(doc, blocks=[out if b is block else b for b in doc.blocks]), changed


def plot_ctf_check(check: CtfCheck, path: str | Path) -> None:
    """``ctf_check.png``: per group, the ring correlation against the defocus tried, with the
    metadata's defocus and the permutation null marked (up to 12 groups)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cryoforge.io.atomic import atomic_path

    groups = check.groups[:12]
    cols = min(3, max(1, len(groups)))
    rows = max(1, math.ceil(len(groups) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, g in zip(axes.ravel(), groups, strict=False):
        x = g.defocus_angstrom * g.fit.scales / 1e4
        ax.plot(x, g.fit.correlation, lw=1.2, color="C0")
        ax.axvline(g.defocus_angstrom / 1e4, color="C3", ls="--", lw=1, label="metadata")
        if g.fit.detected:
            ax.axvline(g.fitted_defocus_angstrom / 1e4, color="C2", lw=1, label="rings")
        ax.axhline(g.fit.null_threshold, color="grey", ls=":", lw=1, label="noise (99 %)")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylim(-1, 1)
        ax.set_title(f"{Path(g.name).name[-36:]}: {g.verdict}", fontsize=8)
        ax.set_xlabel("defocus (µm)", fontsize=8)
        ax.set_ylabel("ring correlation", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(groups) :]:
        ax.axis("off")
    if groups:
        axes.ravel()[0].legend(fontsize=6, loc="lower left")
    fig.suptitle(check.summary()[:110], fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

"""Shared layer for sources backed by a :class:`ParticleTable` and memory-mapped MRC stacks."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from cryoforge.config import Options
from cryoforge.errors import InputFileError
from cryoforge.io.mrc import release_pages, stack_info
from cryoforge.io.physical import check_physical_values
from cryoforge.io.stack_pool import StackPool
from cryoforge.io.table import ParticleTable, parse_image_name
from cryoforge.io.validate import check_finite
from cryoforge.ops.fft import fourier_crop
from cryoforge.roles import Source
from cryoforge.sources.quality import QUALITY_SAMPLE, DataQuality
from cryoforge.sources.subsets import select_particles
from cryoforge.types import BuildContext

#: a pixel this many standard deviations of the data from their mean marks a corrupt image
MAX_NORMALIZED_PIXEL = 1e6


class StackOptions(Options):
    """Options common to every stack-backed source."""

    path: str = Field("", description="the particle file (.star, .cs or .mrcs)")
    datadir: str | None = Field(None, description="folder that image paths are relative to")
    downsample_to: int | None = Field(None, ge=8, le=4096, description="Fourier-crop images to this box (px)")
    normalize: bool = Field(True, description="scale images to zero mean, unit std (from a sample)")
    invert_contrast: bool = Field(
        False,
        description="multiply images by -1: for stacks whose molecule is dark (raw micrograph "
        "contrast); RELION/cryoSPARC stacks are white and need nothing",
    )
    ignore_ctf: bool = Field(False, description="treat the images as CTF-free")
    ind: str | None = Field(
        None, description="use only these particles: a cryoDRGN .pkl or a .txt of 0-based indices"
    )
    first: int | None = Field(None, ge=1, description="use only the first N particles (of --ind's)")
    path_options: ClassVar[tuple[str, ...]] = ("path", "datadir", "ind")
    """Options naming files: stored as absolute paths in a run's ``config.json``."""


class StackSource(Source):
    """A source reading ``index@file`` references from memory-mapped stacks, batch by batch.

    Nothing per-image is loaded at construction: stacks are opened with ``mrcfile.mmap`` and each
    batch reads only its own images, grouped by file. Subclasses provide :meth:`read_table`.
    """

    image_path_field: ClassVar[str] = "rlnImageName"
    """The table's field naming each particle's stack file (in one-line errors)."""
    image_index_field: ClassVar[str] = "rlnImageName"
    """The table's field holding each particle's image number in its stack."""

    Options = StackOptions

    def __init__(self, options: StackOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        if not options.path:
            raise InputFileError("<none>", "no particle file given (use --particles)", "source.path")
        self.path = Path(options.path)
        table = self.read_table(self.path)
        self.rows_in_file = len(table)
        self.row_index = select_particles(len(table), options.ind, options.first)
        """``(N,)`` the rows of :attr:`path` this source serves (all, or ``ind``/``first``)."""
        self.table = table if len(self.row_index) == len(table) else table.take(self.row_index)
        self._open_stacks()
        self.original_size = self._stacks.infos[0].size
        if self.table.box_size is not None and self.table.box_size != self.original_size:
            raise InputFileError(
                self.path,
                f"box size {self.table.box_size} but stack images are {self.original_size} px",
                "rlnImageSize",
            )
        self.table.box_size = self.original_size
        self.image_size = options.downsample_to or self.original_size
        if self.image_size > self.original_size:
            raise InputFileError(
                self.path,
                f"cannot downsample {self.original_size} px images to {self.image_size}",
                "source.downsample_to",
            )
        base_px = self._pixel_size()
        self.original_pixel_size_angstrom = base_px
        self.pixel_size_angstrom = base_px * self.original_size / self.image_size
        volts = self.table.ctf["voltage_kv"]
        no_ctf = not self.table.has_ctf or np.all(volts == 0) or options.ignore_ctf
        self.physical_warnings = check_physical_values(
            self.table, self.original_size, ctf_in_use=not no_ctf, rows=self.row_index
        )
        """Warnings about implausible values (defocus, voltage, origins...), one line each."""
        if no_ctf:
            self.ctf = None  # CTF-free data (no defocus in the table, or --no-ctf simulations)
        else:
            self.ctf = self.table.ctf_params(self.original_size / self.image_size)
        sign = self.table.contrast_sign
        self._sign = None if sign is None or np.all(sign > 0) else sign.astype(np.float32)
        if self.table.rotations is not None:
            check_finite(self.path, self.POSE_FIELD, self.table.rotations)
        self.poses = self.table.pose()
        sh = self.table.shifts_angstrom
        self.origins_angstrom = None if sh is None else torch.as_tensor(np.asarray(sh, dtype=np.float32))
        self._scale, self._offset, self._limit = 1.0, 0.0, float("inf")
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(len(self), size=min(len(self), QUALITY_SAMPLE), replace=False))
        imgs = self.read_images(sample)
        self.quality = DataQuality.measure(self._file_id, self._index, imgs)
        self._check_sample(sample, imgs)
        if options.normalize:
            self._offset, self._scale = float(imgs.mean()), float(imgs.std()) or 1.0
            if not (np.isfinite(self._offset) and np.isfinite(self._scale)):  # float32 overflow
                self._offset, self._scale = (
                    float(imgs.mean(dtype=np.float64)),
                    float(imgs.std(dtype=np.float64)),
                )
            self._limit = MAX_NORMALIZED_PIXEL

    def _check_sample(self, sample: np.ndarray, imgs: np.ndarray) -> None:
        """Refuse data without signal (every sampled image constant, e.g. an all-zero stack) and
        an image whose pixels are absurd next to the others' (a corrupt 3e38), before training."""
        q = self.quality
        if q.sampled and q.constant == q.sampled:
            what = "all zeros" if q.blank == q.sampled else "constant (zero variance)"
            scope = "every image" if q.sampled == len(self) else f"all {q.sampled} images sampled"
            raise InputFileError(
                self._stack_paths[self._file_id[sample[0]]],
                f"{scope} {what}: the data carry no signal",
                "data",
            )
        flat = imgs.reshape(len(imgs), -1).astype(np.float64)
        centre = np.median(flat.mean(1))
        spread = np.median(flat.std(1))
        if spread == 0:  # most images constant: measure against the pixel spread of all
            spread = flat.std()
        dev = np.abs(flat - centre).max(1)
        bad = np.nonzero(dev > MAX_NORMALIZED_PIXEL * spread)[0]
        if len(bad):
            i = sample[bad[0]]
            value = flat[bad[0]][np.argmax(np.abs(flat[bad[0]] - centre))]
            raise InputFileError(
                self._stack_paths[self._file_id[i]],
                f"image {self._index[i] + 1} has a pixel of {value:.3g}, more than "
                f"{MAX_NORMALIZED_PIXEL:.0e} times the images' typical standard deviation "
                f"({spread:.3g}): a corrupt image?",
                "data",
            )

    #: the column that names a missing pixel size in messages, and the one that holds poses
    PIXEL_FIELD = "rlnImagePixelSize"
    POSE_FIELD = "rlnAngleRot/Tilt/Psi"

    def read_table(self, path: Path) -> ParticleTable:  # pragma: no cover - abstract in practice
        raise NotImplementedError

    def _pixel_size(self) -> float:
        """The table's pixel size, else the first stack header's; never a made-up 1 Å/px."""
        px = self.table.pixel_size_angstrom
        if px is None or not np.isfinite(px) or px <= 0:
            header = self._stacks.infos[0].voxel_size_angstrom
            if not header > 0:
                raise InputFileError(
                    self.path,
                    f"no pixel size: not in the file, and the header of {self._stacks.infos[0].path.name} "
                    "says 0 Å/px",
                    self.PIXEL_FIELD,
                )
            px = header
            self.table.pixel_size_angstrom = px
        return float(px)

    def _resolve(self, file: str) -> Path:
        candidates = []
        if self.options.datadir:
            candidates += [Path(self.options.datadir) / file, Path(self.options.datadir) / Path(file).name]
        candidates += [self.path.parent / file, Path(file), self.path.parent / Path(file).name]
        for c in candidates:
            if c.is_file():
                return c
        raise InputFileError(
            self.path,
            f"stack file {file!r} not found (looked in "
            f"{', '.join(str(c.parent) for c in candidates[:3])}; set source.datadir)",
            self.image_path_field,
        )

    def _open_stacks(self) -> None:
        datadir = self.options.datadir
        if datadir and not Path(datadir).is_dir():  # never silently looked past
            what = "not a folder" if Path(datadir).exists() else "folder not found"
            raise InputFileError(Path(datadir), what, "source.datadir")
        names = self.table.image_names
        if names is None:
            raise InputFileError(self.path, "no image references", self.image_path_field)
        files: dict[str, int] = {}
        file_id = np.empty(len(names), np.int64)
        index = np.empty(len(names), np.int64)
        for i, name in enumerate(names):
            try:
                idx, f = parse_image_name(str(name))
            except ValueError as exc:
                raise InputFileError(self.path, f"particle {i + 1}: {exc}", self.image_path_field) from None
            file_id[i] = files.setdefault(f, len(files))
            index[i] = idx
        self._stack_paths = [self._resolve(f).resolve() for f in files]
        self._stacks = StackPool([stack_info(p) for p in self._stack_paths])  # opened on demand
        sizes = {s.size for s in self._stacks.infos}
        if len(sizes) > 1:
            raise InputFileError(
                self.path, f"stacks have different image sizes {sorted(sizes)}", self.image_path_field
            )
        counts = np.array([s.count for s in self._stacks.infos])
        beyond = index >= counts[file_id]
        if beyond.any():
            i = int(np.argmax(beyond))
            raise InputFileError(
                self._stack_paths[file_id[i]],
                f"{self.path.name} particle {i + 1} refers to image "
                f"{int(index[i]) + 1} but the stack holds {counts[file_id[i]]}",
                self.image_index_field,
            )
        self._file_id, self._index = file_id, index

    def __len__(self) -> int:
        return len(self.table)

    def absolute_image_names(self, index: np.ndarray) -> np.ndarray:
        """``index@/absolute/stack.mrcs`` references (1-based) for the particles at ``index``."""
        paths = self._stack_paths
        return np.array(
            [f"{i + 1:06d}@{paths[f]}" for f, i in zip(self._file_id[index], self._index[index], strict=True)]
        )

    def read_images(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), self.original_size, self.original_size), np.float32)
        fids = self._file_id[index]
        for fid in np.unique(fids):
            where = np.nonzero(fids == fid)[0]
            rows = self._index[index[where]]
            order = np.argsort(rows)  # sequential reads from the memory map
            for s in range(0, len(order), 64):  # small chunks, pages released after each
                part = order[s : s + 64]
                out[where[part]] = self._stacks[fid][rows[part]]
                release_pages(self._stacks[fid])
        if not np.isfinite(out).all():
            bad = index[~np.isfinite(out).reshape(len(index), -1).all(1)][0]
            fid = self._file_id[bad]
            raise InputFileError(
                self._stack_paths[fid], f"image {self._index[bad] + 1} contains NaN or Inf", "data"
            )
        if self.image_size != self.original_size:
            out = fourier_crop(torch.from_numpy(out), self.image_size).numpy()
        if self._sign is not None:  # cryoSPARC blob/sign: make the molecule white
            out *= self._sign[index][:, None, None]
        with np.errstate(over="ignore", invalid="ignore"):  # a corrupt 3e38 pixel: refused below
            out = (out - self._offset) / self._scale
        if not np.all(np.abs(out) <= self._limit):  # outside the sample: a corrupt image (3e38)
            bad = index[~(np.abs(out) <= self._limit).reshape(len(index), -1).all(1)][0]
            raise InputFileError(
                self._stack_paths[self._file_id[bad]],
                f"image {self._index[bad] + 1} has a pixel more than {self._limit:.0e} standard "
                "deviations of the data from their mean: a corrupt image?",
                "data",
            )
        return -out if self.options.invert_contrast else out

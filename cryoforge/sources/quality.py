"""Counts of suspicious particles, reported at the start of a run: duplicates (the same image
referenced twice) over the whole table, and constant images (every pixel equal; blank when that
value is 0) on a random sample of the images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: images read (at random, once) to measure normalisation and count constant images
QUALITY_SAMPLE = 1000


@dataclass(frozen=True)
class DataQuality:
    """What :meth:`measure` found.

    Attributes
    ----------
    n_particles
        Rows of the particle table.
    duplicates
        Rows that refer to an image already referenced by an earlier row (same file and index).
    sampled
        Images inspected for constant values (all of them when ``sampled == n_particles``).
    constant
        Sampled images whose pixels all have one value (zero variance), including blank ones.
    blank
        Sampled images that are all zeros.
    """

    n_particles: int
    duplicates: int
    sampled: int
    constant: int
    blank: int

    @classmethod
    def measure(cls, file_id: np.ndarray, index: np.ndarray, sample_images: np.ndarray) -> DataQuality:
        """Count duplicates from ``(N,)`` stack ids and image indices; constant and blank images
        in ``(S, L, L)`` sampled images (as read, before normalisation)."""
        key = np.stack([np.asarray(file_id, np.int64), np.asarray(index, np.int64)], 1)
        n = len(key)
        duplicates = n - len(np.unique(key, axis=0)) if n else 0
        flat = sample_images.reshape(len(sample_images), -1)
        if flat.shape[0]:
            constant = flat.max(1) == flat.min(1)
            blank = constant & (flat[:, 0] == 0)
        else:
            constant = blank = np.zeros(0, bool)
        return cls(n, int(duplicates), len(flat), int(constant.sum()), int(blank.sum()))

    def messages(self) -> list[str]:
        """One warning line per problem found (none when the data look clean)."""
        out = []
        if self.duplicates:
            out.append(
                f"{self.duplicates} of {self.n_particles} particles refer to an image already used "
                "by another row (duplicate rlnImageName): they count twice in training"
            )
        scope = "" if self.sampled == self.n_particles else f" (in a random sample of {self.sampled})"
        if self.constant:
            zeros = f", {self.blank} of them all zeros" if self.blank else ""
            out.append(
                f"{self.constant} of {self.sampled} images are constant (zero variance{zeros}){scope}: "
                "they carry no signal; remove them from the particle file"
            )
        return out

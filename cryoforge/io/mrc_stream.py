"""An MRC image stack written chunk by chunk, so that memory does not grow with the stack.

:func:`cryoforge.io.mrc.write_mrc` takes the whole array; :class:`StackWriter` takes it a chunk at
a time (and can read a chunk back, for a second pass over the data). The file appears under its
name only when the writer closes without an error (``atomic_path``); the header's statistics
(min, max, mean, rms) are accumulated from the chunks, in float64, and written last.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from types import TracebackType

import mrcfile
import numpy as np

from cryoforge.io.atomic import atomic_path


class StackWriter:
    """Write an ``(n, L, L)`` MRC stack (float32, mode 2, or ``float16``: mode 12; an image stack,
    origin 0) in chunks.

    Use as a context manager::

        with StackWriter(path, n, L, voxel) as w:
            for start, chunk in chunks:
                w.write(start, chunk)

    Each image must be written once before the writer closes; :meth:`read` gives images already
    written, :meth:`write` may overwrite them (the header statistics are those of the last
    :meth:`write` of every image only when each is written once, or when :meth:`reset_stats`
    is called before a second pass).
    """

    def __init__(
        self, path: str | Path, n: int, box: int, voxel_size_angstrom: float, float16: bool = False
    ) -> None:
        self.path = Path(path)
        self.dtype, self.mode = ("<f2", 12) if float16 else ("<f4", 2)
        self.itemsize = 2 if float16 else 4
        self.n, self.box = int(n), int(box)
        self.voxel = float(voxel_size_angstrom)
        self._stack = contextlib.ExitStack()
        self._file = None
        self._offset = 1024
        self.reset_stats()

    def reset_stats(self) -> None:
        """Forget the statistics gathered so far (before a pass that writes every image again)."""
        self._count = 0
        self._sum = 0.0
        self._sum2 = 0.0
        self._min = np.inf
        self._max = -np.inf

    def __enter__(self) -> StackWriter:
        tmp = self._stack.enter_context(atomic_path(self.path))
        with mrcfile.new_mmap(
            tmp, shape=(self.n, self.box, self.box), mrc_mode=self.mode, overwrite=True
        ) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = self.voxel
            self._offset = int(mrc.header.nbytes) + int(mrc.header.nsymbt)
        self._tmp = tmp
        self._file = self._stack.enter_context(open(tmp, "r+b"))
        return self

    def _seek(self, start: int) -> None:
        assert self._file is not None, "use StackWriter as a context manager"
        self._file.seek(self._offset + int(start) * self.box * self.box * self.itemsize)

    def write(self, start: int, images: np.ndarray) -> None:
        """Write ``images`` ``(m, L, L)`` as images ``start … start + m − 1`` (0-based)."""
        data = np.ascontiguousarray(images, dtype=self.dtype)
        if data.ndim != 3 or data.shape[1:] != (self.box, self.box) or start + len(data) > self.n:
            raise ValueError(f"chunk {data.shape} at {start} does not fit a stack of {self.n}×{self.box}²")
        self._seek(start)
        self._file.write(data.tobytes())
        if len(data):
            d64 = data.astype(np.float64)
            self._count += d64.size
            self._sum += float(d64.sum())
            self._sum2 += float(np.square(d64).sum())
            self._min = min(self._min, float(data.min()))
            self._max = max(self._max, float(data.max()))

    def read(self, start: int, count: int) -> np.ndarray:
        """Images ``start … start + count − 1`` as written so far, ``(count, L, L)`` float32."""
        self._seek(start)
        raw = self._file.read(int(count) * self.box * self.box * self.itemsize)
        return np.frombuffer(raw, dtype=self.dtype).reshape(-1, self.box, self.box).astype(np.float32)

    def _write_stats(self) -> None:
        with mrcfile.open(self._tmp, mode="r", permissive=True, header_only=True) as mrc:
            header = mrc.header.copy()
        if self._count:
            mean = self._sum / self._count
            header.dmin, header.dmax = self._min, self._max
            header.dmean = mean
            header.rms = np.sqrt(max(self._sum2 / self._count - mean * mean, 0.0))
        self._file.seek(0)
        self._file.write(header.tobytes())
        self._file.flush()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        if kind is None:
            try:
                self._write_stats()
            except BaseException:
                self._stack.__exit__(*sys.exc_info())  # closes and removes the temporary file
                raise
        return self._stack.__exit__(kind, exc, tb)

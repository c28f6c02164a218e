"""A bounded pool of open image stacks, so that datasets of many small stacks never run out of
file descriptors (RELION writes one stack per micrograph: thousands of files)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from cryoforge.io.mrc import StackInfo, map_stack

DEFAULT_MAX_OPEN = 64


class StackPool:
    """Memory maps of checked stacks, opened on demand; at most ``max_open`` at once (LRU).

    Parameters
    ----------
    infos
        The validated headers (:func:`cryoforge.io.mrc.stack_info`), one per file.
    max_open
        How many memory maps (one file descriptor each) may be open at the same time.
    """

    def __init__(self, infos: list[StackInfo], max_open: int = DEFAULT_MAX_OPEN) -> None:
        if max_open < 1:
            raise ValueError("max_open must be >= 1")
        self.infos = infos
        self.max_open = max_open
        self._open: OrderedDict[int, np.memmap] = OrderedDict()

    def __len__(self) -> int:
        return len(self.infos)

    def __getitem__(self, file_id: int) -> np.memmap:
        """The ``(N, L, L)`` memory map of stack ``file_id`` (opened now if needed)."""
        stack = self._open.get(file_id)
        if stack is not None:
            self._open.move_to_end(file_id)
            return stack
        while len(self._open) >= self.max_open:
            # dropping the pool's reference frees the map and its descriptor (at once in CPython);
            # never close it explicitly: a caller may still hold it, and reading a closed map crashes
            self._open.popitem(last=False)
        stack = map_stack(self.infos[file_id])
        self._open[file_id] = stack
        return stack

    @property
    def open_count(self) -> int:
        return len(self._open)

    def close(self) -> None:
        """Forget every open memory map (each is freed when no caller holds it any more)."""
        self._open.clear()

    def __getstate__(self) -> dict:  # worker processes reopen what they need
        return {"infos": self.infos, "max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["infos"], state["max_open"])

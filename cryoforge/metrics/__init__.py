"""Metrics of maps and poses: one module per measure.

``fsc`` (FSC shells, resolution crossings, :class:`~cryoforge.metrics.fsc.FSCReport`),
``resample`` (mirror, rotate, shift, crop a map), ``translation`` (sub-pixel map shift),
``alignment`` (both hands, rotation search, translation: :func:`~cryoforge.metrics.alignment.align_map`),
``poses`` (rotation and shift errors against known poses), ``plot`` (the FSC plot), ``summary``
(table rows and JSON of a metrics dict) and ``files`` (evaluation of files on disk).
Metrics import ``ops`` and ``io`` only; the engine, the report and the commands import them.
"""

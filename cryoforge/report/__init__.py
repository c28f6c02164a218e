"""Pictures and the HTML report of a run: pure functions from arrays and metrics to files.

``slices``: central slices and projections of a map at its pixel size; ``progress_plot``: loss
and resolution against training time; ``html``: the self-contained ``report.html``;
``metrics``: metric rows labelled by whether they were measured against a ground truth.
The engine's :class:`cryoforge.engine.pictures.PicturesCallback` calls them at each export.
"""

"""Physics from an atomic model to particles: ``potential`` (atomic model → map), ``simulate``
(map → CTF-modulated, shifted, noisy particle stack with its ``.star``, streamed to disk) and
``demo`` (the built-in demo dataset and its run configuration)."""

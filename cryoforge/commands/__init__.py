"""The command line, one module per command, each holding its click options.

Commands are thin: they parse options, call the library (``engine``, ``simulation``, ``metrics``)
and print. :mod:`cryoforge.cli` puts them into the ``cryoforge`` group; ``group`` holds the click
group classes and ``common`` the options several commands share. Nothing below this package
imports it.
"""

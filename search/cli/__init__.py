"""The ``prunesearch`` command line: the argument table (``parser``), one handler per verb (``commands``), ``ui``."""

from search.cli.parser import main

__all__ = ["main"]

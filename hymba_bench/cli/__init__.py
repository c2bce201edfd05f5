"""The `hymba-bench` command line: parsing, flags and rendering over the library."""

from hymba_bench.cli.app import app, main

__all__ = ["app", "main"]

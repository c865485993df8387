"""Shared by the whole suite: the plugin's modules, imported once for every in-process run.

pytester's in-process runs (``pytester.runpytest``) drop the modules each run imported when it
ends. A module of the plugin that is imported lazily (the smoke checks, prefetch, the head
start, ...) was so imported again, and rewritten again by pytest's assertion rewriting (with
``PYTHONDONTWRITEBYTECODE`` set, nothing is cached), in every run that used it: a parse of
thousands of lines on the main thread each time. CPython 3.11's AST builder keeps its
recursion depth for the whole interpreter (gh-106905), so a parse on another thread at the same
moment (a simulator thread formatting a traceback, a collection on the head start's thread)
could fail pytest's with ``SystemError: AST constructor recursion depth mismatch``: an
INTERNALERROR in a test that did nothing wrong. Imported here, before any run, they stay
imported; each run still gets fresh test modules, a fresh config and a fresh session.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import pytest_modelrollout

# The runs in subprocesses (``pytester.runpytest_subprocess``, the xdist workers of the runs
# under test) compiled the plugin's modules and rewrote them for pytest again at each start-up
# when ``PYTHONDONTWRITEBYTECODE`` is set (as it is in this repository's sandbox and CI):
# about 0.8 s of each such run, hundreds of them. They write and share the bytecode caches as
# on a machine without it (each cache file is written atomically, by CPython and by pytest).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

for _module in pkgutil.walk_packages(pytest_modelrollout.__path__, "pytest_modelrollout."):
    if not _module.name.endswith("__main__"):
        importlib.import_module(_module.name)

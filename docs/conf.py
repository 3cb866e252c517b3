"""Sphinx configuration of the keyed_dispatch documentation (``make docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keyed_dispatch  # noqa: E402  # after the path is set, for autodoc and the version

project = "keyed_dispatch"
author = "keyed_dispatch developers"
copyright = "2026, keyed_dispatch developers"  # noqa: A001  # the name Sphinx reads
release = keyed_dispatch.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# The docstrings are Google style (Args/Returns/Raises).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True}
python_maximum_signature_line_length = 100  # longer signatures get one parameter per line

html_theme = "furo"
html_title = f"keyed_dispatch {release}"

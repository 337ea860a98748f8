"""How result files and fitted read-outs name the files they came from: relative to the working
directory when the file lies under it (the repository's own ``models/``, ``data/`` ...), so that
results record no machine's absolute paths; a file elsewhere keeps its absolute path."""
from __future__ import annotations

import os


def recorded_path(path) -> str:
    """``path`` relative to the working directory when it lies under it, else absolute."""
    full, cwd = os.path.abspath(str(path)), os.getcwd()
    return os.path.relpath(full, cwd) if full == cwd or full.startswith(cwd + os.sep) else full


def same_file(recorded, path) -> bool:
    """Whether a recorded path (as ``recorded_path`` wrote it, read from this working directory)
    names ``path``."""
    return recorded is not None and os.path.abspath(str(recorded)) == os.path.abspath(str(path))

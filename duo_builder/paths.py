"""Where things live in the repository and the build tree."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENGINE_SRC = REPO / "engine"
BUILD = REPO / "build"
MODELS = REPO / "models"
SHARED = REPO.parent / "shared"  # reference data beside the repo; tests only, never the product

DEFAULT_MODEL = MODELS / "stories260K.bin"
DEFAULT_TOKENIZER = MODELS / "tok512.bin"
LLAMA_TOKENIZER = MODELS / "tokenizer.bin"


def cache_dir() -> Path:
    """The download cache: $DUO_CACHE, else $XDG_CACHE_HOME/duo-storyteller, else ~/.cache/..."""
    if os.environ.get("DUO_CACHE"):
        return Path(os.environ["DUO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "duo-storyteller"

"""Where the dev stack keeps its files, all relative to the repository root (git-ignored)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Data, logs and pid files of the servers ``python -m devstack up`` starts.
STACK_DIR = REPO_ROOT / ".stack"
#: Downloaded artifacts (Kafka jars).
CACHE_DIR = REPO_ROOT / ".cache"
#: The model server's own virtualenv.
SERVING_PYTHON = REPO_ROOT / ".venv-serving" / "bin" / "python"

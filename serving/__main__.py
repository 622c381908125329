"""``python -m serving``: start the reference model server (see ``--help``)."""

from __future__ import annotations

import sys
from pathlib import Path

# The model server's environment does not install the repository: make ``schemas`` importable
# whatever the working directory.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from serving.server import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

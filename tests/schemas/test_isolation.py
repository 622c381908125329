"""``schemas`` imports nothing of the project, and nothing outside the stdlib but orjson."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
before = set(sys.modules)
import schemas, schemas.message, schemas.deadletter, schemas.redaction, schemas.exceptions
schemas.message.json_schema()
top = {name.split(".")[0] for name in set(sys.modules) - before}
print(" ".join(sorted(top - set(sys.stdlib_module_names) - {"__main__"})))
"""


def test_schemas_imports_only_stdlib_and_orjson() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert set(proc.stdout.split()) == {"schemas", "orjson"}

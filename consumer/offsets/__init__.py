"""Per-partition contiguous watermarks: which offset may be committed.

Pure logic, imports nothing from the rest of the project.
"""

from consumer.offsets.exceptions import OffsetOrderError, UnknownOffsetError
from consumer.offsets.tracker import OffsetTracker, PartitionKey

__all__ = ["OffsetOrderError", "OffsetTracker", "PartitionKey", "UnknownOffsetError"]

"""Engine errors."""


class EngineFatalError(RuntimeError):
    """A condition the service cannot recover from by itself (bad configuration, mismatched model
    or collection, an unusable group position); the process exits non-zero."""

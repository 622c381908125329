"""Preprocessing: host-side fitting (any thread, NumPy only) and the JAX batch step (main thread).

``fit_to_canvas`` runs in the I/O pool and never touches JAX. ``Preprocessor`` (imported lazily from
``consumer.preprocess.jaxprep``) is the only place in the service that imports or calls JAX, and it
refuses to run anywhere but the main thread.
"""

from consumer.preprocess.exceptions import PreprocessThreadError
from consumer.preprocess.host import fit_to_canvas

__all__ = ["PreprocessThreadError", "fit_to_canvas"]

"""The reference model server: EfficientNet-Lite0 in JAX behind Triton Inference Server.

Only :mod:`serving.server` imports PyTriton; :mod:`serving.weights` and :mod:`serving.model` also
import in the service's environment.
"""

"""Normalizing-flow heads on the frozen embedding: zuko (default) and nflows behind one registry.

Importing this package registers the head kind ``"flow"`` so checkpoints rebuild it.

Example:
    >>> from flows import FlowHead, make_flow_head
    >>> head = FlowHead(2, 2, backend="zuko", transform="nsf")
    >>> factory = make_flow_head(2, backend="nflows", transform="affine_ar")
"""

from .backends import (
    BACKENDS,
    DEFAULT_TRANSFORM,
    SPLINE_TRANSFORMS,
    TRANSFORMS,
    FlowModule,
    FlowSpec,
    build_flow,
    check_backend,
)
from .head import FlowDistribution, FlowHead, make_flow_head

__all__ = [
    "BACKENDS",
    "DEFAULT_TRANSFORM",
    "SPLINE_TRANSFORMS",
    "TRANSFORMS",
    "FlowDistribution",
    "FlowHead",
    "FlowModule",
    "FlowSpec",
    "build_flow",
    "check_backend",
    "make_flow_head",
]

"""THE seeding scheme of every study: each random draw comes from a digest of its cell's coordinates and a stream
name, so adding a method, variant or head to a grid never changes another cell's records, and no two streams
share draws by accident (``seed + 10_000`` of one stream meeting ``seed`` of another).

Example:
    >>> gen = torch.Generator().manual_seed(derived_seed("digits", 0, 5, "transfer", "fit"))
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["derived_seed", "stream_seed"]


def derived_seed(*parts: Any) -> int:
    """A 60-bit seed from any parts, joined by ``/`` as text (stable across processes, machines and Python
    versions; ``% 2**31`` where a consumer wants a 32-bit seed)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:15], 16)


def stream_seed(*parts: Any) -> int:
    """The 31-bit form of :func:`derived_seed` (``% 2**31``): what ``torch.manual_seed``, a ``torch.Generator``
    and scikit-learn's ``random_state`` take."""
    return derived_seed(*parts) % 2**31

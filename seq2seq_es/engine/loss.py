"""The token-summed cross-entropy that the loop normalises over micro-batches and ranks.

Defined in kernels/token_ce.py (below engine/, so data/ can use it too); the engine's name for it.
"""

from __future__ import annotations

from ..kernels.token_ce import token_ce_sum  # noqa: F401

"""The settings of ``models.trust`` a user sees, in a module light enough for the CLI's help (no numpy)."""

from __future__ import annotations

from posterlens.settings import Range

__all__ = ["DOMAIN_SHARE", "INTERVAL", "INTERVAL_RULE"]

DOMAIN_SHARE = 0.02  # in_domain: at least this share of held-out training posters are as far or farther
INTERVAL = 0.8  # the default level of the score intervals (``--interval``)
INTERVAL_RULE = Range(0.05, 0.99)

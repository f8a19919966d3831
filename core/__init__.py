"""Contrastive-DP: the science (sampler, losses, trainers, attacks, Gaussian theory) and the seams
(specs, settings, storage) of the synthetic-data service.

Import rule: ``core`` imports nothing from ``api`` or ``worker``; the algorithm modules in core never import
storage, settings or jobs (``tests/test_layout.py`` enforces both).
"""

__version__ = "0.1.0"

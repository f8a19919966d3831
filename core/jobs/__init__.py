"""The jobs layer: composes the science in core/ with storage, Redis and the task queue.

Modules the API uses (``records`` with ``leases``, ``idempotency`` and ``quotas``, ``dependencies``,
``service``, ``queue``, ``keys``, ``task_names``) import no torch;
the units the worker runs (``context``, ``generate``, ``training``, ``evaluate``, ``experiment``) import the
science lazily.
"""

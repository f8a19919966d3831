"""The jobs layer: composes the science in core/ with storage, Redis and the task queue.

Modules the API uses (``records``, ``service``, ``queue``, ``keys``, ``task_names``) import no torch;
``execute`` and ``training`` (worker side) import the science lazily.
"""

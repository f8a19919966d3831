"""Celery workers of the Contrastive-DP service: thin tasks that call ``core``."""

"""HTTP front end of the Contrastive-DP service (FastAPI). Never imports torch or ``worker``."""

"""Trainers (diffusion, classifier, TRADES) and adversarial evaluation. Import from the submodules."""

"""Attacks as step transforms (``Step -> Step``): adversarial cells mixed into the grid and
global state perturbations."""

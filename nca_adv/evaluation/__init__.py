"""Evaluations of attacks: attack-success curves, perturbation sweeps, interpolation and
composition."""

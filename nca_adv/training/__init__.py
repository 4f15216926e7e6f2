"""Training: the engine (pure iterations, scanned chunks, vmapped sweeps), the trainers
declared as recipes, jobs built from plain settings, and the resumable host loop."""

"""nca-adv: adversarial reprogramming of Neural Cellular Automata, in JAX."""

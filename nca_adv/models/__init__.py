"""The cellular automata: perception, update networks, masks, the scanned rollout, and the
two models of the articles (the Growing CA and the Self-classifying MNIST CA)."""

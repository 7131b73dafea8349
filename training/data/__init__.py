"""Datasets: Fashion-MNIST, composite segmentation scenes, the King James Bible, paper-scale
loaders."""

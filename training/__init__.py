"""Training, datasets and studies: `neutreno train <task>`, the depth and robustness studies, the
GPU runs and their reports."""

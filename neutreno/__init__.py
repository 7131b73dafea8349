"""The `neutreno` command line: train, export, serve, bench."""

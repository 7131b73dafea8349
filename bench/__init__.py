"""Load and speed benchmarks (not tests): `neutreno bench <name> [options]`."""

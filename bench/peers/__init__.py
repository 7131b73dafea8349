"""Peer services for `neutreno bench peers`: the same classifier served by other stacks."""

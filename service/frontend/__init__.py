"""The HTTP front end: runs NEUTRENO_WORKERS times; reaches the engine only through the wire
types (service.wire, service.messages) and its client (service.frontend.client)."""

"""The engine: everything that touches ONNX Runtime, in one process per device (or several,
NEUTRENO_ENGINES).

`core.EngineCore` owns the loaded bundles, one dynamic batcher per vision model and one
generation scheduler per language model; `server.engine_main` serves it on a ZeroMQ socket with
per-batch and per-step replies (`service.wire`, types in `service.messages`). Front ends reach it
through `service.frontend.client` (`MPClient`, `EngineSet`, or `InprocClient` in the same
process). This package never imports `service.frontend`. docs/ARCHITECTURE.md draws the picture.
"""

"""The engine: everything that touches ONNX Runtime, in one place per device.

`core.EngineCore` owns the loaded bundles, one dynamic batcher per vision model and one
generation scheduler per language model. Front ends reach it through an `client.EngineClient`:
`InprocClient` (same process: tests, `create_app()` embedded in another program) or `MPClient`
(the engine in its own process, `server.serve_engine`, over ZeroMQ IPC with msgpack headers and
raw tensor frames, `wire`). docs/ARCHITECTURE.md draws the picture.
"""

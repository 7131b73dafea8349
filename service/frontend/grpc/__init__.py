"""The Open Inference Protocol over gRPC (KServe v2 `inference.GRPCInferenceService` with
Triton's repository extension) and `grpc.health.v1.Health`, served by every front end on
NEUTRENO_GRPC_PORT: server.py (server, health, drain, per-call metrics/logs/traces),
servicer.py (the RPCs on `ServiceState`), tensors.py (protobuf tensors through
service.frontend.oip), errors.py (service errors as gRPC statuses), inference.proto and its
generated inference_pb2 module (generate.py regenerates it). The app starts
`service.frontend.grpc.server.GrpcServer` in its lifespan."""

"""The Triton adapter: the gRPC client (engine.ports.InferenceBackend), model control, the model
repository layout and version policies, and the pass-through backend of the benchmarks."""

"""Streaming inference engine: micro-batching, the Triton client, settings and the CLI."""

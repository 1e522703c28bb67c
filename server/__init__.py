"""The gRPC service: bootstrap, routers of procedures, middleware, and the `studio` CLI."""

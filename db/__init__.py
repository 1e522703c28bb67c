"""Data layer: SQLAlchemy Core tables, queries, connections, and the migration runner.

Nothing here imports grpc: the transport lives in `server/`.
"""

//! Qdrant server VectorIndex for selfrag storage (qdrant-client, gRPC)

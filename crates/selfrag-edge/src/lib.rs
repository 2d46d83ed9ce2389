//! Embedded VectorIndex for selfrag storage: the Qdrant engine in-process (qdrant-edge)

"""image-embedder: turns image URIs published to Kafka into searchable vectors in Milvus."""

__version__ = "0.1.0"

"""Vector indexes: the only part of lookalike that imports a vector engine."""

from .faiss_index import FaissIndex, omp_threads
from .spec import AUTO_HNSW_THRESHOLD, IndexSpec, parse_spec

__all__ = ["AUTO_HNSW_THRESHOLD", "FaissIndex", "IndexSpec", "omp_threads", "parse_spec"]

"""Clustering for pseudo-labels: faiss k-means and the ODC memory (docs/algorithm.md §5)."""

from ssmix.clustering.kmeans import kmeans
from ssmix.clustering.odc import ODCMemory

__all__ = ["kmeans", "ODCMemory"]

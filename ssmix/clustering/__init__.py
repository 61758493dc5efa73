"""Clustering for pseudo-labels: faiss k-means and the ODC memory (spec 5)."""
from ssmix.clustering.kmeans import kmeans
from ssmix.clustering.odc import ODCMemory

__all__ = ["kmeans", "ODCMemory"]

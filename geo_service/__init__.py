"""Grid-governance map service for Heshan (鹤山市)."""

__version__ = "0.1.0"

"""Knowledge-graph-embedding training and evaluation jobs (LibKGE-style protocols)."""

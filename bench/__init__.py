"""Benchmarks of the nodesysctl operator on the dev cluster (`make bench`, docs/performance.md)."""

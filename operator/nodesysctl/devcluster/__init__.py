"""A real local Kubernetes control plane with simulated nodes, for tests and the demo only.

See docs/controlplane.md. Nothing in the operator imports this package.
"""

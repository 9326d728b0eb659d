"""A real local Kubernetes control plane with simulated nodes, for tests and the demo only.

See docs/controlplane.md. It sits at the repo root, outside the shipped ``nodesysctl`` package:
it runs pod commands as host processes and its pytest plugin needs pytest, neither of which
belongs in the operator's wheel or image. Nothing in ``nodesysctl`` imports it (import-linter).
"""

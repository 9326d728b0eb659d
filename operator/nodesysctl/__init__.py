"""nodesysctl: keep every node's ephemeral port range clear of the Service NodePort range."""

GROUP = "nodesysctl.io"
VERSION = "v1alpha1"
KIND = "NodeSysctlPolicy"
PLURAL = "nodesysctlpolicies"

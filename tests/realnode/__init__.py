"""The real-node lane: the built image and the shipped manifests on real kubelets."""

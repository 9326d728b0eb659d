"""Shared pytest setup: the dev cluster fixtures (devcluster, kubeconfig_path, api_client,
kubectl, crds_installed, test_id, test_namespace, node_factory) for every test directory.
See devcluster.pytest_plugin and docs/controlplane.md."""

pytest_plugins = ["devcluster.pytest_plugin"]

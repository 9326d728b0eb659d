"""The node agent: checks and corrects one node's port sysctls (`python -m nodesysctl.agent`).

Runs in a privileged, host-network pod; imports only the pure core, never kubernetes or kopf.
"""

"""Every label and annotation key of nodesysctl's contract with the cluster, in one place.

The operator writes these keys and trusts them when it reads them back; the dev cluster's
simulated kubelet and the tests import them from here instead of copying the strings.
"""

from __future__ import annotations

from nodesysctl import GROUP

# Our agent Jobs and their Pods (the operator's watches filter on these on the server).
LABEL_APP = "app.kubernetes.io/name"
AGENT_APP = "nodesysctl-agent"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "nodesysctl"
LABEL_POLICY = f"{GROUP}/policy"
LABEL_NODE_HASH = f"{GROUP}/node-hash"
LABEL_SPEC_HASH = f"{GROUP}/spec-hash"
ANNOTATION_NODE = f"{GROUP}/node"
ANNOTATION_REASON = f"{GROUP}/reason"
ANNOTATION_BOOT_ID = f"{GROUP}/boot-id"

# Set by the Job controller on the Pods of a Job (the second is the legacy spelling).
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"
LABEL_JOB_NAME_LEGACY = "job-name"

# On Nodes: one result per policy, `nodesysctl.io/result.<policy>`.
ANNOTATION_RESULT_PREFIX = f"{GROUP}/result."

# On workloads' pod templates: `kubectl rollout restart`'s stamp, and which wave set it.
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
RESTART_WAVE = f"{GROUP}/restart-wave"

# The default `restart.selector`: workloads opt in to restarts with this label set to "true".
LABEL_RESTART_OPT_IN = f"{GROUP}/restart"

# On Nodes: a taint whose key starts with this says the node is not verified yet (it registered
# with it and serves no workload until the operator removes it).
READINESS_TAINT_PREFIX = "nodesysctl.io/unverified"

"""A simulated kubelet for the dev cluster: one object serves every simulated node.

What it does, as a kubelet would (and what it does not):

* registers each node's Node object (capacity, allocatable, conditions, ``nodeInfo.bootID``,
  ``kubeletVersion``) and its Lease in ``kube-node-lease`` (:mod:`.leases`), then keeps the
  node Ready by renewing the Lease only, once per fixed period on the node's own phase, from a
  process of its own (:mod:`.heartbeats`, :mod:`.renewals`); a node's heartbeats can be paused
  (a hung kubelet) and resumed;
* watches every Node (:mod:`.readiness`): a node the node lifecycle controller marked
  ``Unknown`` gets its conditions posted again at once (Ready=True, KubeletReady, unless
  ``node.set_ready(False)`` said otherwise), as a real kubelet posts its status when it finds
  it changed; for a paused node, once it resumes. The controller then takes its
  ``unreachable``/``not-ready`` taints off itself;
* watches every pod (:mod:`.list_watch`) and takes those bound to its nodes (:mod:`.pod_runner`):

  - pods of agent Jobs (label ``app.kubernetes.io/name=nodesysctl-agent``) are RUN for real:
    each container's ``command + args`` (``python``/``python3`` replaced by this interpreter),
    inside the node's network namespace (``ip netns exec``), with hostPath mounts mapped into
    the node's host root, ``terminationMessagePath`` mapped to a per-pod file, and ``env``
    (including the downward API) (:mod:`.process`, pure). The pod goes Running, then
    Succeeded/Failed with ``state.terminated`` {exitCode, reason Completed/Error, message =
    termination file} (:mod:`.status`, pure); ``activeDeadlineSeconds`` kills a hung process
    (phase Failed, reason DeadlineExceeded);
  - any other pod becomes Running and Ready at once (no process), so rollouts complete;
  - a pod being deleted (``deletionTimestamp``) is killed and removed with grace 0.

* not simulated: images, probes, restarts (``restartPolicy`` is treated as Never for agent
  pods), resource enforcement, pod networking (non-hostNetwork pods get no pod IP), logs/exec
  through the API server. Every node's InternalIP is 127.0.0.1, so whatever the API server
  tries to reach on a "node" stays on this machine.

It uses the admin identity for all nodes (one process serves many nodes; the Node authorizer
would give each real kubelet only its own node). :class:`SimulatedKubelet`
(:mod:`.simulated`) ties the parts together.
"""

from .simulated import SimulatedKubelet

__all__ = ["SimulatedKubelet"]

"""Spec -> child manifests, as pure functions (no cluster access): the operator applies them,
tests dry-run them against a real API server.

``children(instance)`` lists every child an instance should have, in apply order, except the
admin-key Secret (generated once by the operator, never rebuilt) and the ServiceMonitor and
PodMonitor (only once their CRDs exist in the cluster).
"""

from putplace_operator.manifests import agent, api
from putplace_operator.manifests.common import Instance, Manifest

__all__ = ["Instance", "Manifest", "children"]


def children(i: Instance) -> list[Manifest]:
    out = [api.service_account(i), api.config_map(i), *api.volume_claims(i), api.deployment(i), api.service(i)]
    pdb = api.pod_disruption_budget(i)
    if pdb is not None:
        out.append(pdb)
    if (i.spec.get("metrics") or {}).get("serviceMonitor"):
        out.append(api.metrics_key(i))
    daemon_set = agent.daemon_set(i)
    if daemon_set is not None:
        out += [agent.agent_key(i), daemon_set]
    return out

#!/bin/sh
# The pod network of the test cluster, in place of kindnetd (whose image no registry here
# serves): the same DaemonSet of kind's default CNI manifest runs this on every node. It
# writes the ptp + host-local CNI config for the node's podCIDR, routes every other node's
# podCIDR through that node's InternalIP, and masquerades traffic that leaves the pod network.
set -eu
SA=/var/run/secrets/kubernetes.io/serviceaccount
API="https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}"
CONF=/etc/cni/net.d/10-kindnet.conflist

write_conf() {
    cat >"$CONF.tmp" <<JSON
{"cniVersion": "0.4.0", "name": "kindnet", "plugins": [
  {"type": "ptp", "ipMasq": false, "mtu": 1500,
   "ipam": {"type": "host-local", "dataDir": "/run/cni-ipam-state",
            "routes": [{"dst": "0.0.0.0/0"}], "ranges": [[{"subnet": "$1"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
    mv "$CONF.tmp" "$CONF"
    echo "CNI config written for $1"
}

rule="-s $POD_SUBNET ! -d $POD_SUBNET -j MASQUERADE"
# shellcheck disable=SC2086
iptables -w -t nat -C POSTROUTING $rule 2>/dev/null || iptables -w -t nat -A POSTROUTING $rule

while true; do
    if nodes=$(curl -sSf --cacert "$SA/ca.crt" -H "Authorization: Bearer $(cat "$SA/token")" "$API/api/v1/nodes"); then
        echo "$nodes" | jq -r '.items[] | select(.spec.podCIDR != null)
            | [(.status.addresses[] | select(.type == "InternalIP") | .address), .spec.podCIDR] | @tsv' |
        while read -r ip cidr; do
            if [ "$ip" = "$HOST_IP" ]; then
                grep -q "\"$cidr\"" "$CONF" 2>/dev/null || write_conf "$cidr"
            else
                ip route replace "$cidr" via "$ip"
            fi
        done
    fi
    sleep 5
done

#!/bin/sh
# iptables, ip6tables and their -save/-restore for the pod-network images (kube-proxy, the CNI
# daemon): run the backend (legacy or nf_tables) the node itself uses, as Kubernetes' own
# images do, since rules written through the other one would not mix with the kubelet's and
# kind's. The choice is made once, from which backend holds rules, and kept in /run.
set -eu
cache=/run/putplace-xtables-mode
if [ -s "$cache" ]; then
    mode=$(cat "$cache")
else
    legacy=$( (iptables-legacy-save; ip6tables-legacy-save) 2>/dev/null | grep -c '^-' || true)
    nft=$( (iptables-nft-save; ip6tables-nft-save) 2>/dev/null | grep -c '^-' || true)
    if [ "$legacy" -gt "$nft" ]; then mode=legacy; else mode=nft; fi
    echo "$mode" >"$cache" 2>/dev/null || true
fi
name=$(basename "$0")     # iptables, ip6tables-restore, ...
tool=${name%%-*}
exec "/usr/sbin/$tool-$mode${name#"$tool"}" "$@"

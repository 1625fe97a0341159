#!/bin/sh
# Open MPI's "remote shell" for hosts made of network namespaces on this
# machine (test/scripts/mpi_gpt.sh, docs/data_parallel.md):
#   netns_agent.sh ADDRESS COMMAND...
# Open MPI's rsh launcher calls its agent (plm_rsh_agent) as ssh would be
# called: a host, then a command line for that host's shell. Here the host
# is an IPv4 address, and the command runs in the network namespace that
# has an interface with that address -- the part ssh would do on a real
# cluster. Needs root (ip netns exec). Only the namespaces whose names start
# with $TB_NETNS_PREFIX are considered (the caller's own, so that another
# run's namespaces with the same addresses are never picked).
set -u
[ $# -ge 2 ] || { echo "usage: netns_agent.sh ADDRESS COMMAND..." >&2; exit 2; }
[ -n "${TB_NETNS_PREFIX:-}" ] || { echo "netns_agent.sh: TB_NETNS_PREFIX is not set" >&2; exit 2; }
host=$1
shift
for ns in $(ip netns list | awk '{print $1}'); do
    case $ns in "$TB_NETNS_PREFIX"*) ;; *) continue ;; esac
    if ip -n "$ns" -4 -o addr show 2>/dev/null | grep -q " inet $host/"; then
        exec ip netns exec "$ns" sh -c "$*"
    fi
done
echo "netns_agent.sh: no network namespace $TB_NETNS_PREFIX* has the address $host" >&2
exit 255

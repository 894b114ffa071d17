#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine, run as root: the Debian packages the lab drives,
# a venv that sees Debian's mininet (it lives in /usr/bin/python3's packages), the lab installed
# into it, and Open vSwitch's daemons running (userspace datapath; no kernel module is needed).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (the lab creates namespaces, bridges and daemons)" >&2
    exit 2
fi

# What the lab runs (lab/net/preflight.py names each one's package when it is missing, and a unit
# test keeps the two lists in step), what shows a run (tshark: `ikelab wireshark`;
# chromium: the tests open a run's page in it), then what building the venv needs.
packages=(mininet openvswitch-switch
          strongswan-charon strongswan-libcharon strongswan-swanctl strongswan-pki
          libstrongswan libstrongswan-standard-plugins libcharon-extra-plugins
          iproute2 iptables nftables ethtool tcpdump iperf3 iputils-ping procps coreutils
          tshark chromium
          python3-venv python3-dev gcc libnetfilter-queue-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian package enables the daemons; they may still be down (containers, fresh boots).
# If they cannot be started, `ikelab` says so in one line before it builds anything.
if command -v ovs-vsctl >/dev/null && ! ovs-vsctl --timeout=5 show >/dev/null 2>&1; then
    echo "setup.sh: starting Open vSwitch"
    /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random >/dev/null 2>&1 ||
        echo "setup.sh: Open vSwitch did not start" >&2
fi

build_needs="python3-venv python3-dev gcc libnetfilter-queue-dev"
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv ||
        { echo "setup.sh: could not make .venv; it needs $build_needs" >&2; exit 1; }
fi
stamp=.venv/.ikelab-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    if ! log=$(.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1); then
        echo "$log" | tail -n 20 >&2
        echo "setup.sh: pip could not install the lab into .venv (above); building" \
             "netfilterqueue needs $build_needs" >&2
        exit 1
    fi
    touch "$stamp"
fi

# Bash completion of `ikelab` (commands, options, choices) in new shells, through argcomplete.
# bash-completion reads /etc/bash_completion.d; without that package, say how to load it.
completion=/etc/bash_completion.d/ikelab
if [ -f /usr/share/bash-completion/bash_completion ]; then
    mkdir -p /etc/bash_completion.d
    .venv/bin/register-python-argcomplete ikelab > "$completion.tmp" && mv "$completion.tmp" "$completion"
else
    echo "setup.sh: for bash completion: eval \"\$(.venv/bin/register-python-argcomplete ikelab)\""
fi

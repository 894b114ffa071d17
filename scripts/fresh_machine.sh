#!/usr/bin/env bash
# fresh_machine.sh: prove that the README's first command works on a brand-new Debian 12.
#
#   scripts/fresh_machine.sh [--keep-root] [--command 'CMD']
#
# It builds a bare Debian 12 root (debootstrap --variant=minbase), copies this checkout into it
# (tracked files plus untracked, non-ignored ones: uncommitted work is tested too; never .venv)
# and runs, as root, from the copy:   ./scripts/setup.sh && .venv/bin/ikelab run
# It exits with that command's status. Nothing from the host's packages or venv reaches the root,
# so a Debian package or a Python dependency that setup.sh forgets to install fails here.
#
# The traps it steps around:
# - Not a chroot. Mininet's `mnexec -a PID` joins a node's mount namespace, which resets the
#   process root to that namespace's root: inside a plain chroot every node.popen escapes to the
#   host's / ("cwd: No such file or directory"). So the fresh root becomes the real root of its
#   own mount namespace (unshare --mount, bind it on itself, pivot_root, drop the old root).
# - A PID namespace of its own (unshare --pid --fork, with its own /proc). setup.sh starts Open
#   vSwitch's daemons and the lab starts charons and agents; when the command ends, the kernel
#   kills whatever is left in the namespace, so nothing started inside outlives the check, and
#   nothing inside can see (or kill) a host process.
# - The root shares the host's network namespace (apt and pip need the network; OVS bridge and
#   interface names are global there, so only one lab per machine: hence the lab lock). The
#   userspace datapath's tap devices (one per bridge, plus ovs-netdev) are persistent: killing
#   ovs-vswitchd, or even `ovs-ctl stop`, leaves them in the host's namespace. So before leaving,
#   the inside deletes any bridge its own Open vSwitch still has (a failure: the lab should have
#   removed them), then stops Open vSwitch cleanly. Ctrl-C reaches the command through the process
#   group, while unshare ignores it and keeps the namespace alive until that cleanup is done.
#   At the end, any lab-like interface new in the host's namespace fails the check.
# - The network goes through this machine's CA and registry settings: without its CA bundle
#   (/etc/ssl/certs/ca-certificates.crt, /usr/local/share/ca-certificates/*) and pip config,
#   pip fails on TLS. Those, the apt sources/proxy settings, resolv.conf and hosts are copied in,
#   PIP_* and proxy variables are passed through; the command otherwise gets a clean environment.
# - /run and /tmp are fresh tmpfs (a booted machine's), /dev/pts a fresh devpts instance.
set -uo pipefail

prog=fresh_machine.sh
say() { printf '%s: [%4ds] %s\n' "$prog" "$SECONDS" "$*" >&2; }
die() { say "$*"; exit 1; }

usage() {
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
    echo "  --keep-root     keep the Debian root under /var/tmp for inspection" >&2
    echo "  --command CMD   run CMD (through bash -c) in the checkout instead of the README's" >&2
    exit 2
}

keep_root=0
command='./scripts/setup.sh && .venv/bin/ikelab run'
while [ $# -gt 0 ]; do
    case "$1" in
        --keep-root) keep_root=1 ;;
        --command) [ $# -ge 2 ] || usage; command=$2; shift ;;
        --command=*) command=${1#--command=} ;;
        -h|--help) usage ;;
        *) echo "$prog: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$(id -u)" -ne 0 ]; then
    echo "$prog: run as root (it builds a Debian root and runs the lab in it)" >&2
    exit 2
fi
checkout=$(cd "$(dirname "$0")/.." && pwd) || exit 2
git -C "$checkout" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
    { echo "$prog: $checkout is not a git checkout" >&2; exit 2; }

if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap \
        >/dev/null || die "apt-get install debootstrap failed"
fi

# One lab per machine: the lab takes the same lock (flock on this file) for its whole run.
# Opened without truncating, so a holder's description survives our failed attempt.
exec 9<>/run/ikelab.lock
if ! flock -n 9; then
    echo "$prog: another ikelab lab is running on this machine ($(head -n1 /run/ikelab.lock | cut -c1-200))" >&2
    exit 2
fi

# Interfaces a lab would leave in the host's network namespace.
lab_ifaces='^(ikex.*|ikei.*|m[0-9]+-eth.*|p[0-9]+-eth.*|h[0-9]+-eth.*|hc-eth.*|r1-eth.*|ovs-netdev)$'
list_ifaces() { ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | sort; }
host_bridges() { ovs-vsctl --timeout=5 list-br 2>/dev/null | sort; }
ifaces_before=$(list_ifaces)
bridges_before=$(command -v ovs-vsctl >/dev/null && host_bridges)

root=''
status=''   # the command's exit status, once it has run
procs_in_root() {   # host PIDs of the processes whose root directory is in the Debian root
    local p
    for p in /proc/[0-9]*; do
        case "$(readlink "$p/root" 2>/dev/null)" in "$root"|"$root"/*) echo "${p#/proc/}" ;; esac
    done
}
mounts_under_root() {   # deepest first
    awk -v r="$root" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}
finish() {
    local rc=$? left pids m i
    trap - EXIT INT TERM
    status=${status:-$rc}
    # Whatever still runs in the root (an interrupted debootstrap's dpkg, or the inside still
    # stopping Open vSwitch) goes first: the checks below are about after the run.
    if [ -n "$root" ]; then
        for i in $(seq 180); do
            pids=$(procs_in_root)
            [ -z "$pids" ] && break
            [ "$i" -eq 1 ] && say "waiting for the processes still in the root to end"
            sleep 0.5
        done
    fi
    # Lab leftovers in the host's network namespace, or on the host's own Open vSwitch.
    left=$(comm -13 <(echo "$ifaces_before") <(list_ifaces) | grep -E "$lab_ifaces")
    if [ -n "$left" ]; then
        say "FAIL: left behind in the host's network namespace: $(echo $left)"
        [ "$status" -eq 0 ] && status=1
    fi
    if command -v ovs-vsctl >/dev/null; then
        left=$(comm -13 <(echo "$bridges_before") <(host_bridges))
        if [ -n "$left" ]; then
            say "FAIL: new bridges on the host's Open vSwitch: $(echo $left)"
            [ "$status" -eq 0 ] && status=1
        fi
    fi
    if [ -n "$root" ]; then
        rm -f "$root.debootstrap.log"
        if [ "$keep_root" -eq 1 ]; then
            say "root kept at $root"
        elif [ -n "$pids" ]; then
            say "root kept at $root: processes still run in it: $(echo $pids)"
        else
            # The inside's mounts lived in its own namespace and went with it; an interrupted
            # debootstrap may leave its proc/sys mounts here, ours to drop. Never rm across one.
            for m in $(mounts_under_root); do umount "$m" 2>/dev/null || umount -l "$m"; done
            if [ -n "$(mounts_under_root)" ]; then
                say "root kept at $root: something is still mounted under it"
            else
                rm -rf --one-file-system "$root"
            fi
        fi
    fi
    : >/run/ikelab.lock   # the description goes with the lock (released at exit)
    say "exit $status"
    exit "$status"
}
trap finish EXIT
trap 'say "interrupted"; status=130; exit 130' INT TERM

# The mirror this machine's apt uses for Debian's main suite.
mirror_uri() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
             { t = ""; u = ""; s = ""; on = "yes"
               for (i = 1; i <= NF; i++) {
                   if ($i ~ /^[ \t]*#/) continue
                   split($i, kv, ":"); k = tolower(kv[1]); v = substr($i, length(kv[1]) + 2)
                   if (k == "types") t = v; else if (k == "uris") u = v
                   else if (k == "suites") s = v; else if (k == "enabled") on = v }
               if (t ~ /(^|[ \t])deb([ \t]|$)/ && (" " s " ") ~ /[ \t]bookworm[ \t]/ &&
                   on !~ /no/) { split(u, a, " "); print a[1]; exit } }' "$f"
    done
    sed -n -E 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+bookworm[[:space:]].*/\2/p' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
}
mirror=$(mirror_uri | grep -E '^https?://' | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /var/tmp/ikelab-fresh.XXXXXX) || die "mktemp failed"
chmod 755 "$root"
echo "fresh-machine check, pid $$, root $root, checkout $checkout" >/run/ikelab.lock

say "debootstrap bookworm (minbase) from $mirror into $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 9>&- ||
    { tail -n 20 "$root.debootstrap.log" >&2; die "debootstrap failed"; }

say "copying this machine's apt, DNS, CA and pip settings into the root"
copy_in() {   # copy_in HOST-PATH...: each to the same path inside the root, if it exists
    local p
    for p in "$@"; do
        if [ -d "$p" ]; then
            mkdir -p "$root$p" && cp -rL "$p/." "$root$p/"
        elif [ -e "$p" ]; then
            mkdir -p "$root$(dirname "$p")" && cp -L --remove-destination "$p" "$root$p"
        fi || die "cannot copy $p into the root"
    done
}
# debootstrap wrote its own sources.list: the root gets the machine's sources instead, only.
rm -f "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/*
copy_in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        /etc/apt/trusted.gpg.d/* /etc/apt/keyrings/*
# Keyrings named by Signed-By that a bare Debian lacks (a third-party repository's).
for k in $(sed -n -E 's/^Signed-By:[[:space:]]*(\/[^[:space:]]+).*/\1/p; s/.*signed-by=(\/[^] ,]+).*/\1/p' \
               /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
               /etc/apt/sources.list.d/*.sources 2>/dev/null | sort -u); do
    [ -e "$root$k" ] || copy_in "$k"
done
copy_in $(grep -lis proxy /etc/apt/apt.conf /etc/apt/apt.conf.d/*)
copy_in /etc/resolv.conf /etc/hosts /etc/ssl/certs/ca-certificates.crt \
        /usr/local/share/ca-certificates /etc/pip.conf /etc/xdg/pip /root/.config/pip/pip.conf

say "copying the checkout $checkout (tracked and untracked, non-ignored files) to /root/ikelab"
mkdir -p "$root/root/ikelab"
git -C "$checkout" ls-files -co --exclude-standard -z |
    while IFS= read -r -d '' f; do   # skip tracked files deleted in the working tree
        case "$f" in .venv|.venv/*) continue ;; esac
        { [ -e "$checkout/$f" ] || [ -L "$checkout/$f" ]; } && printf '%s\0' "$f"
    done | tar -C "$checkout" --null -T - -cf - | tar -C "$root/root/ikelab" -xf - ||
    die "copying the checkout failed"

# The command's environment: what a root login on a fresh machine has, plus pip and proxy
# settings (pip's certificate and timeout settings live in PIP_* variables on some machines).
envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root USER=root
      LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 "TERM=${TERM:-dumb}")
for v in $(compgen -e); do
    case "$v" in
        PIP_*|http_proxy|https_proxy|no_proxy|HTTP_PROXY|HTTPS_PROXY|NO_PROXY) envs+=("$v=${!v}") ;;
    esac
done

# Runs in a new mount and PID namespace (as its PID 1), still in the host's network namespace.
inside() {
    local root=$1 command=$2 t0=$3 status; shift 3
    say() { printf 'fresh_machine.sh: [%4ds] %s\n' "$((EPOCHSECONDS - t0))" "$*" >&2; }
    set -e
    mount --bind "$root" "$root"
    cd "$root"
    mount -t proc proc proc
    mount --rbind /sys sys
    mount --rbind /dev dev
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts dev/pts
    [ -L dev/ptmx ] || mount --bind dev/pts/ptmx dev/ptmx
    mount -t tmpfs -o mode=0755 tmpfs run
    mount -t tmpfs -o mode=1777 tmpfs tmp
    mkdir -p .oldroot run/lock
    pivot_root . .oldroot
    cd /
    umount -l /.oldroot
    rmdir /.oldroot
    cd /root/ikelab
    set +e
    # Ctrl-C reaches the command (same process group); stay alive to stop Open vSwitch after it.
    trap 'say "interrupted (inside)"' INT TERM
    env -i "$@" bash -c "$command"
    status=$?
    trap - INT TERM
    if ovs-vsctl --timeout=5 show >/dev/null 2>&1; then
        bridges=$(ovs-vsctl --timeout=5 list-br)
        if [ -n "$bridges" ]; then
            say "FAIL: the command left Open vSwitch bridges: $(echo $bridges)"
            for b in $bridges; do ovs-vsctl --timeout=10 --if-exists del-br "$b"; done
            [ "$status" -eq 0 ] && status=1
        fi
        say "stopping the root's Open vSwitch"
        timeout 60 /usr/share/openvswitch/scripts/ovs-ctl stop >/dev/null 2>&1 ||
            say "ovs-ctl stop failed"
    fi
    return "$status"
}

say "running inside the root, in /root/ikelab: $command"
echo "----- 8< ----- output of the command" >&2
# unshare ignores Ctrl-C and SIGTERM (they reach the command through the process group): it
# must stay until the inside has stopped Open vSwitch, or the namespace would be killed early.
(
    trap '' INT TERM
    exec unshare --mount --pid --fork --propagation private -- env --default-signal=INT,TERM \
        bash -c "$(declare -f inside); inside \"\$@\"" inside "$root" "$command" \
        "$((EPOCHSECONDS - SECONDS))" "${envs[@]}"
) 9>&-
status=$?
echo "----- >8 -----" >&2
say "the command exited $status"
exit "$status"

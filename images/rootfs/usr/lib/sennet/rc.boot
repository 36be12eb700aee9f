#!/bin/sh
# Stage 2 set-up (busybox init's sysinit): filesystems, state partition,
# provisioning, network. Logs key=value lines to the console.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
log() { echo "sennet-init: $*"; }

# /run comes from the initramfs (it found the partitions); a tmpfs if booted otherwise.
grep -q '^[^ ]* /run ' /proc/mounts || mount -t tmpfs -o mode=0755,nosuid,nodev run /run
mkdir -p /run/sennet /run/root /run/dropbear /dev/pts
chmod 0700 /run/root
mount -t tmpfs -o mode=1777,nosuid,nodev tmp /tmp
mount -t devpts -o mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t bpf -o mode=0700 bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
hostname sennet
. /usr/lib/sennet/settings.sh

# The kernel log holds the boot command line, bootstrap token included (it is hidden from
# /proc/cmdline below, but dmesg keeps the kernel's own copy): only root (CAP_SYSLOG) may
# read it, set before the agent, which runs as its own user, ever starts.
echo 1 > /proc/sys/kernel/dmesg_restrict && log "event=sysctl key=kernel.dmesg_restrict value=1"

# partition ROLE: the device the initramfs found by this build's GPT GUID for ROLE.
partition() {
    [ -f /run/sennet/partitions ] || return 1
    d=$(setting "$1" /run/sennet/partitions)
    case "$d" in /dev/[a-z]*) case "$d" in /dev/*[!a-z0-9]*) return 1;; esac ;; *) return 1;; esac
    echo "$d"
}

# EFI system partition: read-only source of provisioning files (data only, see settings.sh).
mkdir -p /run/esp
if esp=$(partition esp) && mount -t vfat -o ro,nodev,nosuid,noexec,fmask=0177,dmask=0077 "$esp" /run/esp; then
    log "event=esp_mounted dev=$esp"
fi

# Writable state partition: the build made it ext4 with a journal; one found wiped is
# formatted again (as ext2: busybox mke2fs makes no journal).
if state=$(partition state); then
    magic=$(dd if="$state" bs=1 skip=1080 count=2 2>/dev/null | hexdump -e '1/2 "%04x"')
    if [ "$magic" != "ef53" ]; then
        log "event=state_format dev=$state first_boot=1"
        mke2fs -q -L sennet-state "$state" >/dev/null || log "event=state_format_failed dev=$state"
    fi
    mount -t ext4 -o noatime,nodev,nosuid "$state" /var/lib/sennet && log "event=state_mounted dev=$state"
else
    log "event=state_missing why=no_partition_with_this_builds_guid using=tmpfs"
    mount -t tmpfs -o mode=0700 state /var/lib/sennet
fi
mkdir -p /var/lib/sennet/etc

# First-boot provisioning: a config on the ESP is copied once to the state partition
# (a regular file only; the agent parses it as TOML against its settings table).
if [ -f /run/esp/sennet/agent.toml ] && [ ! -L /run/esp/sennet/agent.toml ] &&
    [ ! -f /var/lib/sennet/etc/agent.toml ]; then
    cp /run/esp/sennet/agent.toml /var/lib/sennet/etc/agent.toml.tmp &&
        chmod 0600 /var/lib/sennet/etc/agent.toml.tmp &&
        mv /var/lib/sennet/etc/agent.toml.tmp /var/lib/sennet/etc/agent.toml &&
        log "event=provisioned source=esp:sennet/agent.toml"
fi

# Settings: ESP sennet/network.env, then sennet.KEY=VALUE on the kernel command line (which
# wins), each checked as data. Rejected and unknown entries are logged, never run.
settings=/run/sennet/settings
: > "$settings"
chmod 0600 "$settings"
if [ -f /run/esp/sennet/network.env ]; then
    settings_from_env_file esp:sennet/network.env < /run/esp/sennet/network.env >> "$settings"
fi
settings_from_cmdline < /proc/cmdline >> "$settings"

# Counting before Python: the agent's plan from its last start (root's, on the state
# partition) is loaded and attached by sennet-early-attach while this script goes on; the
# agent adopts what it attached (python/sennet/agent/datapath/early.py). It follows only a
# plan this image made for this object, and leaves nothing behind when it fails.
# `early_attach=off` (ESP network.env or the command line) leaves it to the agent.
early_pid=""
plan=/var/lib/sennet/early-attach.plan
if [ "$(setting early_attach "$settings")" = off ]; then
    log "event=early_attach_off source=settings"
elif [ -f "$plan" ] && [ -x /opt/sennet/bin/sennet-early-attach ]; then
    /opt/sennet/bin/sennet-early-attach "$plan" /opt/sennet/bpf/sennet_tc.bpf.o \
        /run/sennet/early-attach.applied "$(setting image_digest "$settings")" &
    early_pid=$!
fi

# The agent's overrides (SENNET_* environment, read as data by supervise-agent).
: > /run/sennet/agent.env
chmod 0600 /run/sennet/agent.env
for key in control_plane bootstrap_token interfaces tls_server_name metrics_listen log_level interval_s \
        otlp_endpoints; do
    v=$(setting "$key" "$settings")
    if [ -n "$v" ]; then
        upper=$(echo "$key" | tr a-z A-Z)
        printf 'SENNET_%s=%s\n' "$upper" "$v" >> /run/sennet/agent.env
        [ "$key" = bootstrap_token ] && v="(set)"
        log "event=provisioned source=cmdline key=$key value=$v"
    fi
done

# This boot's image identity, for the agent's heartbeat and the updater: the slot the
# initramfs mounted, the version and digest the booted UKI's command line carries.
booted=$(setting slot /run/sennet/partitions 2>/dev/null)
case "$booted" in a | b) ;; *) booted=$(setting slot "$settings"); booted=${booted:-a};; esac
printf 'SENNET_SLOT=%s\nSENNET_IMAGE_VERSION=%s\nSENNET_IMAGE_DIGEST=%s\n' "$booted" \
    "$(setting version "$settings")" "$(setting image_digest "$settings")" > /run/sennet/image.env.tmp &&
    chmod 0644 /run/sennet/image.env.tmp && mv /run/sennet/image.env.tmp /run/sennet/image.env &&
    log "event=image slot=$booted version=$(setting version "$settings")"

# The bootstrap token now sits only in /run/sennet/agent.env (0600): /proc/cmdline, readable
# by every process, shows a copy without it for the rest of this boot.
set -f
if grep -q 'sennet\.bootstrap_token=' /proc/cmdline; then
    clean=""
    for w in $(cat /proc/cmdline); do
        case "$w" in sennet.bootstrap_token=*) ;; *) clean="$clean${clean:+ }$w";; esac
    done
    printf '%s\n' "$clean" > /run/sennet/cmdline
    chmod 0444 /run/sennet/cmdline
    mount --bind /run/sennet/cmdline /proc/cmdline &&
        log "event=cmdline_sanitized removed=bootstrap_token"
fi
set +f

# Network: management NIC by DHCP (default) or static; every other NIC up, unaddressed, no IPv6.
MGMT_IF=$(setting mgmt_if "$settings"); MGMT_IF=${MGMT_IF:-eth0}
IP=$(setting ip "$settings"); IP=${IP:-dhcp}
GW=$(setting gw "$settings")
DNS=$(setting dns "$settings")
ip link set lo up
ip link set "$MGMT_IF" up
if [ "$IP" = dhcp ]; then
    udhcpc -i "$MGMT_IF" -s /usr/lib/sennet/udhcpc.script -b -q -t 4 -T 1 -A 5 >/dev/null 2>&1 &
    log "event=dhcp_started ifname=$MGMT_IF"
else
    ip addr add "$IP" dev "$MGMT_IF"
    [ -n "$GW" ] && ip route add default via "$GW"
    [ -n "$DNS" ] && echo "nameserver $DNS" > /run/resolv.conf
    log "event=static_ip ifname=$MGMT_IF addr=$IP gw=$GW"
fi
# The monitored NICs come up once the boot-time programs are on them (when there are):
# their counters then match the kernel's own from the first frame.
[ -n "$early_pid" ] && wait "$early_pid"
for dev in /sys/class/net/*; do
    name=${dev##*/}
    case "$name" in lo|"$MGMT_IF") continue;; esac
    echo 1 > "/proc/sys/net/ipv6/conf/$name/disable_ipv6" 2>/dev/null
    # Promiscuous: a mirror or tap port carries other hosts' frames, which the NIC's
    # address filter would otherwise drop before TC ever sees them.
    ip link set "$name" promisc on
    ip link set "$name" up && log "event=link_up ifname=$name role=monitored promisc=on"
done

# Test variant only: its overlay partition brings an SSH server.
[ -x /opt/sennet-test/rc.test ] && /opt/sennet-test/rc.test
log "event=boot_done uptime=$(cut -d' ' -f1 /proc/uptime)"

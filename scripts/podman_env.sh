# Sourced by scripts that build or run containers (build_map.sh, fresh_machine_check.sh).
#
# Podman on Debian 12 as root, set up for machines with hybrid cgroups and no default ulimits:
# runc (crun fails there), the cgroupfs manager and `[containers] default_ulimits = []`
# (podman's default nofile/nproc limits fail on setrlimit). Provides:
#   PODMAN                  the podman command line with those settings (a bash array)
#   podman_install          installs podman, buildah, runc and debootstrap from apt if missing
#   podman_base_image NAME  makes NAME, a Debian 12 image from Debian's packages
#                           (debootstrap --variant=minbase bookworm), unless it exists; the root
#                           file system is cached in $TAGS_BASE_CACHE (build/container-base)
#   host_ca_bundle          the host's CA bundle (TLS-intercepting proxies: pip inside a
#                           container must trust what the host trusts)

PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
: "${TAGS_BASE_CACHE:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build/container-base}"

_podman_stamp() { echo "[podman] $(date +%H:%M:%S) $*" >&2; }

podman_install() {
    local need=()
    command -v podman >/dev/null || need+=(podman)
    command -v buildah >/dev/null || need+=(buildah)
    command -v runc >/dev/null || need+=(runc)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    if [ ${#need[@]} -gt 0 ]; then
        [ "$(id -u)" -eq 0 ] || { echo "error: podman is not installed; run as root to install ${need[*]}" >&2; return 1; }
        _podman_stamp "apt-get install ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
    fi
    mkdir -p /etc/containers
    if ! grep -q "default_ulimits" /etc/containers/containers.conf 2>/dev/null; then
        printf '[containers]\ndefault_ulimits = []\n' >> /etc/containers/containers.conf
    fi
}

podman_base_image() {
    local name=$1
    if "${PODMAN[@]}" image exists "$name"; then
        return 0
    fi
    mkdir -p "$TAGS_BASE_CACHE"
    if [ ! -f "$TAGS_BASE_CACHE/rootfs.tar" ]; then
        _podman_stamp "debootstrap --variant=minbase bookworm"
        rm -rf "$TAGS_BASE_CACHE/rootfs"
        debootstrap --variant=minbase bookworm "$TAGS_BASE_CACHE/rootfs" >/dev/null
        tar -C "$TAGS_BASE_CACHE/rootfs" -cf "$TAGS_BASE_CACHE/rootfs.tar.part" .
        mv "$TAGS_BASE_CACHE/rootfs.tar.part" "$TAGS_BASE_CACHE/rootfs.tar"
        rm -rf "$TAGS_BASE_CACHE/rootfs"
    fi
    _podman_stamp "podman import $name"
    "${PODMAN[@]}" import "$TAGS_BASE_CACHE/rootfs.tar" "$name" >/dev/null
}

host_ca_bundle() {
    local f
    for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
        [ -f "$f" ] && { echo "$f"; return 0; }
    done
    return 1
}

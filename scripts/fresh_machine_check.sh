#!/usr/bin/env bash
# Check the README's two commands on a stock Debian 12 system, in a clean container.
#
#   sudo bash scripts/fresh_machine_check.sh [--skip-tests]
#   sudo TEST_ARGS="-k orthanc" bash scripts/fresh_machine_check.sh   # a part of the suite (pytest args)
#
# 1. installs podman, runc and debootstrap from apt if missing, and sets podman up for machines
#    with hybrid cgroups and no default ulimits (runc, cgroupfs, default_ulimits = []);
# 2. makes a Debian 12 root file system with `debootstrap --variant=minbase bookworm` (cached in
#    build/container-base/rootfs.tar) and imports it as the image tags-debian12-minbase
#    (scripts/podman_env.sh, shared with scripts/build_map.sh);
# 3. copies the committed repository (git archive HEAD: what a fresh clone holds) into a new
#    container, installs only what a user would have (python3, git, ca-certificates), then runs
#    `bash scripts/demo.sh` and `bash scripts/test.sh` exactly as the README gives them;
# 4. prints each step's time and writes build/fresh-machine/result.json.
#
# The host's CA bundle is copied into the container (TLS-intercepting proxies); nothing else of
# the host is visible inside. The container runs --privileged: the PACS test makes its own
# network namespace (unshare --net), which root may do on a Debian machine but not inside an
# unprivileged container. Needs root (podman as root), network access to the Debian and
# PyPI registries, and about 15 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
WORK=$REPO/build/fresh-machine
RUN_TESTS=1
[ "${1:-}" = "--skip-tests" ] && RUN_TESTS=0
mkdir -p "$WORK"
t_start=$(date +%s)
stamp() { echo "[fresh] $(date +%H:%M:%S) $*"; }

source scripts/podman_env.sh
podman_install
t0=$(date +%s)
podman_base_image tags-debian12-minbase
t_base=$(( $(date +%s) - t0 ))
stamp "base image ready in ${t_base} s"

rm -rf "$WORK/repo"
mkdir -p "$WORK/repo"
git -C "$REPO" archive HEAD | tar -x -C "$WORK/repo"
cp "$(host_ca_bundle)" "$WORK/host-ca.crt"
cat > "$WORK/inside.sh" <<'EOF'
#!/bin/bash
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
t0=$(date +%s)
apt-get update -q >/dev/null
apt-get install -y -q python3 git ca-certificates >/dev/null
cat /work/host-ca.crt >> /etc/ssl/certs/ca-certificates.crt
export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
echo "user packages: $(( $(date +%s) - t0 )) s" > /work/times.txt
cp -r /work/repo /root/tags && cd /root/tags
t1=$(date +%s)
bash scripts/demo.sh 2>&1 | tee /work/demo.log
echo "demo: $(( $(date +%s) - t1 )) s" >> /work/times.txt
if [ "${RUN_TESTS:-1}" = 1 ]; then
    t2=$(date +%s)
    bash scripts/test.sh ${TEST_ARGS:-} 2>&1 | tee /work/test.log | tail -n 5
    echo "tests: $(( $(date +%s) - t2 )) s" >> /work/times.txt
fi
EOF
stamp "running the README's commands in a fresh Debian 12 container"
t0=$(date +%s)
"${PODMAN[@]}" run --rm --privileged --network host -e RUN_TESTS=$RUN_TESTS -e TEST_ARGS="${TEST_ARGS:-}" -v "$WORK:/work" tags-debian12-minbase bash /work/inside.sh
t_run=$(( $(date +%s) - t0 ))
cat "$WORK/times.txt"
commit=$(git -C "$REPO" rev-parse --short HEAD)
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
summary=$(tail -n 3 "$WORK/test.log" 2>/dev/null | grep -E "passed|failed" | tail -n 1 || true)
cat > "$WORK/result.json" <<JSON
{"date": "$(date +%F)", "commit": "$commit", "cpu": "$cpu", "nproc": $(nproc),
 "base_image_s": $t_base, "container_run_s": $t_run, "times": "$(tr '\n' ';' < "$WORK/times.txt")",
 "tests": "$summary", "total_s": $(( $(date +%s) - t_start ))}
JSON
cat "$WORK/result.json"

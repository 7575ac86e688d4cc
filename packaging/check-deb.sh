#!/usr/bin/env bash
# Checks the Debian package built by `cargo deb -p reelspool`, as CI does (.ci/run):
#   1. its file list (dpkg-deb -c) holds the binary, the unit, sysusers, tmpfiles, the config;
#   2. it installs (dpkg -i), and its postinst created the user, the groups and the directories
#      with the owners and modes the unit and README rely on;
#   3. `systemd-analyze verify` passes on every unit in systemd/, with no warning at all (it
#      exits 0 on many of them), now that /usr/bin/reelspool exists.
# Step 2 changes the machine it runs on: run it in CI or in a throwaway container.
set -euo pipefail
cd "$(dirname "$0")/.."

deb="${1:-$(ls -t target/debian/reelspool_*.deb | head -n 1)}"
echo "checking $deb"

listing="$(dpkg-deb -c "$deb")"
for path in \
    ./usr/bin/reelspool \
    ./usr/lib/systemd/system/reelspool.service \
    ./usr/lib/sysusers.d/reelspool.conf \
    ./usr/lib/tmpfiles.d/reelspool.conf \
    ./etc/reelspool/reelspool.yaml \
    ./usr/share/reelspool/templates/jobs/lowmem-24g.yaml \
    ./usr/share/reelspool/templates/profiles/liveavatar-14b.yaml \
    ./usr/share/reelspool/examples/hello.yaml \
    ./usr/share/reelspool/engines/python/reelspool_engine.py \
    ./usr/share/reelspool/engines/python/example_engine.py \
    ./usr/share/reelspool/prometheus/reelspool-alerts.yml \
    ./usr/share/reelspool/grafana/reelspool-dashboard.json \
    ./usr/share/doc/reelspool/README.md; do
    if ! grep -q " ${path}\$" <<<"$listing"; then
        echo "missing from the package: $path" >&2
        exit 1
    fi
done
# $auto worked (cargo-deb found dpkg-shlibdeps): the FFmpeg libraries are dependencies.
dpkg-deb -f "$deb" Depends | grep -q libavcodec
dpkg-deb -f "$deb" Depends | grep -q systemd
dpkg-deb -I "$deb" postinst | grep -q systemd-sysusers
dpkg-deb -I "$deb" postinst | grep -q "systemd-tmpfiles --create"
echo "file list ok"

dpkg -i "$deb"
getent passwd reelspool >/dev/null
getent group reelspool-submit | grep -q reelspool
expect_dir() { # path mode owner group
    local got
    got="$(stat -c '%a %U %G' "$1")"
    if [ "$got" != "$2 $3 $4" ]; then
        echo "$1: want $2 $3 $4, got $got" >&2
        exit 1
    fi
}
expect_dir /var/spool/reelspool/incoming 3770 reelspool reelspool-submit
expect_dir /var/spool/reelspool/tmp 3770 reelspool reelspool-submit
expect_dir /var/spool/reelspool/processing 750 reelspool reelspool
expect_dir /var/lib/reelspool/jobs 2750 reelspool reelspool-submit
expect_dir /var/log/reelspool 2750 reelspool adm
expect_dir /etc/reelspool/credentials 700 root root
/usr/bin/reelspool --config /etc/reelspool/reelspool.yaml check-config
# The shipped alert rules load as installed.
if command -v promtool >/dev/null; then
    promtool check rules /usr/share/reelspool/prometheus/reelspool-alerts.yml
fi
echo "install ok"

shopt -s nullglob
units=(systemd/*.service systemd/*.socket systemd/*.timer systemd/*.path systemd/*.target)
if [ "${#units[@]}" -eq 0 ]; then
    echo "no units in systemd/" >&2
    exit 1
fi
for unit in "${units[@]}"; do
    report="$(systemd-analyze verify "$unit" 2>&1)" || {
        echo "$report" >&2
        exit 1
    }
    if [ -n "$report" ]; then
        echo "systemd-analyze verify $unit:" >&2
        echo "$report" >&2
        exit 1
    fi
    echo "verify ok: $unit"
done

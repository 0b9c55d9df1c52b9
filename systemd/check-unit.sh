#!/bin/sh
# Checks the systemd files in this folder the way CI does (issue #12):
#   1. systemd-analyze verify: the unit parses, with no warning at all (unknown keys and bad values are only
#      warnings to systemd, so any output counts as a failure);
#   2. systemd-analyze security --offline=true: exposure at most 3.0 ("OK");
#   3. systemd-sysusers and systemd-tmpfiles accept the snippets (applied to a scratch root, not this machine).
# Runs as any user; touches nothing outside a temporary folder. Exit 0 = all good.
# Usage: systemd/check-unit.sh [MAX_EXPOSURE]      (default 3.0)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
max=${1:-3.0}
unit="$here/ksefd.service"
for tool in systemd-analyze systemd-sysusers systemd-tmpfiles; do
    command -v "$tool" >/dev/null || { echo "check-unit: $tool not found (install systemd)" >&2; exit 2; }
done

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT INT TERM
fail=0

# A scratch root holds the unit, the targets it refers to and a stand-in for /usr/local/bin/ksefd, so verify
# checks ExecStart= without ksefd being installed on this machine (and ExecReload='s /bin/kill, which a scratch
# root lacks).
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/local/bin" \
         "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
units=/usr/lib/systemd/system
[ -d "$units" ] || units=/lib/systemd/system          # distributions without the merged /usr
cp -R "$units" "$root/usr/lib/systemd/"
cp "$unit" "$root/etc/systemd/system/ksefd.service"
mkdir -p "$root/bin"
for stand_in in "$root/usr/local/bin/ksefd" "$root/bin/kill"; do
    printf '#!/bin/sh\nexit 0\n' > "$stand_in"
    chmod 0755 "$stand_in"
done

if out=$(systemd-analyze verify --man=no --root="$root" ksefd.service 2>&1) && [ -z "$out" ]; then
    echo "verify: OK"
else
    echo "verify: FAILED"
    printf '%s\n' "$out" | sed "s|$root||g"
    fail=1
fi

# --threshold takes tenths (30 = 3.0); the level is also printed for the record.
threshold=$(awk -v m="$max" 'BEGIN { printf "%d", m * 10 + 0.5 }')
report=$(systemd-analyze security --offline=true --threshold="$threshold" "$unit" 2>&1) && rc=0 || rc=$?
level=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for ksefd.service: \([0-9.]*\).*/\1/p')
if [ "$rc" -eq 0 ] && [ -n "$level" ]; then
    echo "security: exposure $level (max $max): OK"
else
    printf '%s\n' "$report" | grep -E '✗|Overall' || printf '%s\n' "$report"
    echo "security: exposure ${level:-unknown} (max $max): FAILED"
    fail=1
fi

cp "$here/ksefd.sysusers" "$root/usr/lib/sysusers.d/ksefd.conf"
cp "$here/ksefd.tmpfiles" "$root/usr/lib/tmpfiles.d/ksefd.conf"
if out=$(systemd-sysusers --root="$root" ksefd.conf 2>&1) && grep -q '^ksefd:' "$root/etc/passwd" \
   && out=$(systemd-tmpfiles --root="$root" --create ksefd.conf 2>&1) && [ -d "$root/var/lib/ksefd" ]; then
    echo "sysusers/tmpfiles: OK"
else
    echo "sysusers/tmpfiles: FAILED"
    printf '%s\n' "$out" | sed "s|$root||g"
    fail=1
fi
exit $fail

#!/bin/sh
# Run `inv backup` from cron: works with cron's minimal environment (only
# PATH and HOME) and from any directory.  Settings come from the
# workspace's .env (BACKUP_DEST, STATE_BUCKET, credentials or AWS_PROFILE).
# Output: one summary line on success; errors on stderr and a non-zero
# exit (75 when the previous run is still going), so cron's mail or any
# wrapper can alert on it.  Extra arguments go to `inv backup`.
#
# A ready crontab line (every hour at minute 17, failures mailed by cron):
#   17 * * * * /path/to/workspace/scripts/backup-cron.sh >>"$HOME/statekeeper-backup.log"
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
inv="$root/.venv/bin/inv"
if [ ! -x "$inv" ]; then
    echo "backup-cron: $inv is missing; run scripts/setup.sh in $root" >&2
    exit 1
fi
# cron starts with LANG unset; Python then falls back to ASCII.
export LANG="${LANG:-C.UTF-8}"
cd "$root"
exec "$inv" --search-root "$root" backup "$@"

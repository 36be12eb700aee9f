#!/bin/sh
# The main job: set up, then run Sennet on this host with its embedded defaults and show
# where to look. Ctrl-C stops it and removes everything it created.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/bootstrap.sh"
exec "$repo/.venv/bin/python" "$repo/scripts/demo.py" "$@"

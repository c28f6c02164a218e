#!/usr/bin/env bash
# Build cryoforge's sdist and wheel (distribution "cryoforge-em") and the example plugin's, install
# them into fresh virtual environments and check that they work from an empty folder:
#   1. both archives of the core contain the demo structure (cryoforge/data/adk_open.pdb.gz) and
#      demo.toml, and their metadata name the distribution cryoforge-em;
#   2. venv A, from the wheels: `cryoforge run --demo -o train.max_steps 5` finishes and writes the map;
#      the example plugin, installed with --no-index, resolves its dependency on cryoforge-em
#      locally and `cryoforge plugins list` shows its `gaussians` volume;
#   3. venv B, from the sdists: the same install, the package data and `plugins list` (no demo).
# Needs the network or a local index for `build`, setuptools and the dependencies; takes ~5 min on
# 2 cores, most of it the demo (skip it with CHECK_WHEEL_DEMO=0).
#
# Usage: scripts/check_wheel.sh [WORKDIR]      (default: a new temporary folder, kept for inspection)
# Environment: PYTHON (python3), TORCH_SPEC (torch==2.13.0; an unpinned torch pulls a multi-GB CUDA
# build), CHECK_WHEEL_DEMO (1), OMP_NUM_THREADS (1).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d -t cryoforge-check-wheel.XXXXXX)}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
DEMO="${CHECK_WHEEL_DEMO:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
DIST_NAME="cryoforge-em"
DIST="$WORK/dist"
mkdir -p "$WORK" "$DIST"
say() { printf '\n== %s\n' "$*"; }
fail() { printf 'check_wheel: FAIL: %s\n' "$*" >&2; exit 1; }

say "copying the source tree (tracked and untracked, not ignored) to $WORK/src"
# building in a copy leaves no *.egg-info in the checkout (on PYTHONPATH it would pass for an install)
rm -rf "$WORK/src" && mkdir -p "$WORK/src"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$WORK/src"
SRC="$WORK/src"

say "building sdists and wheels into $DIST"
"$PYTHON" -m venv "$WORK/build-venv"
"$WORK/build-venv/bin/python" -m pip install -q build
"$WORK/build-venv/bin/python" -m build -o "$DIST" "$SRC" >"$WORK/build-core.log" 2>&1 \
    || { tail -20 "$WORK/build-core.log"; fail "building the core"; }
"$WORK/build-venv/bin/python" -m build -o "$DIST" "$SRC/plugins/cryoforge-example" \
    >"$WORK/build-plugin.log" 2>&1 || { tail -20 "$WORK/build-plugin.log"; fail "building the plugin"; }
WHEEL="$(ls "$DIST"/cryoforge_em-*.whl)"
SDIST="$(ls "$DIST"/cryoforge_em-*.tar.gz)"
PLUGIN_WHEEL="$(ls "$DIST"/cryoforge_example-*.whl)"
PLUGIN_SDIST="$(ls "$DIST"/cryoforge_example-*.tar.gz)"
ls -l "$DIST"

say "archive contents and metadata"
"$PYTHON" - "$WHEEL" "$SDIST" "$DIST_NAME" <<'PY'
import sys, tarfile, zipfile
wheel, sdist, dist_name = sys.argv[1:]
needed = ("cryoforge/data/adk_open.pdb.gz", "cryoforge/data/demo.toml", "cryoforge/cli.py")
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    head = dict(line.split(": ", 1) for line in z.read(meta).decode().splitlines()[:3] if ": " in line)
with tarfile.open(sdist) as t:
    snames = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
missing = [n for n in needed if n not in names] + [f"sdist:{n}" for n in needed if n not in snames]
if missing:
    sys.exit(f"missing from the archives: {missing}")
if head.get("Name") != dist_name:
    sys.exit(f"wheel METADATA Name is {head.get('Name')!r}, expected {dist_name!r}")
print(f"ok: {wheel.rsplit('/', 1)[-1]} and the sdist hold {', '.join(needed)}; Name: {dist_name}")
PY

fresh_venv() {  # $1: folder
    "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install -q "$TORCH_SPEC"
}

check_plugin_listed() {  # $1: venv
    (cd "$WORK/empty" && "$1/bin/cryoforge" plugins list --kind volume)
    (cd "$WORK/empty" && "$1/bin/cryoforge" plugins list --kind volume --json) >"$WORK/plugins.json"
    "$PYTHON" -c "
import json, sys
rows = json.load(open(sys.argv[1]))
hit = [r for r in rows if r['name'] == 'gaussians' and r['plugin'] == 'cryoforge-example']
sys.exit(0 if hit else 'cryoforge plugins list does not show the example plugin\'s gaussians volume')
" "$WORK/plugins.json" || fail "example plugin not listed"
    "$1/bin/python" -m pip check
}

say "venv A: the wheels"
fresh_venv "$WORK/venv-wheel"
"$WORK/venv-wheel/bin/python" -m pip install -q "$WHEEL"
rm -rf "$WORK/empty" && mkdir "$WORK/empty"
(cd "$WORK/empty" && "$WORK/venv-wheel/bin/cryoforge" --version)
if [ "$DEMO" != "0" ]; then
    (cd "$WORK/empty" && time "$WORK/venv-wheel/bin/cryoforge" run --demo -o train.max_steps 5)
    [ -s "$WORK/empty/demo_run/map.mrc" ] || fail "the demo wrote no demo_run/map.mrc"
    [ -s "$WORK/empty/demo_run/poses.star" ] || fail "the demo wrote no demo_run/poses.star"
    rm -rf "$WORK/empty/demo_run"
fi
# --no-index: the plugin's dependency must be satisfied by the installed cryoforge-em, never fetched
"$WORK/venv-wheel/bin/python" -m pip install -q --no-index --find-links "$DIST" "$PLUGIN_WHEEL"
check_plugin_listed "$WORK/venv-wheel"

say "venv B: the sdists"
fresh_venv "$WORK/venv-sdist"
"$WORK/venv-sdist/bin/python" -m pip install -q "$SDIST"
"$WORK/venv-sdist/bin/python" -m pip install -q "$PLUGIN_SDIST"
(cd "$WORK/empty" && "$WORK/venv-sdist/bin/python" -c "
from importlib.metadata import version
from importlib.resources import files
data = files('cryoforge') / 'data'
assert (data / 'adk_open.pdb.gz').is_file() and (data / 'demo.toml').is_file(), data
print('ok: package data at', data, '; cryoforge-em', version('$DIST_NAME'))")
check_plugin_listed "$WORK/venv-sdist"

say "check_wheel: all checks passed (work folder: $WORK)"

#!/usr/bin/env bash
# `make soak`: a long run (5,000,000 messages by default) through the
# shipped configuration with a short retention, sampled every 10 s, drawn
# as a PNG; PASS/FAIL per criterion of the soak target.  A benchmark, not a
# test: never part of `make test`.  Parameters (SOAK_MESSAGES, SOAK_CONNS,
# SOAK_WINDOW, SOAK_INTERVAL_S, SOAK_RETENTION, SOAK_SINK, SOAK_MAX_SECONDS,
# SOAK_FILE, SOAK_OUT, SOAK_KEEP): see tests/bench/soak.py.
set -u
cd "$(dirname "$0")/.."
build=${1:-build}
# gnuplot draws the chart; without it (not root, no package) the table and
# the verdicts still come out.
scripts/deps.sh bench || echo "soak: continuing; without gnuplot-nox there is no chart, without python3-yaml no run" >&2
exec /usr/bin/python3 tests/bench/soak.py "$build"

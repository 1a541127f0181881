#!/usr/bin/env bash
# run_fuzz.sh HARNESS SECONDS SEED_CORPUS REGRESS_DIR WORK_DIR
# Replays the regression inputs, then fuzzes for SECONDS from the seed corpus
# plus what earlier runs found (WORK_DIR). A crash leaves its input in
# WORK_DIR/crash-*: copy it into REGRESS_DIR with the fix.
set -euo pipefail
harness=$1 seconds=$2 seeds=$3 regress=$4 work=$5
mkdir -p "$work"
if compgen -G "$regress/*" >/dev/null; then
  "$harness" -runs=0 "$regress"/*   # each file once; any crash fails the test
fi
# -jobs=1 keeps it on one of the two cores; -max_len bounds one input, and
# the RSS limit catches memory blow-ups in the parsers.
exec "$harness" -max_total_time="$seconds" -max_len=8192 -rss_limit_mb=1024 -timeout=10 \
  -print_final_stats=1 -artifact_prefix="$work/" "$work" "$seeds"

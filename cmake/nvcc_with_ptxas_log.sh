#!/usr/bin/env bash
# CUDA compiler launcher: runs the nvcc command unchanged and keeps its
# stderr (which holds ptxas's per-kernel resource report, from
# --resource-usage) beside the object file as <object>.ptxas.log, so the
# report survives incremental builds. scripts/check_kernel_resources.sh reads it.
out=""
prev=""
for arg in "$@"; do
  [ "$prev" = "-o" ] && out="$arg"
  prev="$arg"
done
if [ -z "$out" ]; then exec "$@"; fi
log="$out.ptxas.log"
"$@" 2>"$log"
status=$?
# ptxas's "info" lines are kept in the log only; anything else (warnings,
# errors) is shown as the compiler printed it.
grep -v -e '^ptxas info' -e '^    [0-9]* bytes stack frame' "$log" >&2
exit $status

# Sourced by the bench/*_run.sh device scripts: run one step under its own time limit.
#   limited NAME SECONDS CMD...   (SECONDS 0: the step is skipped)
limited() {
  local name=$1 limit=$2
  shift 2
  if [ "$limit" = 0 ]; then echo "### $name: skipped"; return 0; fi
  echo "### $name: start at ${SECONDS} s (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "### $name: exit $rc at ${SECONDS} s"
  return $rc
}

#!/usr/bin/env bash
# Mutation testing of the files where tollgate computes an answer: each
# mutant (an operator flipped, a branch deleted, a return value replaced)
# must make some test fail. Run it before and after changing one of these
# files; it is not part of CI (minutes to an hour per file).
#
#   scripts/mutants.sh            every target below, one after the other
#   scripts/mutants.sh arith      one target (arith, filters, shares, money,
#                                 calendar, keys, fold, leases, ietf)
#   scripts/mutants.sh arith -- --re refill   extra cargo-mutants arguments
#
# Each target names the tests that hold its file, so a mutant is built and
# tested against only those (the store suite needs redis-server on PATH).
# Results: target/mutants/<target>/mutants.out/{caught,missed,unviable,
# timeout}.txt. Builds go to target/mutants/build, kept between runs, so
# only the first baseline builds the dependencies. docs/testing.md has the
# figures of the last full run.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

targets=(arith filters shares money calendar keys fold leases ietf)

usage() {
  local IFS='|'
  echo "usage: $0 [${targets[*]}]... [-- cargo-mutants args...]" >&2
  exit 2
}

# The files and test selection of each target. `--cargo-arg` gives the
# selection to the build as well as to the test run (arguments after `--`
# reach only the test run), so a mutant links two test binaries rather than
# all seventeen of the package's.
mutants_args() {
  case "$1" in
    arith)
      echo "--file rls/src/store/arith.rs --package tollgate --cargo-arg=--lib --cargo-arg=--test=stores"
      ;;
    filters)
      echo "--file filters/src/sse.rs --file filters/src/usage.rs --package tollgate-filters --cargo-arg=--lib"
      ;;
    shares)
      echo "--file rls/src/engine/budget/shares.rs --package tollgate --cargo-arg=--lib"
      ;;
    money)
      echo "--file rls/src/rules/price.rs --package tollgate --cargo-arg=--lib --cargo-arg=--test=money"
      ;;
    calendar)
      echo "--file rls/src/rules/calendar.rs --package tollgate --cargo-arg=--lib"
      ;;
    keys)
      echo "--file rls/src/store/keys.rs --package tollgate --cargo-arg=--lib --cargo-arg=--test=stores"
      ;;
    fold)
      echo "--file rls/src/engine/ratelimit/fold.rs --package tollgate --cargo-arg=--lib --cargo-arg=--test=engine"
      ;;
    leases)
      echo "--file rls/src/engine/leases.rs --package tollgate --cargo-arg=--lib --cargo-arg=--test=leases"
      ;;
    ietf)
      echo "--file rls/src/service/ietf_headers.rs --package tollgate --cargo-arg=--lib"
      ;;
    *) usage ;;
  esac
}

if ! cargo mutants --version >/dev/null 2>&1; then
  echo "cargo-mutants is not installed: cargo install cargo-mutants" >&2
  exit 1
fi

chosen=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; extra=("$@"); break ;;
    -h|--help) usage ;;
    *) chosen+=("$1"); shift ;;
  esac
done
[ ${#chosen[@]} -gt 0 ] || chosen=("${targets[@]}")

for t in "${chosen[@]}"; do
  mutants_args "$t" >/dev/null
  if { [ "$t" = arith ] || [ "$t" = keys ] || [ "$t" = money ] || [ "$t" = leases ]; } &&
    ! command -v redis-server >/dev/null; then
    echo "$t: its tests need redis-server (scripts/install-test-deps.sh)" >&2
    exit 1
  fi
done

export CARGO_TARGET_DIR="$repo/target/mutants/build"
status=0
for t in "${chosen[@]}"; do
  out="$repo/target/mutants/$t"
  mkdir -p "$out"
  # shellcheck disable=SC2046 # the arguments are words on purpose
  set -- $(mutants_args "$t")
  echo "==> cargo mutants $* -o $out ${extra[*]}"
  start=$SECONDS
  # cargo-mutants exits 2 when some mutant was missed, 3 on a timeout.
  nice -n 19 cargo mutants "$@" -o "$out" "${extra[@]}" || status=$?
  echo "<== $t: $((SECONDS - start)) s"
  for kind in caught missed unviable timeout; do
    f="$out/mutants.out/$kind.txt"
    printf '    %-9s %s\n' "$kind" "$( [ -f "$f" ] && wc -l <"$f" || echo 0)"
  done
  if [ -s "$out/mutants.out/missed.txt" ]; then
    echo "    missed:"
    sed 's/^/      /' "$out/mutants.out/missed.txt"
  fi
done
exit "$status"

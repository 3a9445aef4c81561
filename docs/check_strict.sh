#!/usr/bin/env bash
# Proves that the strict docs build fails on what it must catch: builds three broken copies of
# docs/ (a link to a page that does not exist, a link to a heading that does not exist, a page in
# no toctree) and fails unless each of those builds fails with the expected warning.
# Usage: docs/check_strict.sh SPHINX_BUILD   (the sphinx-build of the docs environment)
set -euo pipefail
sphinx_build=${1:?usage: docs/check_strict.sh SPHINX_BUILD}
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

expect_failure() {  # name, expected warning text, then the breaking command run in the copy
  local name=$1 expected=$2 break_it=$3
  mkdir -p "$tmp/$name/benchmarks"
  cp -r "$root/docs" "$tmp/$name/docs"
  cp "$root/benchmarks/RESULTS.md" "$tmp/$name/benchmarks/"
  (cd "$tmp/$name/docs" && eval "$break_it")
  if "$sphinx_build" -W --keep-going -q -b html "$tmp/$name/docs" "$tmp/$name/html" >"$tmp/$name.log" 2>&1; then
    echo "check_strict: the docs build passed with $name; it must fail"
    exit 1
  fi
  if ! grep -q "$expected" "$tmp/$name.log"; then
    echo "check_strict: the docs build with $name failed, but not with '$expected':"
    cat "$tmp/$name.log"
    exit 1
  fi
  echo "check_strict: $name fails the build, as it must"
}

expect_failure "a dead link" "myst.xref_missing" 'echo "See [nowhere](no-such-page.md)." >> install.md'
expect_failure "a dead heading link" "local id not found" 'echo "See [a heading](kernels.md#no-such-heading)." >> install.md'
expect_failure "a page in no toctree" "toc.not_included" 'printf "# Orphan\n\nText.\n" > orphan.md'

#!/bin/sh
# Runs dextd under valgrind for the dextd-e2e-valgrind test: any memory
# error or definite leak makes dextd exit 99, which the e2e test's
# orderly-shutdown check (exit status 0) turns into a failure.
exec valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    "$DEXTD_REAL" "$@"

#!/usr/bin/env python3
"""Print 'N passed, N failed' from one or more of Meson's testlog.json files.

TAP tests (every qtest and most e2e programs here) count one result per test
case ('ok N' / 'not ok N'); other tests count once.  A test that crashed or
timed out counts as failed even if its TAP output looked fine.  A missing or
empty log (the build failed before any test ran) counts as one failure.

usage: test-summary.py TESTLOG.json [TESTLOG.json ...] [EXIT_CODE_OF_THE_RUN]
"""
import json
import re
import sys

OK_RESULTS = {"OK", "EXPECTEDFAIL"}
SKIP_RESULTS = {"SKIP"}


def count(path, totals):
    try:
        with open(path) as f:
            entries = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        entries = []
    if not entries:
        print(f"no test ran ({path})")
        totals["failed"] += 1
        return
    for e in entries:
        result = e.get("result", "ERROR")
        out = e.get("stdout") or ""
        tap_ok = len(re.findall(r"^ok \d+(?! # SKIP)", out, re.M))
        tap_skip = len(re.findall(r"^ok \d+ # SKIP", out, re.M | re.I))
        tap_fail = len(re.findall(r"^not ok \d+", out, re.M))
        if tap_ok + tap_fail + tap_skip:
            totals["passed"] += tap_ok
            totals["skipped"] += tap_skip
            totals["failed"] += tap_fail
            if result not in OK_RESULTS | SKIP_RESULTS and tap_fail == 0:
                totals["failed"] += 1      # crashed, timed out or exited non-zero
        elif result in OK_RESULTS:
            totals["passed"] += 1
        elif result in SKIP_RESULTS:
            totals["skipped"] += 1
        else:
            totals["failed"] += 1
        if result not in OK_RESULTS | SKIP_RESULTS:
            print(f"FAILED: {e.get('name')} ({result}) in {path}")


def main():
    args = sys.argv[1:]
    run_rc = 0
    if args and re.fullmatch(r"-?\d+", args[-1]):
        run_rc = int(args.pop())
    if not args:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for path in args:
        count(path, totals)
    if run_rc and totals["failed"] == 0:
        print(f"the run exited {run_rc} with no failed test counted")
        totals["failed"] += 1
    line = f"{totals['passed']} passed, {totals['failed']} failed"
    if totals["skipped"]:
        line += f", {totals['skipped']} skipped"
    print(line)
    return 1 if totals["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Print 'N passed, N failed' from Meson's testlog.json.

TAP tests (every qtest and CUnit suite here) count one result per test case
('ok N' / 'not ok N'); other tests count once.  A test that crashed or timed
out counts as failed even if its TAP output looked fine.  A missing log (the
build failed before any test ran) counts as one failure.

usage: test-summary.py TESTLOG.json [EXIT_CODE_OF_THE_RUN]
"""
import json
import re
import sys

OK_RESULTS = {"OK", "EXPECTEDFAIL"}
SKIP_RESULTS = {"SKIP"}

def main():
    path = sys.argv[1]
    run_rc = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    passed = failed = skipped = 0
    try:
        with open(path) as f:
            entries = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        entries = None
    if not entries:
        print("no test ran" + (f" (setup or build exited {run_rc})" if run_rc else ""))
        print("0 passed, 1 failed")
        return 1
    for e in entries:
        result = e.get("result", "ERROR")
        out = e.get("stdout") or ""
        tap_ok = len(re.findall(r"^ok \d+(?! # SKIP)", out, re.M))
        tap_skip = len(re.findall(r"^ok \d+ # SKIP", out, re.M | re.I))
        tap_fail = len(re.findall(r"^not ok \d+", out, re.M))
        if tap_ok + tap_fail + tap_skip:
            passed += tap_ok
            skipped += tap_skip
            failed += tap_fail
            if result not in OK_RESULTS | SKIP_RESULTS and tap_fail == 0:
                failed += 1        # crashed, timed out or exited non-zero
        elif result in OK_RESULTS:
            passed += 1
        elif result in SKIP_RESULTS:
            skipped += 1
        else:
            failed += 1
        if result not in OK_RESULTS | SKIP_RESULTS:
            print(f"FAILED: {e.get('name')} ({result})")
    line = f"{passed} passed, {failed} failed"
    if skipped:
        line += f", {skipped} skipped"
    print(line)
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())

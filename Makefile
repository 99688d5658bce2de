# A thin layer over tools/setup and Meson, for QEMU users' habits.
#   make            graft hw/ into the fork, rebuild what is stale (fork and dextlab)
#   make check      ... and run every test suite, then check-asan
#   make check-unit | check-qtest | check-e2e | check-boot | check-fuzz
#   make check-asan the unit, e2e and fuzz suites with the runtime itself built
#                   with ASan+UBSan (build/dextlab-asan)
#   make bench      run the benchmarks (not tests: they print figures)
#   make bench-report   ... and write docs/bench/report.md with plots
BUILD ?= build
DBUILD := $(BUILD)/dextlab
MESON_TEST := meson test -C $(DBUILD) --print-errorlogs

.PHONY: all sanitizers check check-fuzz check-asan bench bench-report clean distclean check-%

all:
	@tools/setup --build

# The fuzz suite runs the fork built with sanitizers: these targets build it
# (once; then every build keeps it current).
sanitizers:
	@tools/setup --build --sanitizers

# Every suite, then the runtime's own suites again built with sanitizers.
check: sanitizers
	@rc=0; $(MESON_TEST) || rc=1; $(MAKE) --no-print-directory check-asan || rc=1; exit $$rc

check-fuzz: sanitizers
	$(MESON_TEST) --suite fuzz

# The runtime (dextd, libdext, drivers, tests) built with sanitizers; a
# sanitizer report aborts the process, so the test that ran it fails.
ABUILD := $(BUILD)/dextlab-asan
check-asan: sanitizers
	@[ -f $(ABUILD)/build.ninja ] || meson setup $(ABUILD) . -Dqemu_build=$(abspath $(BUILD))/qemu-build -Dqemu_src=$(abspath $(BUILD))/qemu-src \
	    -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
	meson compile -C $(ABUILD) >/dev/null
	UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1 \
	    meson test -C $(ABUILD) --print-errorlogs --suite unit --suite e2e --suite fuzz

check-%: all
	$(MESON_TEST) --suite $*

bench: all
	meson test -C $(DBUILD) --benchmark --verbose

bench-report: all
	tools/bench/report --build $(DBUILD) --out docs/bench

clean:
	rm -rf $(DBUILD)

distclean:
	rm -rf $(BUILD)

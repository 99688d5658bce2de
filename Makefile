# A thin layer over tools/setup and Meson, for QEMU users' habits.
#   make            graft hw/ into the fork, rebuild what is stale (fork and dextlab)
#   make check      ... and run every test suite
#   make check-unit | check-qtest | check-e2e | check-boot | check-fuzz
#   make bench      run the benchmarks (not tests: they print figures)
#   make bench-report   ... and write docs/bench/report.md with plots
BUILD ?= build
DBUILD := $(BUILD)/dextlab
MESON_TEST := meson test -C $(DBUILD) --print-errorlogs

.PHONY: all sanitizers check check-fuzz bench bench-report clean distclean check-%

all:
	@tools/setup --build

# The fuzz suite runs the fork built with sanitizers: these targets build it
# (once; then every build keeps it current).
sanitizers:
	@tools/setup --build --sanitizers

check: sanitizers
	$(MESON_TEST)

check-fuzz: sanitizers
	$(MESON_TEST) --suite fuzz

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

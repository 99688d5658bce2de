#!/bin/sh
# A stand-in for dextd in test-e2e-dextd: prints its command line and
# $FAKE_DEXTD_ECHO to stderr (one line to stdout), then acts as $FAKE_DEXTD_MODE says:
#   serve     make the --socket path, exit 0 on SIGTERM
#   die       exit 3 before making the socket
#   hang      never make the socket
#   stubborn  make the socket, ignore SIGTERM
echo "fake-dextd on stdout"
echo "fake-dextd $*" >&2
echo "echo=${FAKE_DEXTD_ECHO:-}" >&2
sock=
while [ $# -gt 0 ]; do
    [ "$1" = --socket ] && sock=$2
    shift
done
case "$FAKE_DEXTD_MODE" in
die)
    echo "fake-dextd: bad machine" >&2
    exit 3 ;;
hang)
    trap 'exit 0' TERM ;;
stubborn)
    trap '' TERM
    : > "$sock" ;;
*)
    trap 'echo "fake-dextd: SIGTERM, exiting" >&2; exit 0' TERM
    : > "$sock" ;;
esac
while :; do
    sleep 0.05
done

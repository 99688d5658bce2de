/*
 * The qtest line protocol, pure functions (no I/O) so they can be unit
 * tested: formatting commands and classifying/parsing the lines QEMU sends.
 *
 * QEMU answers every command with exactly one line, in order:
 * "OK[ value]", "FAIL[ text]" or "ERR[ text]".  Asynchronous lines may come
 * between replies: "IRQ raise N", "IRQ lower N" (irq_intercept_in) and,
 * with the fork's patch, "IRQ msi 0x<addr> 0x<data>" (msi_intercept).
 * Caution: QEMU 7.2's qtest g_asserts on malformed arguments, so a client
 * must only ever send well-formed commands; the formatters guarantee that.
 */
#ifndef DEXT_QTEST_PROTO_H
#define DEXT_QTEST_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    QT_LINE_OK,
    QT_LINE_FAIL,        /* FAIL or ERR: the command failed */
    QT_LINE_IRQ_RAISE,
    QT_LINE_IRQ_LOWER,
    QT_LINE_IRQ_MSI,
    QT_LINE_BAD,         /* not a line of the protocol */
} QtLineKind;

typedef struct QtLine {
    QtLineKind kind;
    const char *rest;    /* text after "OK "/"FAIL " ("" if none) */
    uint64_t a;          /* IRQ number, or MSI address */
    uint32_t b;          /* MSI data */
} QtLine;

/* Parse one line (without its '\n'); @line must stay alive while @out is
 * used.  Returns out->kind. */
QtLineKind qt_parse_line(const char *line, QtLine *out);

static inline bool qt_line_is_async(QtLineKind k)
{
    return k == QT_LINE_IRQ_RAISE || k == QT_LINE_IRQ_LOWER ||
           k == QT_LINE_IRQ_MSI;
}

/* Parse the value of an "OK 0x..." reply; -EINVAL if it is not one
 * unsigned number (hex with 0x, or decimal). */
int qt_parse_u64(const char *rest, uint64_t *val);

/* Format commands into buf (size n); return the length (including the
 * trailing '\n') or -EINVAL (bad width) / -ENOSPC (buffer too small).
 * width is 1, 2, 4 or 8 for memory; 1, 2 or 4 for ports. */
int qt_fmt_mem_write(char *buf, size_t n, unsigned width, uint64_t addr,
                     uint64_t val);
int qt_fmt_mem_read(char *buf, size_t n, unsigned width, uint64_t addr);
int qt_fmt_port_write(char *buf, size_t n, unsigned width, uint16_t port,
                      uint32_t val);
int qt_fmt_port_read(char *buf, size_t n, unsigned width, uint16_t port);

#endif

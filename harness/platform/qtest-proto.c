/*
 * qtest line protocol helpers; see qtest-proto.h.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtest-proto.h"

/* Strict unsigned parse of one token ending at NUL or ' '. */
static int parse_tok(const char *s, const char **end, uint64_t *v)
{
    char *e;
    int base = 10;

    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    if (!((*s >= '0' && *s <= '9') ||
          (base == 16 && ((*s >= 'a' && *s <= 'f') ||
                          (*s >= 'A' && *s <= 'F'))))) {
        return -EINVAL;
    }
    errno = 0;
    *v = strtoull(s, &e, base);
    if (errno || (*e != '\0' && *e != ' ')) {
        return -EINVAL;
    }
    *end = e;
    return 0;
}

int qt_parse_u64(const char *rest, uint64_t *val)
{
    const char *end;

    if (parse_tok(rest, &end, val) < 0 || *end != '\0') {
        return -EINVAL;
    }
    return 0;
}

QtLineKind qt_parse_line(const char *line, QtLine *out)
{
    const char *p;
    uint64_t v;

    memset(out, 0, sizeof(*out));
    out->rest = "";
    if (!strncmp(line, "OK", 2) && (line[2] == '\0' || line[2] == ' ')) {
        out->rest = line[2] ? line + 3 : "";
        return out->kind = QT_LINE_OK;
    }
    if ((!strncmp(line, "FAIL", 4) && (line[4] == '\0' || line[4] == ' '))) {
        out->rest = line[4] ? line + 5 : "";
        return out->kind = QT_LINE_FAIL;
    }
    if ((!strncmp(line, "ERR", 3) && (line[3] == '\0' || line[3] == ' '))) {
        out->rest = line[3] ? line + 4 : "";
        return out->kind = QT_LINE_FAIL;
    }
    out->kind = QT_LINE_BAD;
    if (strncmp(line, "IRQ ", 4)) {
        return out->kind;
    }
    p = line + 4;
    if (!strncmp(p, "raise ", 6) || !strncmp(p, "lower ", 6)) {
        QtLineKind k = p[0] == 'r' ? QT_LINE_IRQ_RAISE : QT_LINE_IRQ_LOWER;

        if (qt_parse_u64(p + 6, &v) < 0 || v > 1023) {
            return out->kind;
        }
        out->a = v;
        return out->kind = k;
    }
    if (!strncmp(p, "msi ", 4)) {
        const char *e;
        uint64_t d;

        if (parse_tok(p + 4, &e, &v) < 0 || *e != ' ' ||
            qt_parse_u64(e + 1, &d) < 0 || d > UINT32_MAX) {
            return out->kind;
        }
        out->a = v;
        out->b = d;
        return out->kind = QT_LINE_IRQ_MSI;
    }
    return out->kind;
}

static char wchar(unsigned width)
{
    switch (width) {
    case 1: return 'b';
    case 2: return 'w';
    case 4: return 'l';
    case 8: return 'q';
    default: return 0;
    }
}

static int fin(int r, size_t n)
{
    if (r < 0) {
        return -EINVAL;
    }
    return (size_t)r >= n ? -ENOSPC : r;
}

int qt_fmt_mem_write(char *buf, size_t n, unsigned width, uint64_t addr,
                     uint64_t val)
{
    char c = wchar(width);

    if (!c) {
        return -EINVAL;
    }
    if (width < 8) {
        val &= (1ull << (8 * width)) - 1;
    }
    return fin(snprintf(buf, n, "write%c 0x%" PRIx64 " 0x%" PRIx64 "\n", c,
                        addr, val), n);
}

int qt_fmt_mem_read(char *buf, size_t n, unsigned width, uint64_t addr)
{
    char c = wchar(width);

    if (!c) {
        return -EINVAL;
    }
    return fin(snprintf(buf, n, "read%c 0x%" PRIx64 "\n", c, addr), n);
}

int qt_fmt_port_write(char *buf, size_t n, unsigned width, uint16_t port,
                      uint32_t val)
{
    char c = wchar(width);

    if (!c || width == 8) {
        return -EINVAL;
    }
    if (width < 4) {
        val &= (1u << (8 * width)) - 1;
    }
    return fin(snprintf(buf, n, "out%c 0x%x 0x%x\n", c, port, val), n);
}

int qt_fmt_port_read(char *buf, size_t n, unsigned width, uint16_t port)
{
    char c = wchar(width);

    if (!c || width == 8) {
        return -EINVAL;
    }
    return fin(snprintf(buf, n, "in%c 0x%x\n", c, port), n);
}

/*
 * Hostile input generators shared by dext-hostile (a driver that attacks
 * dextd over its channels) and the IPC fuzzers in qtest/fuzz/: random
 * GVariant values of any signature, biased towards edge values, and
 * mutations of encoded datagrams.  Header-only (static): each user links
 * only libdextcore.  Deterministic given the GRand seed.
 */
#ifndef DEXT_HOSTILE_GEN_H
#define DEXT_HOSTILE_GEN_H

#include <glib.h>
#include <stdint.h>
#include <string.h>

#include "ipc.h"

static inline uint64_t hg_u64(GRand *r)
{
    switch (g_rand_int_range(r, 0, 10)) {
    case 0: return 0;
    case 1: return 1;
    case 2: return UINT64_MAX;
    case 3: return (uint64_t)1 << g_rand_int_range(r, 0, 64);
    case 4: return ((uint64_t)1 << g_rand_int_range(r, 0, 64)) - 1;
    case 5: return g_rand_int_range(r, 0, 64);
    case 6: return (uint64_t)INT64_MAX + g_rand_int_range(r, 0, 3);
    case 7: return g_rand_int(r);
    default: return ((uint64_t)g_rand_int(r) << 32) | g_rand_int(r);
    }
}

static inline char *hg_string(GRand *r)
{
    static const char *const words[] = {
        "", "class", "name", "id", "stop", "start", "DextTestDriver", "HostileDmaDriver",
        "org.dextlab.dext-hostile-dma", "org.dextlab.dext-test", "*", "../../etc/passwd",
        "0", "18446744073709551615", "-1", "%s%s%n", "\xc3\xa9t\xc3\xa9",
    };
    if (g_rand_boolean(r)) {
        return g_strdup(words[g_rand_int_range(r, 0, G_N_ELEMENTS(words))]);
    }
    int n = g_rand_int_range(r, 0, g_rand_boolean(r) ? 8 : 300);
    char *s = g_malloc(n + 1);
    for (int i = 0; i < n; i++) {
        s[i] = (char)g_rand_int_range(r, 1, 128);
    }
    s[n] = 0;
    return s;
}

/* A random value of type t (depth-bounded; containers stay small). */
static GVariant *hg_value(GRand *r, const GVariantType *t, int depth)
{
    if (g_variant_type_is_basic(t)) {
        char c = g_variant_type_peek_string(t)[0];
        uint64_t v = hg_u64(r);
        switch (c) {
        case 'b': return g_variant_new_boolean(v & 1);
        case 'y': return g_variant_new_byte((guint8)v);
        case 'n': return g_variant_new_int16((gint16)v);
        case 'q': return g_variant_new_uint16((guint16)v);
        case 'i': return g_variant_new_int32((gint32)v);
        case 'u': return g_variant_new_uint32((guint32)v);
        case 'x': return g_variant_new_int64((gint64)v);
        case 't': return g_variant_new_uint64(v);
        case 'h': return g_variant_new_handle((gint32)v);
        case 'd': return g_variant_new_double((double)(int64_t)v / 3.0);
        case 's': {
            char *s = hg_string(r);
            GVariant *x = g_utf8_validate(s, -1, NULL) ? g_variant_new_string(s)
                                                       : g_variant_new_string("?");
            g_free(s);
            return x;
        }
        case 'o': return g_variant_new_object_path(g_rand_boolean(r) ? "/" : "/org/dextlab/x");
        case 'g': return g_variant_new_signature(g_rand_boolean(r) ? "" : "a{sv}");
        default: break;
        }
        return g_variant_new_byte(0);
    }
    if (g_variant_type_is_variant(t)) {
        static const char *const inner[] = { "t", "s", "u", "b", "ay", "at", "(ts)" };
        const char *sig = depth > 3 ? "u" : inner[g_rand_int_range(r, 0, G_N_ELEMENTS(inner))];
        return g_variant_new_variant(hg_value(r, G_VARIANT_TYPE(sig), depth + 1));
    }
    if (g_variant_type_is_maybe(t)) {
        const GVariantType *e = g_variant_type_element(t);
        return g_variant_new_maybe(e, g_rand_boolean(r) ? hg_value(r, e, depth + 1) : NULL);
    }
    if (g_variant_type_is_array(t)) {
        const GVariantType *e = g_variant_type_element(t);
        GVariantBuilder b;
        g_variant_builder_init(&b, t);
        int n;
        if (depth > 3) {
            n = 0;
        } else if (g_variant_type_equal(e, G_VARIANT_TYPE_BYTE) && g_rand_int_range(r, 0, 8) == 0) {
            n = g_rand_int_range(r, 0, 9000); /* around and above struct limits */
        } else {
            n = g_rand_int_range(r, 0, g_rand_int_range(r, 0, 8) == 0 ? 40 : 5);
        }
        for (int i = 0; i < n; i++) {
            g_variant_builder_add_value(&b, hg_value(r, e, depth + 1));
        }
        return g_variant_builder_end(&b);
    }
    if (g_variant_type_is_tuple(t) || g_variant_type_is_dict_entry(t)) {
        GVariantBuilder b;
        g_variant_builder_init(&b, t);
        for (const GVariantType *m = g_variant_type_first(t); m; m = g_variant_type_next(m)) {
            g_variant_builder_add_value(&b, hg_value(r, m, depth + 1));
        }
        return g_variant_builder_end(&b);
    }
    return g_variant_new_byte(0);
}

/* A random message of a catalogue type allowed on `channels` (or any type
 * when `channels` is 0), request or reply, with a random body of the right
 * signature.  Returns false when the picked type has no such direction. */
static bool hg_message(GRand *r, uint32_t channels, DextMsg *m, bool *reply)
{
    static const uint16_t types[] = {
        DEXT_MSG_ERROR, DEXT_MSG_START, DEXT_MSG_STOP, DEXT_MSG_NEW_CLIENT, DEXT_MSG_PING,
        DEXT_MSG_HELLO, DEXT_MSG_PCI_OPEN, DEXT_MSG_PCI_CLOSE, DEXT_MSG_CFG_READ,
        DEXT_MSG_CFG_WRITE, DEXT_MSG_MMIO_READ, DEXT_MSG_MMIO_WRITE, DEXT_MSG_DMA_RAM,
        DEXT_MSG_DMA_ALLOC, DEXT_MSG_DMA_FREE, DEXT_MSG_IRQ_BIND, DEXT_MSG_IRQ_UNBIND,
        DEXT_MSG_RESET, DEXT_MSG_SYNC, DEXT_MSG_IRQ_INFO, DEXT_MSG_IRQ_STATS, DEXT_MSG_OPEN,
        DEXT_MSG_REGISTRY, DEXT_MSG_SERVICES, DEXT_MSG_SERVICE_CTL, DEXT_MSG_UC_METHODS,
        DEXT_MSG_UC_CALL, DEXT_MSG_UC_MEMORY, DEXT_MSG_UC_ASYNC,
        /* nubs and the USB provider protocol (docs/runtime/nubs.md) */
        DEXT_MSG_NUB_CLIENT, DEXT_MSG_NUB_RESET, DEXT_MSG_NUB_PUBLISH, DEXT_MSG_NUB_TERMINATE,
        DEXT_MSG_PROVIDER_OPEN, DEXT_MSG_LIST, DEXT_MSG_LOG, DEXT_MSG_MATCH_EXPLAIN,
        DEXT_MSG_USB_INFO, DEXT_MSG_USB_OPEN, DEXT_MSG_USB_CONTROL, DEXT_MSG_USB_BUFFER_ALLOC,
        DEXT_MSG_USB_IO, DEXT_MSG_USB_IO_DONE, DEXT_MSG_MMIO_CHANNEL,
    };
    const DextMsgSpec *s;
    for (int tries = 0;; tries++) {
        s = dext_msg_spec(types[g_rand_int_range(r, 0, G_N_ELEMENTS(types))]);
        if (!channels || (s->channels & channels) || tries > 50) {
            break;
        }
    }
    *reply = s->reply_sig && (!s->req_sig || g_rand_int_range(r, 0, 4) == 0);
    const char *sig = *reply ? s->reply_sig : s->req_sig;
    if (!sig) {
        return false;
    }
    dext_msg_init(m, s->type, hg_value(r, G_VARIANT_TYPE(sig), 0));
    if (*reply) {
        m->flags |= DEXT_MSG_F_REPLY;
        m->reply_to = (uint32_t)hg_u64(r);
    } else if (s->may_post && g_rand_boolean(r)) {
        m->flags |= DEXT_MSG_F_POSTED;
    }
    m->serial = g_rand_int(r);
    return true;
}

/* Mutate an encoded datagram in place; returns the new length (<= cap).
 * Keeps the framing (magic, version, size) intact with probability
 * `keep_frame` in percent so most inputs reach the body validation. */
static size_t hg_mutate(GRand *r, uint8_t *buf, size_t len, size_t cap, int keep_frame)
{
    int n = g_rand_int_range(r, 1, 5);
    for (int k = 0; k < n; k++) {
        switch (g_rand_int_range(r, 0, 9)) {
        case 0: /* bit flip in the body */
        case 1:
            if (len > DEXT_IPC_HDR_SIZE) {
                size_t i = g_rand_int_range(r, DEXT_IPC_HDR_SIZE, (gint32)len);
                buf[i] ^= 1u << g_rand_int_range(r, 0, 8);
            }
            break;
        case 2: /* random byte anywhere past the magic */
            if (len > 4) {
                buf[g_rand_int_range(r, 4, (gint32)len)] = (uint8_t)g_rand_int(r);
            }
            break;
        case 3: /* type */
            if (len >= 8) {
                uint16_t t = (uint16_t)(g_rand_boolean(r) ? (guint32)g_rand_int_range(r, 0, 110) : g_rand_int(r));
                memcpy(buf + 6, &t, 2);
            }
            break;
        case 4: /* flags */
            if (len >= 22) {
                uint16_t f = (uint16_t)g_rand_int_range(r, 0, 8);
                memcpy(buf + 20, &f, 2);
            }
            break;
        case 5: /* fd count in the header */
            if (len >= 24) {
                uint16_t f = (uint16_t)g_rand_int_range(r, 0, 6);
                memcpy(buf + 22, &f, 2);
            }
            break;
        case 6: /* truncate the body */
            if (len > DEXT_IPC_HDR_SIZE) {
                len = g_rand_int_range(r, DEXT_IPC_HDR_SIZE, (gint32)len);
            }
            break;
        case 7: /* append junk */
            for (int i = g_rand_int_range(r, 1, 32); i > 0 && len < cap; i--) {
                buf[len++] = (uint8_t)g_rand_int(r);
            }
            break;
        default: /* reply_to / serial */
            if (len >= 16) {
                uint32_t v = g_rand_int(r);
                memcpy(buf + (g_rand_boolean(r) ? 8 : 12), &v, 4);
            }
            break;
        }
    }
    if (len >= DEXT_IPC_HDR_SIZE && g_rand_int_range(r, 0, 100) < keep_frame) {
        uint32_t magic = DEXT_IPC_MAGIC, bsz = (uint32_t)(len - DEXT_IPC_HDR_SIZE);
        uint16_t ver = DEXT_IPC_VERSION;
        memcpy(buf, &magic, 4);
        memcpy(buf + 4, &ver, 2);
        memcpy(buf + 16, &bsz, 4);
    }
    return len;
}

/* Fuzzers follow each hostile input with a probe whose reply they wait
 * for; probes use serials with bit 31 set (HG_PROBE_SERIAL) and this keeps
 * a mutated input's serial out of that space, so a mutation can never make
 * an input's ERROR look like the probe's reply. */
#define HG_PROBE_SERIAL 0x80000000u
static inline void hg_unprobe_serial(uint8_t *buf, size_t len)
{
    if (len >= 12) {
        buf[11] &= 0x7f;
    }
}

#endif

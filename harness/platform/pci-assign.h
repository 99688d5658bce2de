/*
 * PCI resource math, free of any I/O so it can be unit-tested:
 * decoding BAR sizes from probe values and placing BARs and bridge windows
 * in a bus tree the way firmware (SeaBIOS) does: per bus, items sorted by
 * alignment (largest first) are packed upward from the bus window's base;
 * a bridge's window is sized to hold its secondary bus, rounded to the
 * window granularity (I/O 4 KiB, memory 1 MiB).
 */
#ifndef DEXT_PCI_ASSIGN_H
#define DEXT_PCI_ASSIGN_H

#include <stdbool.h>
#include <stdint.h>
#include <glib.h>

typedef enum {
    DEXT_RES_IO = 0,
    DEXT_RES_MEM,        /* non-prefetchable memory (32-bit addresses) */
    DEXT_RES_PREF,       /* prefetchable memory (64-bit when all allow) */
    DEXT_RES_NTYPES,
} DextResType;

/*
 * Decode a BAR from its original value and the value read back after
 * writing all ones (lo, and hi for the upper half of a 64-bit BAR).
 * Returns the size in bytes (0: BAR not implemented).  *is_io, *is64 and
 * *pref describe it.
 */
uint64_t dext_bar_decode(uint32_t orig_lo, uint32_t probe_lo, uint32_t probe_hi,
                         bool *is_io, bool *is64, bool *pref);

typedef struct DextResItem {
    int owner;           /* caller's cookie (function index) */
    int bar;             /* BAR index, or -1 for a bridge window */
    DextResType type;
    bool is64;           /* may be placed above 4 GiB */
    uint64_t size;
    uint64_t align;
    uint64_t addr;       /* out */
    struct DextResBus *child;   /* bridge window: the bus behind it */
} DextResItem;

typedef struct DextResBus {
    GPtrArray *items;    /* DextResItem*, owned (BARs and child windows) */
    bool pref64;         /* bridge supports a 64-bit prefetchable window */
    /* out: the window this bus was given per type (size 0: none) */
    uint64_t base[DEXT_RES_NTYPES];
    uint64_t size[DEXT_RES_NTYPES];
    uint64_t align[DEXT_RES_NTYPES];
} DextResBus;

DextResBus *dext_res_bus_new(bool pref64);
void dext_res_bus_free(DextResBus *b);            /* recursive */
DextResItem *dext_res_add_bar(DextResBus *b, int owner, int bar,
                              DextResType type, bool is64, uint64_t size);
/* Attach @child behind a bridge @owner; windows for each type are added. */
void dext_res_add_bridge(DextResBus *parent, int owner, DextResBus *child);

typedef struct DextResWindows {
    uint64_t io_base, io_end;        /* end exclusive */
    uint64_t mem32_base, mem32_end;
    uint64_t mem64_base, mem64_end;
} DextResWindows;

/*
 * Size and place everything below @root.  Prefetchable memory goes above
 * 4 GiB when every prefetchable item is 64-bit and every bridge on the way
 * supports a 64-bit window, else it shares the 32-bit window.
 * Returns 0, or -ENOSPC naming nothing (the caller reports) when a root
 * window is too small; -EINVAL on bad sizes (not powers of two).
 */
int dext_res_assign(DextResBus *root, const DextResWindows *w);

/*
 * Like dext_res_assign(), but when a root window is too small, leave the
 * largest BAR competing for that window unassigned and try again, so one
 * oversized or hostile device does not cost every other device its
 * resources.  Each BAR given up is removed from its bus and appended (a
 * copy) to @dropped (GArray of DextResItem).  Returns 0 or -EINVAL.
 */
int dext_res_assign_best(DextResBus *root, const DextResWindows *w,
                         GArray *dropped);

#endif

/*
 * Unit tests of the DMA range allocator (range-alloc.c): alignment,
 * exhaustion, coalescing, bad frees, and a randomised run against a
 * shadow model with the invariant checker after every step.
 */
#include <errno.h>
#include <CUnit/Basic.h>
#include <glib.h>

#include "range-alloc.h"

static void test_basic(void)
{
    DextRangeAlloc *ra = dext_range_alloc_new(0x100000, 0x10000, 0x1000);
    uint64_t a, b, c, sz;

    CU_ASSERT_PTR_NOT_NULL_FATAL(ra);
    CU_ASSERT_EQUAL(dext_range_alloc(ra, 1, 0, &a, &sz), 0);
    CU_ASSERT_EQUAL(a, 0x100000);
    CU_ASSERT_EQUAL(sz, 0x1000);              /* rounded to the granule */
    CU_ASSERT_EQUAL(dext_range_alloc(ra, 0x1001, 0, &b, &sz), 0);
    CU_ASSERT_EQUAL(b, 0x101000);
    CU_ASSERT_EQUAL(sz, 0x2000);
    CU_ASSERT_EQUAL(dext_range_alloc(ra, 0x1000, 0x8000, &c, NULL), 0);
    CU_ASSERT_EQUAL(c, 0x108000);             /* aligned up, hole left */
    CU_ASSERT_EQUAL(dext_range_alloc_holes(ra), 2);
    CU_ASSERT_EQUAL(dext_range_alloc_free_bytes(ra), 0x10000 - 0x4000);
    CU_ASSERT_EQUAL(dext_range_alloc_check(ra), 0);
    CU_ASSERT_EQUAL(dext_range_alloc_size(ra, b), 0x2000);
    CU_ASSERT_EQUAL(dext_range_release(ra, b), 0);
    CU_ASSERT_EQUAL(dext_range_release(ra, a), 0);
    CU_ASSERT_EQUAL(dext_range_release(ra, c), 0);
    CU_ASSERT_EQUAL(dext_range_alloc_holes(ra), 1);   /* fully coalesced */
    CU_ASSERT_EQUAL(dext_range_alloc_largest(ra), 0x10000);
    CU_ASSERT_EQUAL(dext_range_alloc_check(ra), 0);
    dext_range_alloc_free_all(ra);
}

static void test_errors(void)
{
    DextRangeAlloc *ra = dext_range_alloc_new(0, 0x4000, 0x1000);
    uint64_t a, b;

    CU_ASSERT_PTR_NULL(dext_range_alloc_new(0x800, 0x4000, 0x1000));
    CU_ASSERT_PTR_NULL(dext_range_alloc_new(0, 0, 0x1000));
    CU_ASSERT_PTR_NULL(dext_range_alloc_new(0, 0x4000, 0x1001));
    CU_ASSERT_PTR_NULL(dext_range_alloc_new(~0ull & ~0xfffull, 0x2000, 0x1000));
    CU_ASSERT_EQUAL(dext_range_alloc(ra, 0, 0, &a, NULL), -EINVAL);
    CU_ASSERT_EQUAL(dext_range_alloc(ra, 0x1000, 3, &a, NULL), -EINVAL);
    CU_ASSERT_EQUAL(dext_range_alloc(ra, ~0ull, 0, &a, NULL), -EINVAL);
    CU_ASSERT_EQUAL(dext_range_alloc(ra, 0x5000, 0, &a, NULL), -ENOMEM);
    CU_ASSERT_EQUAL(dext_range_alloc(ra, 0x1000, 1ull << 63, &a, NULL),
                    0);   /* base 0 is aligned to anything */
    CU_ASSERT_EQUAL(dext_range_alloc(ra, 0x1000, 0x8000, &b, NULL), -ENOMEM);
    CU_ASSERT_EQUAL(dext_range_release(ra, a + 0x1000), -EINVAL);
    CU_ASSERT_EQUAL(dext_range_release(ra, a), 0);
    CU_ASSERT_EQUAL(dext_range_release(ra, a), -EINVAL);  /* double free */
    CU_ASSERT_EQUAL(dext_range_alloc(ra, 0x4000, 0, &a, NULL), 0);
    CU_ASSERT_EQUAL(dext_range_alloc(ra, 1, 0, &b, NULL), -ENOMEM);
    CU_ASSERT_EQUAL(dext_range_alloc_check(ra), 0);
    dext_range_alloc_free_all(ra);
}

static void test_coalesce_middle(void)
{
    DextRangeAlloc *ra = dext_range_alloc_new(0, 0x5000, 0x1000);
    uint64_t a[5];

    for (int i = 0; i < 5; i++) {
        CU_ASSERT_EQUAL(dext_range_alloc(ra, 0x1000, 0, &a[i], NULL), 0);
    }
    CU_ASSERT_EQUAL(dext_range_release(ra, a[1]), 0);
    CU_ASSERT_EQUAL(dext_range_release(ra, a[3]), 0);
    CU_ASSERT_EQUAL(dext_range_alloc_holes(ra), 2);
    CU_ASSERT_EQUAL(dext_range_release(ra, a[2]), 0);   /* joins both */
    CU_ASSERT_EQUAL(dext_range_alloc_holes(ra), 1);
    CU_ASSERT_EQUAL(dext_range_alloc_largest(ra), 0x3000);
    CU_ASSERT_EQUAL(dext_range_alloc_check(ra), 0);
    dext_range_alloc_free_all(ra);
}

/* Random alloc/free against a byte map; any overlap or accounting error
 * fails. */
static void test_random(void)
{
    const uint64_t gran = 0x1000, npages = 256;
    DextRangeAlloc *ra = dext_range_alloc_new(0x40000000, npages * gran, gran);
    guint8 used[256] = { 0 };
    GArray *live = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    GRand *rnd = g_rand_new_with_seed(1234);

    for (int step = 0; step < 20000; step++) {
        if (live->len && g_rand_boolean(rnd)) {
            guint i = g_rand_int_range(rnd, 0, live->len);
            uint64_t a = g_array_index(live, uint64_t, i);
            uint64_t sz = dext_range_alloc_size(ra, a);

            CU_ASSERT_EQUAL(dext_range_release(ra, a), 0);
            for (uint64_t p = 0; p < sz / gran; p++) {
                used[(a - 0x40000000) / gran + p] = 0;
            }
            g_array_remove_index_fast(live, i);
        } else {
            uint64_t sz = g_rand_int_range(rnd, 1, 16 * gran);
            uint64_t al = 1ull << g_rand_int_range(rnd, 0, 17);
            uint64_t a, rs;
            int r = dext_range_alloc(ra, sz, al, &a, &rs);

            if (r == 0) {
                CU_ASSERT_EQUAL(a % MAX(al, gran), 0);
                CU_ASSERT(rs >= sz && rs % gran == 0);
                for (uint64_t p = 0; p < rs / gran; p++) {
                    uint64_t idx = (a - 0x40000000) / gran + p;

                    CU_ASSERT_FATAL(idx < npages);
                    CU_ASSERT_EQUAL_FATAL(used[idx], 0);
                    used[idx] = 1;
                }
                g_array_append_val(live, a);
            } else {
                CU_ASSERT_EQUAL(r, -ENOMEM);
            }
        }
        CU_ASSERT_EQUAL_FATAL(dext_range_alloc_check(ra), 0);
    }
    for (guint i = 0; i < live->len; i++) {
        CU_ASSERT_EQUAL(dext_range_release(ra, g_array_index(live, uint64_t,
                                                             i)), 0);
    }
    CU_ASSERT_EQUAL(dext_range_alloc_holes(ra), 1);
    CU_ASSERT_EQUAL(dext_range_alloc_free_bytes(ra), npages * gran);
    g_array_free(live, TRUE);
    g_rand_free(rnd);
    dext_range_alloc_free_all(ra);
}

int main(void)
{
    CU_pSuite s;
    unsigned fails;

    if (CU_initialize_registry() != CUE_SUCCESS) {
        return 2;
    }
    s = CU_add_suite("range-alloc", NULL, NULL);
    CU_add_test(s, "basic", test_basic);
    CU_add_test(s, "errors", test_errors);
    CU_add_test(s, "coalesce-middle", test_coalesce_middle);
    CU_add_test(s, "random-vs-shadow", test_random);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}

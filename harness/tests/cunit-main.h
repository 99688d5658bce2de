/* Shared main() for the CUnit test programs: runs every registered suite,
 * exits non-zero on any failure (meson reads the exit status). */
#ifndef DEXT_CUNIT_MAIN_H
#define DEXT_CUNIT_MAIN_H

#include <CUnit/Basic.h>
#include <stdlib.h>

typedef struct {
    const char *name;
    CU_TestFunc fn;
} DextTest;

static inline int dext_cunit_run(const char *suite, const DextTest *tests)
{
    if (CU_initialize_registry() != CUE_SUCCESS) {
        return 2;
    }
    CU_pSuite s = CU_add_suite(suite, NULL, NULL);
    for (const DextTest *t = tests; t->name; t++) {
        CU_add_test(s, t->name, t->fn);
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    unsigned ran = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    return (failed || ran == 0) ? 1 : 0;
}

#endif

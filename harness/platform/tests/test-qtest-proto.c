/*
 * Unit tests of the qtest line protocol helpers (qtest-proto.c): reply and
 * async-line classification, strict number parsing, command formatting.
 * Guards the demultiplexer: a misclassified line would hand an interrupt
 * to a waiting reader or a reply to the IRQ path.
 */
#include <errno.h>
#include <string.h>
#include <CUnit/Basic.h>

#include "qtest-proto.h"

static void test_replies(void)
{
    QtLine l;
    uint64_t v;

    CU_ASSERT_EQUAL(qt_parse_line("OK", &l), QT_LINE_OK);
    CU_ASSERT_STRING_EQUAL(l.rest, "");
    CU_ASSERT_EQUAL(qt_parse_line("OK 0x00000000deadbeef", &l), QT_LINE_OK);
    CU_ASSERT_EQUAL(qt_parse_u64(l.rest, &v), 0);
    CU_ASSERT_EQUAL(v, 0xdeadbeef);
    CU_ASSERT_EQUAL(qt_parse_line("FAIL Unknown command 'x'", &l),
                    QT_LINE_FAIL);
    CU_ASSERT_STRING_EQUAL(l.rest, "Unknown command 'x'");
    CU_ASSERT_EQUAL(qt_parse_line("ERR invalid argument size", &l),
                    QT_LINE_FAIL);
    CU_ASSERT_EQUAL(qt_parse_line("OKAY", &l), QT_LINE_BAD);
    CU_ASSERT_EQUAL(qt_parse_line("", &l), QT_LINE_BAD);
    CU_ASSERT_EQUAL(qt_parse_line("FAILED", &l), QT_LINE_BAD);
}

static void test_async(void)
{
    QtLine l;

    CU_ASSERT_EQUAL(qt_parse_line("IRQ raise 16", &l), QT_LINE_IRQ_RAISE);
    CU_ASSERT_EQUAL(l.a, 16);
    CU_ASSERT(qt_line_is_async(l.kind));
    CU_ASSERT_EQUAL(qt_parse_line("IRQ lower 0", &l), QT_LINE_IRQ_LOWER);
    CU_ASSERT_EQUAL(l.a, 0);
    CU_ASSERT_EQUAL(qt_parse_line("IRQ msi 0x00000000fee00000 0x80000801",
                                  &l), QT_LINE_IRQ_MSI);
    CU_ASSERT_EQUAL(l.a, 0xfee00000ull);
    CU_ASSERT_EQUAL(l.b, 0x80000801u);
    CU_ASSERT_EQUAL(qt_parse_line("IRQ msi 0xfee00000", &l), QT_LINE_BAD);
    CU_ASSERT_EQUAL(qt_parse_line("IRQ msi 0xfee00000 0x1ffffffff", &l),
                    QT_LINE_BAD);
    CU_ASSERT_EQUAL(qt_parse_line("IRQ msi zz 0x1", &l), QT_LINE_BAD);
    CU_ASSERT_EQUAL(qt_parse_line("IRQ raise", &l), QT_LINE_BAD);
    CU_ASSERT_EQUAL(qt_parse_line("IRQ raise -1", &l), QT_LINE_BAD);
    CU_ASSERT_EQUAL(qt_parse_line("IRQ raise 5x", &l), QT_LINE_BAD);
    CU_ASSERT_EQUAL(qt_parse_line("IRQ wiggle 5", &l), QT_LINE_BAD);
    CU_ASSERT_FALSE(qt_line_is_async(QT_LINE_OK));
}

static void test_numbers(void)
{
    uint64_t v;

    CU_ASSERT_EQUAL(qt_parse_u64("0xffffffffffffffff", &v), 0);
    CU_ASSERT_EQUAL(v, ~0ull);
    CU_ASSERT_EQUAL(qt_parse_u64("0x10000000000000000", &v), -EINVAL);
    CU_ASSERT_EQUAL(qt_parse_u64("123", &v), 0);
    CU_ASSERT_EQUAL(v, 123);
    CU_ASSERT_EQUAL(qt_parse_u64("", &v), -EINVAL);
    CU_ASSERT_EQUAL(qt_parse_u64("0x", &v), -EINVAL);
    CU_ASSERT_EQUAL(qt_parse_u64("0x12 34", &v), -EINVAL);
    CU_ASSERT_EQUAL(qt_parse_u64("-1", &v), -EINVAL);
    CU_ASSERT_EQUAL(qt_parse_u64("AAAA==", &v), -EINVAL);
}

static void test_format(void)
{
    char b[64];

    CU_ASSERT_EQUAL(qt_fmt_mem_write(b, sizeof(b), 4, 0xc0000000, 0x1ffffffffull),
                    (int)strlen("writel 0xc0000000 0xffffffff\n"));
    CU_ASSERT_STRING_EQUAL(b, "writel 0xc0000000 0xffffffff\n");
    CU_ASSERT(qt_fmt_mem_write(b, sizeof(b), 1, 0x10, 0x1234) > 0);
    CU_ASSERT_STRING_EQUAL(b, "writeb 0x10 0x34\n");
    CU_ASSERT(qt_fmt_mem_write(b, sizeof(b), 8, 0x8000000000ull, ~0ull) > 0);
    CU_ASSERT_STRING_EQUAL(b, "writeq 0x8000000000 0xffffffffffffffff\n");
    CU_ASSERT(qt_fmt_mem_read(b, sizeof(b), 2, 0xb0000000) > 0);
    CU_ASSERT_STRING_EQUAL(b, "readw 0xb0000000\n");
    CU_ASSERT_EQUAL(qt_fmt_mem_read(b, sizeof(b), 3, 0), -EINVAL);
    CU_ASSERT(qt_fmt_port_write(b, sizeof(b), 4, 0xcf8, 0x80000000) > 0);
    CU_ASSERT_STRING_EQUAL(b, "outl 0xcf8 0x80000000\n");
    CU_ASSERT(qt_fmt_port_read(b, sizeof(b), 2, 0xcfe) > 0);
    CU_ASSERT_STRING_EQUAL(b, "inw 0xcfe\n");
    CU_ASSERT_EQUAL(qt_fmt_port_read(b, sizeof(b), 8, 0), -EINVAL);
    CU_ASSERT_EQUAL(qt_fmt_port_write(b, 8, 4, 0xcf8, 1), -ENOSPC);
}

int main(void)
{
    CU_pSuite s;
    unsigned fails;

    if (CU_initialize_registry() != CUE_SUCCESS) {
        return 2;
    }
    s = CU_add_suite("qtest-proto", NULL, NULL);
    CU_add_test(s, "replies", test_replies);
    CU_add_test(s, "async-lines", test_async);
    CU_add_test(s, "numbers", test_numbers);
    CU_add_test(s, "format", test_format);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}

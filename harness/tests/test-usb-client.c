/* USB client library, the parts that need no provider: walking a
 * configuration descriptor set the provider sent (never trusting a length)
 * and decoding string descriptors. */
#include "cunit-main.h"
#include "usb-client.h"
#include "usb-test-descriptors.h"

#include <errno.h>
#include <string.h>


static void test_config_check(void)
{
    CU_ASSERT_EQUAL(dext__usb_config_check(cfg_hs, sizeof(cfg_hs)), (long)sizeof(cfg_hs));
    /* wTotalLength beyond what came: walk only what came */
    CU_ASSERT_EQUAL(dext__usb_config_check(cfg_hs, 40), 40);
    uint8_t c[sizeof(cfg_hs)];
    memcpy(c, cfg_hs, sizeof(c));
    c[2] = 20; /* shorter wTotalLength: the rest is ignored */
    CU_ASSERT_EQUAL(dext__usb_config_check(c, sizeof(c)), 20);
    c[2] = 3;
    CU_ASSERT_EQUAL(dext__usb_config_check(c, sizeof(c)), -EINVAL);
    memcpy(c, cfg_hs, sizeof(c));
    c[1] = 4; /* not a configuration descriptor */
    CU_ASSERT_EQUAL(dext__usb_config_check(c, sizeof(c)), -EINVAL);
    c[1] = 2;
    c[0] = 8; /* too short */
    CU_ASSERT_EQUAL(dext__usb_config_check(c, sizeof(c)), -EINVAL);
    CU_ASSERT_EQUAL(dext__usb_config_check(cfg_hs, 8), -EINVAL);
    CU_ASSERT_EQUAL(dext__usb_config_check(NULL, 100), -EINVAL);
}

static void test_find(void)
{
    size_t n = sizeof(cfg_hs);
    CU_ASSERT_EQUAL(dext__usb_find_interface(cfg_hs, n, 0, 0), 9);
    CU_ASSERT_EQUAL(dext__usb_find_interface(cfg_hs, n, 0, 1), 39);
    CU_ASSERT_EQUAL(dext__usb_find_interface(cfg_hs, n, 0, 2), -ENOENT);
    CU_ASSERT_EQUAL(dext__usb_find_interface(cfg_hs, n, 1, 0), -ENOENT);
    long e = dext__usb_find_endpoint(cfg_hs, n, 0, 0, 0x82);
    CU_ASSERT_EQUAL(e, 32);
    CU_ASSERT_EQUAL(cfg_hs[e + 4], 16);
    e = dext__usb_find_endpoint(cfg_hs, n, 0, 1, 0x82);
    CU_ASSERT_EQUAL(e, 62);
    CU_ASSERT_EQUAL(cfg_hs[e + 4], 64);
    /* an endpoint of another alternate setting is not this one's */
    CU_ASSERT_EQUAL(dext__usb_find_endpoint(cfg_hs, n, 0, 0, 0x83), -ENOENT);
    CU_ASSERT_EQUAL(dext__usb_find_endpoint(cfg_hs, n, 0, 3, 0x81), -ENOENT);
}

/* Guards: bNumEndpoints bounds the search (a stray endpoint descriptor
 * after the declared ones is not the interface's). */
static void test_num_endpoints(void)
{
    uint8_t c[sizeof(cfg_hs)];
    memcpy(c, cfg_hs, sizeof(c));
    c[9 + 4] = 2; /* alt 0 declares two endpoints */
    CU_ASSERT_EQUAL(dext__usb_find_endpoint(c, sizeof(c), 0, 0, 0x81), 25);
    CU_ASSERT_EQUAL(dext__usb_find_endpoint(c, sizeof(c), 0, 0, 0x82), -ENOENT);
    c[9 + 4] = 0;
    CU_ASSERT_EQUAL(dext__usb_find_endpoint(c, sizeof(c), 0, 0, 0x01), -ENOENT);
}

/* Guards: malformed descriptors (zero length, running past the end,
 * truncated interface/endpoint descriptors) end the walk with an error,
 * never an out-of-bounds read (run under ASan in check-asan). */
static void test_malformed(void)
{
    uint8_t c[sizeof(cfg_hs)];
    memcpy(c, cfg_hs, sizeof(c));
    c[18] = 0; /* bLength 0 of the first endpoint: would loop forever */
    CU_ASSERT_EQUAL(dext__usb_find_endpoint(c, sizeof(c), 0, 0, 0x81), -EINVAL);
    CU_ASSERT_EQUAL(dext__usb_find_interface(c, sizeof(c), 0, 1), -EINVAL);
    memcpy(c, cfg_hs, sizeof(c));
    c[62] = 200; /* runs past the end */
    CU_ASSERT_EQUAL(dext__usb_find_endpoint(c, sizeof(c), 0, 1, 0x82), -EINVAL);
    /* alt 0 is still found before the bad one */
    CU_ASSERT_EQUAL(dext__usb_find_endpoint(c, sizeof(c), 0, 0, 0x82), 32);
    memcpy(c, cfg_hs, sizeof(c));
    c[9] = 5; /* a 5-byte "interface": skipped, not read as one */
    c[14] = 4; /* ... and the next starts inside the old one: class byte 4 */
    long r = dext__usb_find_interface(c, sizeof(c), 0, 0);
    CU_ASSERT(r == -ENOENT || r == -EINVAL);
    memcpy(c, cfg_hs, sizeof(c));
    c[32] = 4; /* a 4-byte endpoint descriptor is not an endpoint */
    r = dext__usb_find_endpoint(c, sizeof(c), 0, 0, 0x82);
    CU_ASSERT(r == -ENOENT || r == -EINVAL);
    /* walking a set cut in the middle of a descriptor */
    for (size_t cut = 9; cut < sizeof(cfg_hs); cut++) {
        r = dext__usb_find_endpoint(cfg_hs, cut, 0, 1, 0x82);
        CU_ASSERT(r == -ENOENT || r == -EINVAL || (r > 0 && (size_t)r + 7 <= cut));
    }
    size_t off = 0;
    int t, steps = 0;
    while ((t = dext__usb_desc_next(cfg_hs, sizeof(cfg_hs), &off)) > 0) {
        steps++;
    }
    CU_ASSERT_EQUAL(t, 0);
    CU_ASSERT_EQUAL(steps, 8);
}

static void test_string(void)
{
    const uint8_t s[] = { 16, 3, 'd', 0, 'e', 0, 'x', 0, 't', 0, 0xe9, 0, 0x3a, 0x26, 'b', 0 };
    char buf[64];
    CU_ASSERT_EQUAL(dext__usb_string_decode(s, sizeof(s), buf, sizeof(buf)), 7);
    CU_ASSERT_STRING_EQUAL(buf, "dext??b");
    /* bLength beyond what was received: only what came */
    CU_ASSERT_EQUAL(dext__usb_string_decode(s, 6, buf, sizeof(buf)), 2);
    CU_ASSERT_STRING_EQUAL(buf, "de");
    /* small buffer: truncated, terminated */
    CU_ASSERT_EQUAL(dext__usb_string_decode(s, sizeof(s), buf, 4), 3);
    CU_ASSERT_STRING_EQUAL(buf, "dex");
    /* odd bLength: the half code unit is dropped */
    const uint8_t odd[] = { 5, 3, 'a', 0, 'b' };
    CU_ASSERT_EQUAL(dext__usb_string_decode(odd, sizeof(odd), buf, sizeof(buf)), 1);
    const uint8_t bad[] = { 4, 2, 'a', 0 };
    CU_ASSERT_EQUAL(dext__usb_string_decode(bad, sizeof(bad), buf, sizeof(buf)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(buf, "");
    CU_ASSERT_EQUAL(dext__usb_string_decode(s, 1, buf, sizeof(buf)), -EINVAL);
    CU_ASSERT_EQUAL(dext__usb_string_decode(s, sizeof(s), buf, 0), -ENOSPC);
}

int main(void)
{
    static const DextTest tests[] = {
        { "config-check", test_config_check },
        { "find-interface-endpoint", test_find },
        { "num-endpoints-bound", test_num_endpoints },
        { "malformed", test_malformed },
        { "string-decode", test_string },
        { NULL, NULL },
    };
    return dext_cunit_run("usb-client", tests);
}

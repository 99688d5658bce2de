/*
 * Unit tests of the USB descriptor parsers (harness/usb/usb.c): a good
 * SuperSpeed configuration, every truncation of it, broken lengths, and
 * random bytes.  Guards that descriptor bytes from a device (untrusted)
 * never make the parser read outside its buffer or loop.
 */
#include <errno.h>
#include <string.h>

#include "usb.h"

/* config: 1 interface, alt 0 with bulk OUT + companion, bulk IN +
 * companion, a class-specific descriptor, interrupt IN + companion */
static const uint8_t good[] = {
    9, 2, 56, 0, 1, 1, 4, 0x80, 50,
    9, 4, 0, 0, 3, 0xff, 0x44, 1, 5,
    7, 5, 0x01, 2, 0x00, 0x04, 0,   6, 0x30, 15, 0, 0, 0,
    7, 5, 0x81, 2, 0x00, 0x04, 0,   6, 0x30, 15, 0, 0, 0,
    4, 0x24, 1, 2,
    7, 5, 0x82, 3, 16, 0, 4,        6, 0x30, 0, 0, 16, 0,
};

static uint8_t *fixed_good(size_t *len)
{
    uint8_t *b = g_memdup2(good, sizeof(good));

    b[2] = sizeof(good) & 0xff;        /* wTotalLength = what is there */
    b[3] = sizeof(good) >> 8;
    *len = sizeof(good);
    return b;
}

static void test_parse(void)
{
    size_t len;
    g_autofree uint8_t *b = fixed_good(&len);
    DextUsbConfigDesc c;
    const DextUsbInterfaceDesc *i;

    g_assert_cmpint(dext_usb_parse_config(b, len, &c), ==, 0);
    g_assert_cmpuint(c.bConfigurationValue, ==, 1);
    g_assert_cmpuint(c.n_alts, ==, 1);
    i = &c.alts[0];
    g_assert_cmpuint(i->bInterfaceClass, ==, 0xff);
    g_assert_cmpuint(i->n_endpoints, ==, 3);
    g_assert_cmphex(i->endpoints[0].bEndpointAddress, ==, 0x01);
    g_assert_cmpuint(i->endpoints[0].wMaxPacketSize, ==, 1024);
    g_assert_true(i->endpoints[0].has_companion);
    g_assert_cmpuint(i->endpoints[0].bMaxBurst, ==, 15);
    g_assert_cmphex(i->endpoints[2].bEndpointAddress, ==, 0x82);
    g_assert_cmpuint(i->endpoints[2].wBytesPerInterval, ==, 16);
    dext_usb_config_desc_free(&c);
}

/* every prefix: wTotalLength larger than the buffer -> -EINVAL */
static void test_truncated(void)
{
    size_t len;
    g_autofree uint8_t *b = fixed_good(&len);
    DextUsbConfigDesc c;

    for (size_t n = 0; n < len; n++) {
        g_autofree uint8_t *copy = g_memdup2(b, n ? n : 1);

        g_assert_cmpint(dext_usb_parse_config(copy, n, &c), ==, -EINVAL);
    }
}

static void test_bad_lengths(void)
{
    size_t len;
    DextUsbConfigDesc c;
    g_autofree uint8_t *b = fixed_good(&len);

    b[9] = 0;                           /* bLength 0 would never progress */
    g_assert_cmpint(dext_usb_parse_config(b, len, &c), ==, -EINVAL);
    b[9] = 200;                         /* runs past wTotalLength */
    g_assert_cmpint(dext_usb_parse_config(b, len, &c), ==, -EINVAL);
    b[9] = 9;
    b[18] = 3;                          /* endpoint too short */
    g_assert_cmpint(dext_usb_parse_config(b, len, &c), ==, -EINVAL);
    b[18] = 7;
    b[20] = 0x80;                       /* endpoint 0 is not in configs */
    g_assert_cmpint(dext_usb_parse_config(b, len, &c), ==, -EINVAL);
    b[20] = 0x01;
    b[2] = 8;                           /* wTotalLength < 9 */
    b[3] = 0;
    g_assert_cmpint(dext_usb_parse_config(b, len, &c), ==, -EINVAL);
}

static void test_device(void)
{
    static const uint8_t dev[18] = {
        18, 1, 0x20, 0x03, 0, 0, 0, 9, 0x09, 0x12, 0x01, 0, 0, 1, 1, 2, 3, 1,
    };
    DextUsbDeviceDesc d;

    g_assert_cmpint(dext_usb_parse_device(dev, sizeof(dev), &d), ==, 0);
    g_assert_cmphex(d.bcdUSB, ==, 0x0320);
    g_assert_cmphex(d.idVendor, ==, 0x1209);
    g_assert_cmphex(d.bcdDevice, ==, 0x0100);
    g_assert_cmpint(dext_usb_parse_device(dev, 17, &d), ==, -EINVAL);
}

/* random bytes: never crash, never succeed with garbage indexes */
static void test_random(void)
{
    GRand *r = g_rand_new_with_seed(42);
    DextUsbConfigDesc c;
    unsigned parsed = 0;

    for (unsigned it = 0; it < 200000; it++) {
        size_t len = g_rand_int_range(r, 1, 80);
        g_autofree uint8_t *b = g_malloc(len);

        for (size_t k = 0; k < len; k++) {
            b[k] = g_rand_int_range(r, 0, 4) ? (uint32_t)g_rand_int_range(r, 0, 12)
                                             : g_rand_int(r);
        }
        if (g_rand_boolean(r) && len >= 9) {
            b[0] = 9;
            b[1] = 2;
            b[2] = len;
            b[3] = 0;
        }
        if (dext_usb_parse_config(b, len, &c) == 0) {
            parsed++;
            for (unsigned a = 0; a < c.n_alts; a++) {
                g_assert_cmpuint(c.alts[a].n_endpoints, <=, 30);
            }
            dext_usb_config_desc_free(&c);
        }
    }
    g_assert_cmpuint(parsed, >, 0);
    g_rand_free(r);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/usb/desc/config/parse", test_parse);
    g_test_add_func("/usb/desc/config/truncated", test_truncated);
    g_test_add_func("/usb/desc/config/bad-lengths", test_bad_lengths);
    g_test_add_func("/usb/desc/config/random", test_random);
    g_test_add_func("/usb/desc/device", test_device);
    return g_test_run();
}

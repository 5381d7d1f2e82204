/* Units of conf/units.h: durations, sizes, rates, and their edge cases. */
#include "conf/units.h"
#include "tests/unit/test.h"

static uint64_t dur(const char *s)
{
    uint64_t v = 12345;
    CHECK_INT(gh_parse_duration_ms(s, &v), 0);
    return v;
}

static void dur_bad(const char *s)
{
    uint64_t v = 777;
    if (gh_parse_duration_ms(s, &v) != -1)
        fprintf(stderr, "duration '%s' accepted\n", s);
    CHECK_INT(gh_parse_duration_ms(s, &v), -1);
    CHECK_INT(v, 777);     /* untouched on failure */
}

static uint64_t size(const char *s)
{
    uint64_t v = 12345;
    CHECK_INT(gh_parse_size(s, &v), 0);
    return v;
}

static void size_bad(const char *s)
{
    uint64_t v = 777;
    if (gh_parse_size(s, &v) != -1)
        fprintf(stderr, "size '%s' accepted\n", s);
    CHECK_INT(gh_parse_size(s, &v), -1);
    CHECK_INT(v, 777);
}

static double rate(const char *s)
{
    double v = -1;
    CHECK_INT(gh_parse_rate(s, &v), 0);
    return v;
}

static void rate_bad(const char *s)
{
    double v = -1;
    if (gh_parse_rate(s, &v) != -1)
        fprintf(stderr, "rate '%s' accepted\n", s);
    CHECK_INT(gh_parse_rate(s, &v), -1);
    CHECK(v == -1);
}

static void test_durations(void)
{
    CHECK_INT(dur("500ms"), 500);
    CHECK_INT(dur("10s"), 10000);
    CHECK_INT(dur("5m"), 300000);
    CHECK_INT(dur("1h"), 3600000);
    CHECK_INT(dur("30"), 30000);        /* a bare number is seconds */
    CHECK_INT(dur("0"), 0);
    CHECK_INT(dur("0ms"), 0);
    CHECK_INT(dur("007s"), 7000);
    CHECK_INT(dur("10S"), 10000);       /* units are case-insensitive */
    CHECK_INT(dur("250MS"), 250);
    CHECK(dur("18446744073709551615ms") == UINT64_MAX);

    dur_bad("");
    dur_bad("s");
    dur_bad("ms");
    dur_bad("-1s");
    dur_bad("+1s");
    dur_bad(" 1s");
    dur_bad("1s ");
    dur_bad("1 s");
    dur_bad("1.5s");
    dur_bad("10d");
    dur_bad("10sec");
    dur_bad("10ss");
    dur_bad("1h30m");
    dur_bad("abc");
    dur_bad("0x10");
    dur_bad("18446744073709551616ms");  /* overflows the number itself */
    dur_bad("18446744073709551615s");   /* overflows after the unit */
    dur_bad("5124095576030432h");       /* just above UINT64_MAX ms */
    CHECK_INT(gh_parse_duration_ms(NULL, &(uint64_t){ 0 }), -1);
}

static void test_sizes(void)
{
    CHECK_INT(size("512"), 512);
    CHECK_INT(size("0"), 0);
    CHECK_INT(size("64k"), 64 * 1024);
    CHECK_INT(size("64K"), 64 * 1024);
    CHECK_INT(size("64kb"), 64 * 1024);
    CHECK_INT(size("64KB"), 64 * 1024);
    CHECK_INT(size("64kB"), 64 * 1024);
    CHECK_INT(size("10m"), 10 * 1024 * 1024);
    CHECK_INT(size("10MB"), 10 * 1024 * 1024);
    CHECK_INT(size("1g"), 1024LL * 1024 * 1024);
    CHECK_INT(size("1Gb"), 1024LL * 1024 * 1024);
    CHECK(size("16g") == 16ULL * 1024 * 1024 * 1024);
    CHECK(size("17179869183g") == 17179869183ULL * 1024 * 1024 * 1024);

    size_bad("");
    size_bad("k");
    size_bad("-1");
    size_bad("+1");
    size_bad("1.5m");
    size_bad("10t");
    size_bad("10kib");
    size_bad("10 k");
    size_bad(" 10");
    size_bad("10b");
    size_bad("1e6");
    size_bad("17179869184g");           /* 2^64 bytes */
    size_bad("99999999999999999999");
}

static void test_rates(void)
{
    CHECK(rate("20/s") == 20.0);
    CHECK(rate("600/m") == 10.0);
    CHECK(rate("10000/h") > 2.7777 && rate("10000/h") < 2.7778);
    CHECK(rate("1/h") > 0);
    CHECK(rate("5/S") == 5.0);

    rate_bad("");
    rate_bad("0/s");                    /* zero rate */
    rate_bad("00/m");
    rate_bad("20");
    rate_bad("20/");
    rate_bad("/s");
    rate_bad("20/d");
    rate_bad("20/sec");
    rate_bad("20 /s");
    rate_bad("-5/s");
    rate_bad("1.5/s");
    rate_bad("20/s/s");
    rate_bad("99999999999999999999/s");
}

int main(void)
{
    test_durations();
    test_sizes();
    test_rates();
    TEST_MAIN_END();
}

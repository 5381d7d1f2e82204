/* Assertions for unit tests. Never compiled out; a failed check prints where
 * and what, and the test binary exits non-zero at the end. */
#ifndef GH_TEST_H
#define GH_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int gh_test_failed, gh_test_passed;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (cond) {                                                          \
            gh_test_passed++;                                                \
        } else {                                                             \
            gh_test_failed++;                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                  \
        }                                                                    \
    } while (0)

#define CHECK_INT(a, b)                                                        \
    do {                                                                       \
        long long gh_a_ = (long long)(a), gh_b_ = (long long)(b);              \
        if (gh_a_ == gh_b_) {                                                  \
            gh_test_passed++;                                                  \
        } else {                                                               \
            gh_test_failed++;                                                  \
            fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", __FILE__,    \
                    __LINE__, #a, gh_a_, gh_b_);                               \
        }                                                                      \
    } while (0)

#define CHECK_STR(a, b)                                                        \
    do {                                                                       \
        const char *gh_a_ = (a), *gh_b_ = (b);                                 \
        if (gh_a_ && gh_b_ && strcmp(gh_a_, gh_b_) == 0) {                     \
            gh_test_passed++;                                                  \
        } else {                                                               \
            gh_test_failed++;                                                  \
            fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n",          \
                    __FILE__, __LINE__, #a, gh_a_ ? gh_a_ : "(null)",          \
                    gh_b_ ? gh_b_ : "(null)");                                 \
        }                                                                      \
    } while (0)

#define TEST_MAIN_END()                                                      \
    do {                                                                     \
        printf("%s: %d checks passed, %d failed\n", __FILE__, gh_test_passed, \
               gh_test_failed);                                              \
        return gh_test_failed ? 1 : 0;                                       \
    } while (0)

#endif

// Minimal test harness: CHECK records a failure with file:line and keeps going; each test binary ends
// with the line "N passed, N failed, N skipped" that scripts/run-tests.sh adds up.
#ifndef MT_HARNESS_H
#define MT_HARNESS_H

#include <stdio.h>
#include <string.h>

static int th_passed, th_failed, th_skipped, th_case_failed;

#define CHECK(cond, ...)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            th_case_failed = 1;                                                                              \
            printf("    %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);                              \
            printf(__VA_ARGS__);                                                                             \
            printf("\n");                                                                                    \
        }                                                                                                    \
    } while (0)

// Runs one test case (a function returning void) and reports it.
#define RUN(fn, ...)                                                                                         \
    do {                                                                                                     \
        th_case_failed = 0;                                                                                  \
        fn(__VA_ARGS__);                                                                                     \
        if (th_case_failed) {                                                                                \
            th_failed++;                                                                                     \
            printf("FAIL %s\n", #fn);                                                                        \
        } else {                                                                                             \
            th_passed++;                                                                                     \
            printf("ok   %s\n", #fn);                                                                        \
        }                                                                                                    \
        fflush(stdout);                                                                                      \
    } while (0)

// Named variant for parameterized cases.
#define RUN_NAMED(name, call)                                                                                \
    do {                                                                                                     \
        th_case_failed = 0;                                                                                  \
        call;                                                                                                \
        if (th_case_failed) {                                                                                \
            th_failed++;                                                                                     \
            printf("FAIL %s\n", name);                                                                       \
        } else {                                                                                             \
            th_passed++;                                                                                     \
            printf("ok   %s\n", name);                                                                       \
        }                                                                                                    \
        fflush(stdout);                                                                                      \
    } while (0)

#define SKIP(name, why)                                                                                      \
    do {                                                                                                     \
        th_skipped++;                                                                                        \
        printf("skip %s: %s\n", name, why);                                                                  \
    } while (0)

static inline int th_summary(void) {
    printf("%d passed, %d failed, %d skipped\n", th_passed, th_failed, th_skipped);
    return th_failed ? 1 : 0;
}

#endif

#include <stdio.h>
#include <time.h>
#include <stdint.h>
/* Core clock probe for benchmarks/bench_runtime.py (x86-64, gcc): a chain of dependent integer adds
   retires one add per cycle, so adds per second = the clock the core really runs at (turbo included).
   Many ~0.3 ms repetitions, best one kept: on a shared machine most repetitions get preempted. */
int main(void) {
    struct timespec a, b;
    double best = 0;
    for (int rep = 0; rep < 3000; rep++) {
        uint64_t x = rep, n = 100000ULL;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (uint64_t i = 0; i < n; i++) { __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x)); }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
        double ghz = 10.0 * n / s / 1e9;
        if (ghz > best) best = ghz;
    }
    printf("%.3f\n", best);
    return 0;
}

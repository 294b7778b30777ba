// Read bandwidth: each thread streams its share of a large array (sum of 64-bit words), best of 20 passes (about
// half a second): a shared machine's bandwidth swings from one moment to the next, and the best pass is the
// nearest to what the memory can give.
// Text generation at batch 1 reads every weight once per token, so this bounds tokens per second from above.
// Built with -O3: the reduction must be vectorized, or the adds, not the memory, are what is measured.
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 1024;
    size_t n = mib * 1024 * 1024 / sizeof(uint64_t);
    uint64_t *a = aligned_alloc(64, n * sizeof(uint64_t));
    if (!a) { fprintf(stderr, "alloc failed\n"); return 1; }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = i;  // first touch by the thread that will read it
    double best = 0; uint64_t sink = 0;
    for (int pass = 0; pass < 20; pass++) {
        double t0 = omp_get_wtime();
        uint64_t s = 0;
#pragma omp parallel for schedule(static) reduction(+:s)
        for (size_t i = 0; i < n; i++) s += a[i];
        double gbs = n * sizeof(uint64_t) / (omp_get_wtime() - t0) / 1e9;
        if (gbs > best) best = gbs;
        sink += s;
    }
    printf("{\"read_gbs\": %.3f, \"threads\": %d, \"mib\": %zu, \"sink\": %llu}\n", best, omp_get_max_threads(),
           mib, (unsigned long long)(sink & 1));
    return 0;
}

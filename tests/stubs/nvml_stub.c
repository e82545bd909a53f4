/* Stand-in for libnvidia-ml with the NVML calls gpumon and the identity probe make, same
 * signatures and structs as nvml.h: two "NVIDIA GB200" GPUs on driver 570.86.15 with CUDA 12.8;
 * GPU i draws (300 + 10 i) W at (50 + 20 i) % utilization, 8 GB used. Its energy counter is
 * that power times the wall clock (W x ms = mJ), so every process that loads the stub reads one
 * counter, as processes on one node read the driver's; INFERX_NVML_STUB_NO_ENERGY=1 makes the
 * call answer NVML_ERROR_NOT_SUPPORTED, as a GPU older than Volta does. */
#include <stdlib.h>
#include <time.h>

typedef struct { unsigned int gpu; unsigned int memory; } nvmlUtilization_t;
typedef struct { unsigned long long total; unsigned long long free; unsigned long long used; } nvmlMemory_t;
typedef void *nvmlDevice_t;

static int handles[2];

int nvmlInit_v2(void) { return 0; }
int nvmlShutdown(void) { return 0; }
const char *nvmlErrorString(int rc) { return rc ? "stub error" : "success"; }
int nvmlDeviceGetCount_v2(unsigned int *count) { *count = 2; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *h) {
    if (i > 1) return 2;
    *h = &handles[i];
    return 0;
}
static int index_of(nvmlDevice_t h) { return (int *)h == &handles[1] ? 1 : 0; }
int nvmlDeviceGetPowerUsage(nvmlDevice_t h, unsigned int *mw) { *mw = 300000 + 10000 * index_of(h); return 0; }
int nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t h, unsigned long long *mj) {
    const char *off = getenv("INFERX_NVML_STUB_NO_ENERGY");
    struct timespec ts;
    if (off && off[0] == '1') return 3; /* NVML_ERROR_NOT_SUPPORTED */
    clock_gettime(CLOCK_REALTIME, &ts);
    *mj = (300ULL + 10ULL * index_of(h)) * ((unsigned long long)ts.tv_sec * 1000ULL + (unsigned long long)ts.tv_nsec / 1000000ULL);
    return 0;
}
int nvmlDeviceGetUtilizationRates(nvmlDevice_t h, nvmlUtilization_t *u) {
    u->gpu = 50 + 20 * index_of(h);
    u->memory = 10;
    return 0;
}
int nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *m) {
    m->total = 80000000000ULL;
    m->used = 8000000000ULL;
    m->free = m->total - m->used;
    return 0;
}

static int copy_str(const char *src, char *dst, unsigned int len) {
    unsigned int i = 0;
    for (; src[i] && i + 1 < len; i++) dst[i] = src[i];
    dst[i] = 0;
    return 0;
}
int nvmlSystemGetDriverVersion(char *version, unsigned int len) { return copy_str("570.86.15", version, len); }
int nvmlSystemGetCudaDriverVersion_v2(int *v) { *v = 12080; return 0; }
int nvmlDeviceGetName(nvmlDevice_t h, char *name, unsigned int len) { (void)h; return copy_str("NVIDIA GB200", name, len); }

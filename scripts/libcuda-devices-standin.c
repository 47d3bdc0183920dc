/*
 * A stand-in for the NVIDIA driver's libcuda.so.1 that reports the GPUs a test names, on a machine with none:
 *
 *   LIBCUDA_STANDIN_DEVICES="NVIDIA H100 80GB HBM3=9.0,NVIDIA A100-SXM4-40GB=8.0"
 *
 * answers cuInit, cuDeviceGetCount, cuDeviceGet, cuDeviceGetName and the compute capability attributes of
 * cuDeviceGetAttribute for those devices. Every other symbol, and these too when the variable is unset, is
 * Debian's real driver library, linked as a dependency under the name libcuda-debian.so.1 and found next to
 * this file: it answers like a driver on a host without a GPU, so MXNet imports and counts no GPU through
 * the CUDA runtime (which asks the real library), and trains on the CPU.
 *
 * Built by scripts/fetch-libcuda-standin.sh --devices; test-only, never in an image.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    ATTRIBUTE_MAJOR = 75, /* CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR */
    ATTRIBUTE_MINOR = 76,
    MAX_DEVICES = 16,
};

static struct {
    char name[256];
    int major, minor;
} devices[MAX_DEVICES];
static int configured; /* whether LIBCUDA_STANDIN_DEVICES is set */
static int count;
static int initialized;

__attribute__((constructor)) static void configure(void) {
    const char *spec = getenv("LIBCUDA_STANDIN_DEVICES");
    if (spec == NULL) return;
    configured = 1;
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", spec);
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item && count < MAX_DEVICES; item = strtok_r(NULL, ",", &save)) {
        char *eq = strrchr(item, '=');
        if (eq == NULL || sscanf(eq + 1, "%d.%d", &devices[count].major, &devices[count].minor) != 2) {
            fprintf(stderr, "libcuda stand-in: ignoring %s (want NAME=MAJOR.MINOR)\n", item);
            continue;
        }
        *eq = '\0';
        snprintf(devices[count].name, sizeof devices[count].name, "%s", item);
        count++;
    }
}

static void *real(const char *symbol) { return dlsym(RTLD_NEXT, symbol); }

CUresult cuInit(unsigned int flags) {
    if (!configured) return ((CUresult(*)(unsigned int))real("cuInit"))(flags);
    initialized = 1;
    return count ? CUDA_SUCCESS : CUDA_ERROR_NO_DEVICE;
}

CUresult cuDeviceGetCount(int *n) {
    if (!configured) return ((CUresult(*)(int *))real("cuDeviceGetCount"))(n);
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (n == NULL) return CUDA_ERROR_INVALID_VALUE;
    *n = count;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    if (!configured) return ((CUresult(*)(CUdevice *, int))real("cuDeviceGet"))(device, ordinal);
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (device == NULL) return CUDA_ERROR_INVALID_VALUE;
    if (ordinal < 0 || ordinal >= count) return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice device) {
    if (!configured) return ((CUresult(*)(char *, int, CUdevice))real("cuDeviceGetName"))(name, len, device);
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (name == NULL || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (device < 0 || device >= count) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "%s", devices[device].name);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int *value, int attribute, CUdevice device) {
    if (!configured || (attribute != ATTRIBUTE_MAJOR && attribute != ATTRIBUTE_MINOR))
        return ((CUresult(*)(int *, int, CUdevice))real("cuDeviceGetAttribute"))(value, attribute, device);
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (value == NULL) return CUDA_ERROR_INVALID_VALUE;
    if (device < 0 || device >= count) return CUDA_ERROR_INVALID_DEVICE;
    *value = attribute == ATTRIBUTE_MAJOR ? devices[device].major : devices[device].minor;
    return CUDA_SUCCESS;
}

/* A stand-in libcuda.so.1 for testing the driver bindings on a machine without a GPU: it exports the driver
   functions CudaDriver.Probe calls, with the driver's C signatures, and reports what FAKE_CUDA says:
   "init-fails" -> cuInit returns CUDA_ERROR_NO_DEVICE (100); "none" -> 0 devices; otherwise one device
   "DistAlign Fake GPU", compute capability 9.0, 132 SMs, 141 GiB, whose "device memory" is host memory
   (cuMemAlloc = malloc, copies = memcpy, streams run everything at once), so CudaDevice's allocation,
   zero fill, pinned staging and chunked copies run for real. Kernels, modules and events are not emulated. */
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
typedef int CUresult;
static const char* mode(void) { const char* m = getenv("FAKE_CUDA"); return m ? m : "one"; }
CUresult cuInit(unsigned int flags) { (void)flags; return strcmp(mode(), "init-fails") == 0 ? 100 : 0; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return 0; }
CUresult cuDeviceGetCount(int* n) { *n = strcmp(mode(), "none") == 0 ? 0 : 1; return 0; }
CUresult cuDeviceGet(int* d, int ordinal) { if (ordinal != 0) return 101; *d = 0; return 0; }
CUresult cuDeviceGetName(char* name, int len, int d) { (void)d; strncpy(name, "DistAlign Fake GPU", (size_t)len); name[len - 1] = 0; return 0; }
CUresult cuDeviceGetAttribute(int* value, int attribute, int d)
{
    (void)d;
    switch (attribute) { case 75: *value = 9; return 0; case 76: *value = 0; return 0; case 16: *value = 132; return 0; default: return 1; }
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, int d) { (void)d; *bytes = (size_t)141 << 30; return 0; }
CUresult cuGetErrorName(CUresult status, const char** name) { (void)status; *name = "FAKE"; return 0; }

static int context_token;
CUresult cuDevicePrimaryCtxRetain(void** context, int d) { (void)d; *context = &context_token; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int d) { (void)d; return 0; }
CUresult cuCtxSetCurrent(void* context) { return context == &context_token ? 0 : 201; }
CUresult cuCtxGetCurrent(void** context) { *context = &context_token; return 0; }
CUresult cuCtxPushCurrent_v2(void* context) { (void)context; return 0; }
CUresult cuCtxPopCurrent_v2(void** context) { *context = &context_token; return 0; }
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) { *free_bytes = (size_t)140 << 30; *total = (size_t)141 << 30; return 0; }
CUresult cuStreamCreate(void** stream, unsigned int flags) { (void)flags; *stream = malloc(1); return 0; }
CUresult cuStreamDestroy_v2(void* stream) { free(stream); return 0; }
CUresult cuStreamSynchronize(void* stream) { (void)stream; return 0; }
CUresult cuMemAlloc_v2(uint64_t* pointer, size_t bytes)
{
    if (bytes > ((size_t)1 << 40)) return 2;   /* CUDA_ERROR_OUT_OF_MEMORY */
    void* p = malloc(bytes);
    if (!p) return 2;
    memset(p, 0xAB, bytes);                    /* garbage, so a missing zero fill shows */
    *pointer = (uint64_t)(uintptr_t)p;
    return 0;
}
CUresult cuMemFree_v2(uint64_t pointer) { free((void*)(uintptr_t)pointer); return 0; }
CUresult cuMemAllocHost_v2(void** pointer, size_t bytes) { *pointer = malloc(bytes); return *pointer ? 0 : 2; }
CUresult cuMemFreeHost(void* pointer) { free(pointer); return 0; }
CUresult cuMemsetD8Async(uint64_t destination, unsigned char value, size_t count, void* stream)
{ (void)stream; memset((void*)(uintptr_t)destination, value, count); return 0; }
CUresult cuMemcpyHtoDAsync_v2(uint64_t destination, const void* source, size_t bytes, void* stream)
{ (void)stream; memcpy((void*)(uintptr_t)destination, source, bytes); return 0; }
CUresult cuMemcpyDtoHAsync_v2(void* destination, uint64_t source, size_t bytes, void* stream)
{ (void)stream; memcpy(destination, (const void*)(uintptr_t)source, bytes); return 0; }

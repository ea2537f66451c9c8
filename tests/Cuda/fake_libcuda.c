/* A stand-in libcuda.so.1 for testing the driver bindings on a machine without a GPU: it exports the driver
   functions CudaDriver.Probe calls, with the driver's C signatures, and reports what FAKE_CUDA says:
   "init-fails" -> cuInit returns CUDA_ERROR_NO_DEVICE (100); "none" -> 0 devices; otherwise one device
   "DistAlign Fake GPU", compute capability 9.0, 132 SMs, 141 GiB (140 free). Allocations, copies, streams,
   kernels, modules and events are not emulated: the engine's device memory is ILGPU's, and ILGPU does not
   load this library. */
#include <stdlib.h>
#include <string.h>
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
CUresult cuCtxGetCurrent(void** context) { *context = &context_token; return 0; }
CUresult cuCtxPushCurrent_v2(void* context) { (void)context; return 0; }
CUresult cuCtxPopCurrent_v2(void** context) { *context = &context_token; return 0; }
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) { *free_bytes = (size_t)140 << 30; *total = (size_t)141 << 30; return 0; }

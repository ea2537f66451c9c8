// Host-compiler shim for checking native/*.cu WITHOUT a CUDA toolkit: g++ -std=c++17 -fsyntax-only
// -include cuda_host_shim.h -x c++ native/X.cu. It declares the CUDA built-ins the sources use with their
// CUDA signatures, so g++ checks C++ syntax, name lookup, overload resolution, template instantiation and
// types. It does NOT check device semantics (warp shuffles, shared memory, launch bounds) or anything NVRTC
// would reject for the device (e.g. host-only calls); that needs NVRTC (tested when libnvrtc is installed).
#pragma once
#include <cmath>
#include <cstring>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict
#define __launch_bounds__(...)
struct dim3 { unsigned int x, y, z; };
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
struct uint2 { unsigned int x, y; };
struct uint4 { unsigned int x, y, z, w; };
struct float4 { float x, y, z, w; };
void __syncthreads();
float __shfl_xor_sync(unsigned int mask, float value, int lane_mask, int width = 32);
int __shfl_xor_sync(unsigned int mask, int value, int lane_mask, int width = 32);
inline float __uint_as_float(unsigned int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int x; std::memcpy(&x, &f, 4); return x; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
#include <math.h>   // expf, logf, fmaxf in the global namespace, as CUDA has them
// NVRTC compiles native/*.cu without headers, so math.h's macros are not there: make them errors here too.
#undef INFINITY
#undef NAN
#undef HUGE_VALF
// The emulation hooks of native/flash_attention.cu, declared so that its tensor-core helpers type-check here; the
// inline PTX they replace is checked by NVRTC only.
#define DISTALIGN_HOST_EMULATION 1
void emulated_mma_m16n8k16_bf16(float d[4], const unsigned int a[4], const unsigned int b[2]);
void emulated_ldmatrix_x4_trans(unsigned int r[4], const unsigned short* row);

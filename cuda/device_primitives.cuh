// Small device-side building blocks shared by the kernels: asynchronous
// global -> shared copies (cp.async), ldmatrix, the bf16 tensor-core mma and
// bf16x2 packing. Device code only; include from .cu files.
#ifndef GQUANT_CUDA_DEVICE_PRIMITIVES_CUH_
#define GQUANT_CUDA_DEVICE_PRIMITIVES_CUH_

#include <cuda_bf16.h>

#include <cstdint>

namespace gquant::cuda {

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, completing asynchronously; .cg bypasses L1 (data
// read once), .ca keeps it (data other warps of the multiprocessor re-read).
__device__ __forceinline__ void CopyAsync16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void CopyAsync8(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(dst), "l"(src) : "memory");
}
// Predicated forms (no branch, so the warp never diverges around them).
__device__ __forceinline__ void CopyAsync16If(uint32_t dst, const void* src, bool valid) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n @p cp.async.cg.shared.global [%0], [%1], "
      "16;\n}\n" ::"r"(dst),
      "l"(src), "r"(static_cast<int>(valid))
      : "memory");
}
__device__ __forceinline__ void CopyAsync16CachedIf(uint32_t dst, const void* src, bool valid) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n @p cp.async.ca.shared.global [%0], [%1], "
      "16;\n}\n" ::"r"(dst),
      "l"(src), "r"(static_cast<int>(valid))
      : "memory");
}
__device__ __forceinline__ void CommitCopies() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most kPending of this thread's committed groups are pending.
template <int kPending>
__device__ __forceinline__ void WaitCopies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8x8 b16 matrices from shared memory; lane l gives the row address of
// matrix l / 8, row l % 8. Lane (g, t) gets bytes 4t..4t+3 of row g of each.
__device__ __forceinline__ void LoadMatrixX4(uint32_t address, uint32_t (&d)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
               : "r"(address)
               : "memory");
}

// The same four matrices transposed: lane (g, t) gets elements (2t, g) and
// (2t + 1, g) of each (rows = the addressed 16-byte rows), e.g. an mma B
// operand from a row-major [k][n] tile such as attention's V.
__device__ __forceinline__ void LoadMatrixX4Transposed(uint32_t address, uint32_t (&d)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
               : "r"(address)
               : "memory");
}

// D += A · B for one m16n8k16 bf16 tile, fp32 accumulate.
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// (lo, hi) rounded to nearest-even bf16, lo in the low half.
__device__ __forceinline__ uint32_t PackBf16x2(float lo, float hi) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

// Programmatic dependent launch (sm_90+; no-ops when the kernel was launched
// without it, see launch.cuh). A kernel may then start while its predecessor
// in the stream still runs, so it can do work that does not depend on the
// predecessor (launch, set-up) early.
// WaitForPredecessor returns once the predecessor grid has completed and its
// writes are visible: call it before the first read of anything a previous
// kernel wrote and before the first global write. AllowDependents lets the
// next kernel in the stream start launching (at most two kernels are then in
// flight). A grid that fits in one wave calls it right after
// WaitForPredecessor; a grid of several waves calls it at the end of each
// block, because a dependent launched early takes the multiprocessors' room
// from the later waves (measured: int8 GEMV 20-30% slower on K-heavy shapes).
__device__ __forceinline__ void WaitForPredecessor() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void AllowDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_DEVICE_PRIMITIVES_CUH_

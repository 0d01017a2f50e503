// Hopper (sm_90a) building blocks for wgmma kernels: the generic -> async
// proxy fence, wgmma matrix descriptors for 128-byte-swizzled K-major and
// MN-major tiles, the wgmma instructions the int4 prefill GEMM and the
// prefill attention issue (bf16 inputs, fp32 accumulators: m64n256k16 and
// m64n32k16 from shared memory, m64n256k16 with A from registers), register
// reallocation between warp groups, transaction barriers and the copy
// engine's loads. Device code only; all
// but the fence and descriptors compile to nothing (or a trap) on targets
// other than sm_90a, and their host launchers refuse to run there
// (GQUANT_CUDA_SM90A, set by CMake).
#ifndef GQUANT_CUDA_SM90_PRIMITIVES_CUH_
#define GQUANT_CUDA_SM90_PRIMITIVES_CUH_

#include <cstdint>

namespace gquant::cuda {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GQUANT_SM90A_DEVICE 1
#else
#define GQUANT_SM90A_DEVICE 0
#endif

// Orders this thread's earlier generic-proxy shared-memory writes (ordinary
// stores, completed cp.async copies) before later async-proxy reads (wgmma
// operands); each writing thread runs it before the barrier the readers
// wait at.
__device__ __forceinline__ void FenceProxyAsyncShared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// A tile of rows x 64 bf16 (128 bytes per row) in the 128-byte swizzle: the
// 16-byte chunk c of row r sits at chunk c ^ (r % 8) of its row. The tile
// starts 1024-byte aligned (8 rows, one swizzle atom).
__device__ __forceinline__ uint32_t Swizzle128Offset(uint32_t row, uint32_t chunk) {
  return row * 128 + ((chunk ^ (row % 8)) << 4);
}

// wgmma descriptor of such a tile (K-major): start address / 16, leading
// byte offset unused for swizzled K-major (1), stride 1024 bytes between
// 8-row atoms, swizzle mode 1 (128 bytes). The k16 step s of the tile is the
// descriptor plus 2 s (32 bytes further; the swizzle applies to the address).
__device__ __forceinline__ uint64_t Swizzle128Descriptor(uint32_t tile) {
  return static_cast<uint64_t>((tile & 0x3FFFF) >> 4) | (uint64_t{1} << 16) |
         (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

// wgmma ordering: Fence before the first wgmma that reads or writes
// accumulators the warp group touched since; Commit closes a group of issued
// wgmmas; Wait<n> returns when at most n groups are in flight.
__device__ __forceinline__ void WgmmaFence() {
#if GQUANT_SM90A_DEVICE
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void WgmmaCommit() {
#if GQUANT_SM90A_DEVICE
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int kInFlight>
__device__ __forceinline__ void WgmmaWait() {
#if GQUANT_SM90A_DEVICE
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kInFlight) : "memory");
#endif
}
// Keeps the compiler from moving accesses to an accumulator across the
// asynchronous wgmma (which the compiler does not see write it).
__device__ __forceinline__ void PinRegister(float& r) { asm volatile("" : "+f"(r)::"memory"); }
template <int kRows, int kColumns>
__device__ __forceinline__ void PinRegisters(float (&r)[kRows][kColumns]) {
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
#pragma unroll
    for (int j = 0; j < kColumns; ++j) PinRegister(r[i][j]);
  }
}

// The 128 accumulator operands of an m64n256 wgmma: "{%0, ..., %127}" in the
// instruction, and each register as an in-out operand (kept apart from the
// instruction, whose other operands follow them).
#define GQUANT_WGMMA_D128_REGISTERS                                                                \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "    \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "     \
  "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "     \
  "%56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, "     \
  "%74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, "     \
  "%92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, " \
  "%109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, "     \
  "%124, %125, %126, %127}"
#define GQUANT_WGMMA_D128_OPERANDS(d)                                                             \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),    \
      "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),  \
      "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),  \
      "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),  \
      "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),  \
      "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),  \
      "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),  \
      "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),  \
      "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]),  \
      "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]),  \
      "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]),  \
      "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]),  \
      "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]),  \
      "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]),          \
      "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]),         \
      "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]),         \
      "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]),         \
      "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// D[64, 256] += A[64, 16] · B[256, 16]ᵀ for the warp group, A and B bf16
// in shared memory by descriptor (both K-major), D fp32 in registers: thread
// (warp w, lane l) holds, for j < 32, d[4j..4j+1] at row 16 w + l / 4 and
// columns 8 j + 2 (l % 4) + {0, 1}, d[4j+2..4j+3] at row + 8. accumulate =
// false overwrites D.
__device__ __forceinline__ void WgmmaM64N256K16(float (&d)[128], uint64_t a, uint64_t b,
                                                bool accumulate) {
#if GQUANT_SM90A_DEVICE
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " GQUANT_WGMMA_D128_REGISTERS
      ", %128, %129, p, 1, 1, 0, 0;\n}\n"
      : GQUANT_WGMMA_D128_OPERANDS(d)
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)));
#else
  __trap();
#endif
}

// wgmma descriptor of an MN-major operand in the same 128-byte swizzle:
// rows of the tile run along K (8-row atoms 1024 bytes apart, the stride
// byte offset), each row holds 64 consecutive N (or M) elements, and the
// next 64 of them sit `panel_bytes` further (the leading byte offset). The
// k16 step s starts 16 rows (2048 bytes) further.
__device__ __forceinline__ uint64_t Swizzle128MnMajorDescriptor(uint32_t tile,
                                                                uint32_t panel_bytes) {
  return static_cast<uint64_t>((tile & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>((panel_bytes & 0x3FFFF) >> 4) << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

// D[64, 32] += A[64, 16] · B[32, 16]ᵀ, A and B by descriptor (both
// K-major), D fp32 in registers in the layout of WgmmaM64N256K16 (j < 4).
__device__ __forceinline__ void WgmmaM64N32K16(float (&d)[16], uint64_t a, uint64_t b,
                                               bool accumulate) {
#if GQUANT_SM90A_DEVICE
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, "
      "0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15])
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)));
#else
  __trap();
#endif
}

// D[64, 256] += A[64, 16] · B[16, 256] with A bf16 in registers (warp w's
// rows 16 w.. as an mma.sync m16n8k16 A fragment: a[0] row g, columns 2t,
// 2t + 1; a[1] row g + 8; a[2], a[3] the same at columns + 8) and B by an
// MN-major descriptor (Swizzle128MnMajorDescriptor); D as in WgmmaM64N256K16.
__device__ __forceinline__ void WgmmaM64N256K16RegisterA(float (&d)[128], const uint32_t (&a)[4],
                                                         uint64_t b) {
#if GQUANT_SM90A_DEVICE
  // Operands: D, A, B, scale-d (p: accumulate), scale-a, scale-b, B transposed.
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " GQUANT_WGMMA_D128_REGISTERS
      ", {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n}\n"
      : GQUANT_WGMMA_D128_OPERANDS(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#else
  __trap();
#endif
}

// Moves this warp group's register allocation to kRegisters a thread
// (increase or release), so warp groups of different roles split the
// register file unevenly; every warp of the group runs it.
template <int kRegisters, bool kIncrease>
__device__ __forceinline__ void SetMaxRegisters() {
#if GQUANT_SM90A_DEVICE
  if constexpr (kIncrease) {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
  } else {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
  }
#endif
}

// Transaction barriers (mbarrier, shared::cta) for the copy engine, built
// only where the wgmma parts are (their one user), like the copies below:
// BarrierInit sets the arrivals a phase needs (one thread, then
// FenceBarrierInit and a block barrier); BarrierArriveExpectingBytes
// arrives and adds bytes the phase also waits for, which copies issued with
// the barrier count down as they land; BarrierWait spins until the phase of
// the given parity has completed.
__device__ __forceinline__ void BarrierInit(uint32_t barrier, int arrivals) {
#if GQUANT_SM90A_DEVICE
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(barrier), "r"(arrivals)
               : "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void FenceBarrierInit() {
#if GQUANT_SM90A_DEVICE
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void BarrierArrive(uint32_t barrier) {
#if GQUANT_SM90A_DEVICE
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(barrier) : "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void BarrierArriveExpectingBytes(uint32_t barrier, uint32_t bytes) {
#if GQUANT_SM90A_DEVICE
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(barrier), "r"(bytes)
               : "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void BarrierWait(uint32_t barrier, uint32_t parity) {
#if GQUANT_SM90A_DEVICE
  asm volatile(
      "{\n .reg .pred done;\n"
      "wait:\n mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra wait;\n}\n" ::"r"(barrier),
      "r"(parity)
      : "memory");
#else
  __trap();
#endif
}

// Copy-engine loads into shared memory that count down `barrier`: a 2-D
// box of a tensor map (coordinates innermost first, elements) and a plain
// run of bytes (a multiple of 16, both ends 16-byte aligned).
__device__ __forceinline__ void CopyTile2d(uint32_t destination, const void* tensor_map, int inner,
                                           int outer, uint32_t barrier) {
#if GQUANT_SM90A_DEVICE
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(destination),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(inner), "r"(outer), "r"(barrier)
      : "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void CopyBytes(uint32_t destination, const void* source, uint32_t bytes,
                                          uint32_t barrier) {
#if GQUANT_SM90A_DEVICE
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(destination),
      "l"(source), "r"(bytes), "r"(barrier)
      : "memory");
#else
  __trap();
#endif
}

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_SM90_PRIMITIVES_CUH_

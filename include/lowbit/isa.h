// The one CPU-feature vocabulary of lowbit. Every fast kernel names the instruction set it needs
// (OpDef::fast[i].isa, include/lowbit/op.h); the registry and the executor skip a kernel whose
// ISA this CPU lacks, so one binary built without -march flags runs everywhere and uses AVX-512
// where it exists. Kernel names end in the ISA's name: `<op>[_layout]_<dtype>__<isa>`, e.g.
// `fake_quant_with_min_max_vars_f32__avx512`, `max_pool2d_nhwc_f32__portable`,
// `matmul_f32__dnnl`.
//
//   kPortable     plain C++ (vectorised by the compiler for the baseline x86-64 target)
//   kAvx2         AVX2 + FMA
//   kAvx512       AVX-512 F, BW, DQ, VL (Skylake-X and later, Zen 4, Zen 5)
//   kAvx512Vnni   kAvx512 plus AVX-512 VNNI (int8 dot products: vpdpbusd)
//   kAvx512Vbmi   kAvx512 plus AVX-512 VBMI (byte permutes across a zmm pair: vpermi2b; Ice
//                 Lake and later, Zen 4, Zen 5; not Skylake-X or Cascade Lake). Independent of
//                 VNNI: a CPU may have either.
//   kDnnl         oneDNN; it dispatches on the CPU itself, so it is always available
#pragma once

#include <string>

namespace lowbit {

enum class Isa { kPortable, kAvx2, kAvx512, kAvx512Vnni, kAvx512Vbmi, kDnnl };

// Whether this CPU (and this build) can run kernels of that ISA. Detected once; cheap.
bool cpu_has(Isa isa);
// "portable", "avx2", "avx512", "avx512_vnni", "avx512_vbmi", "dnnl": the suffix of kernel
// names.
const char* isa_name(Isa isa);
// The inverse of isa_name; throws ValueError listing the names.
Isa isa_from_name(const std::string& name);
// The best of kPortable/kAvx2/kAvx512/kAvx512Vnni this CPU has, e.g. for a report (VBMI is
// not on that ladder: cpu_has(Isa::kAvx512Vbmi) answers it).
Isa best_cpu_isa();

}  // namespace lowbit

#include "lowbit/isa.h"

#include "lowbit/error.h"

namespace lowbit {

namespace {
struct CpuFeatures {
  bool avx2, avx512, vnni, vbmi;
  CpuFeatures() {
    __builtin_cpu_init();
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    vnni = avx512 && __builtin_cpu_supports("avx512vnni");
    vbmi = avx512 && __builtin_cpu_supports("avx512vbmi");  // CPUID.(7, 0):ECX bit 1
  }
};
const CpuFeatures& features() {
  static const CpuFeatures f;
  return f;
}
constexpr Isa kAll[] = {Isa::kPortable,   Isa::kAvx2,       Isa::kAvx512,
                        Isa::kAvx512Vnni, Isa::kAvx512Vbmi, Isa::kDnnl};
}  // namespace

bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::kPortable:
    case Isa::kDnnl:
      return true;
    case Isa::kAvx2:
      return features().avx2;
    case Isa::kAvx512:
      return features().avx512;
    case Isa::kAvx512Vnni:
      return features().vnni;
    case Isa::kAvx512Vbmi:
      return features().vbmi;
  }
  return false;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kPortable:
      return "portable";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx512Vnni:
      return "avx512_vnni";
    case Isa::kAvx512Vbmi:
      return "avx512_vbmi";
    case Isa::kDnnl:
      return "dnnl";
  }
  return "?";
}

Isa isa_from_name(const std::string& name) {
  for (Isa i : kAll)
    if (name == isa_name(i)) return i;
  LOWBIT_THROW(ValueError, "isa_from_name: unknown ISA '", name,
               "' (expected one of portable, avx2, avx512, avx512_vnni, avx512_vbmi, dnnl)");
}

Isa best_cpu_isa() {
  if (cpu_has(Isa::kAvx512Vnni)) return Isa::kAvx512Vnni;
  if (cpu_has(Isa::kAvx512)) return Isa::kAvx512;
  if (cpu_has(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kPortable;
}

}  // namespace lowbit

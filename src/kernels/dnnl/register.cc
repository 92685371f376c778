// oneDNN fast kernels, added to ops registered by the op families.
#include "ops/families.h"

namespace lowbit::detail {
void register_dnnl_kernels() {}
}  // namespace lowbit::detail

#include "lowbit/ops.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit::detail {
void register_linalg_ops() {}
}  // namespace lowbit::detail

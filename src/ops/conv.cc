#include "lowbit/ops.h"
#include "ops/families.h"
#include "ops/op_util.h"

namespace lowbit::detail {
void register_conv_ops() {}
}  // namespace lowbit::detail

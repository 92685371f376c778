#pragma once

#include "lowbit/ops/base.h"

namespace lowbit::ops {}  // namespace lowbit::ops

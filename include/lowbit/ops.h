// All op functions. Each works on Tensors (eager) and on graph Values (symbolic).
#pragma once

#include "lowbit/ops/base.h"
#include "lowbit/ops/conv.h"
#include "lowbit/ops/elementwise.h"
#include "lowbit/ops/fake_quant.h"
#include "lowbit/ops/int8.h"
#include "lowbit/ops/linalg.h"
#include "lowbit/ops/mask.h"
#include "lowbit/ops/nn.h"
#include "lowbit/ops/optim.h"
#include "lowbit/ops/quantizer_ops.h"
#include "lowbit/ops/reduce.h"
#include "lowbit/ops/rnn.h"
#include "lowbit/ops/shape_ops.h"

// Registration entry points, one per op family; registry.cc calls each once.
#pragma once

namespace lowbit::detail {
void register_graph_ops();        // placeholder, constant, variable (graph sources)
void register_elementwise_ops();  // src/ops/elementwise.cc
void register_reduce_ops();       // src/ops/reduce.cc
void register_shape_ops();        // src/ops/shape_ops.cc
void register_linalg_ops();       // src/ops/linalg.cc
void register_conv_ops();         // src/ops/conv.cc
void register_nn_ops();           // src/ops/nn.cc
void register_optim_ops();        // src/ops/optim_ops.cc
// src/ops/quantizer_ops.cc (PyTorch-style fake quant, LSQ, PACT, binary/ternary, observers)
void register_quantizer_ops();
void register_fake_quant_ops();  // src/ops/fake_quant.cc
void register_rnn_ops();         // src/ops/rnn.cc
void register_mask_ops();        // src/ops/mask.cc (sequence_mask, lengths_from_mask)
// src/ops/integer_numerics.cc (fake_quant_pot, fixed_logistic, fixed_tanh: integer-LSTM numerics)
void register_integer_numerics_ops();
void register_int8_ops();            // src/ops/int8_ops.cc (integer-only inference)
void register_int8_recurrent_ops();  // src/ops/int8_recurrent_ops.cc (qlstm, qgru, timestep_mask)
}  // namespace lowbit::detail

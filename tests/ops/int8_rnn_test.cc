// The fast rows of qlstm and qgru (src/kernels/fast/int8_rnn.h) against the reference kernel of
// src/ops/int8_recurrent_ops.cc, bit for bit, on edge shapes (units 1, 7, 8, 15, 16, 17, 33;
// input features 1, 3, 64, 65; T 1, 2, 9; batch 1, 3), with and without a timestep mask (gaps,
// all-false rows), return_sequences both ways, random quantization parameters, go_backwards,
// zero_output_for_mask and reverse_output; and the vector logistic / tanh of the rows against
// fixed_point.h's logistic_int16 / tanh_int16 on every int16 input.
#include "kernels/fast/int8_rnn.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "lowbit/fixed_point.h"
#include "lowbit/isa.h"
#include "lowbit/op.h"
#include "lowbit/ops.h"
#include "lowbit/rng.h"
#include "testing/op_testing.h"

namespace lowbit {
namespace {

using testing::expect_fast_matches_reference;
using testing::random_int_tensor;

// The rows this CPU runs (each qlstm / qgru row whose ISA it has).
int rows_on_this_cpu(const std::string& op) {
  int n = 0;
  for (const FastKernel& fk : find_op(op).fast) n += cpu_has(fk.isa) ? 1 : 0;
  return n;
}

TEST(QRnnFast, TheOpsListAVnniAndAnAvx2Row) {
  for (const char* op : {"qlstm", "qgru"}) {
    std::set<std::string> names;
    for (const FastKernel& fk : find_op(op).fast) names.insert(fk.name);
    EXPECT_TRUE(names.count(std::string(op) + "_s8__avx512_vnni")) << op;
    EXPECT_TRUE(names.count(std::string(op) + "_s8__avx2")) << op;
  }
}

TEST(QRnnFast, VectorLogisticAndTanhEqualTheScalarOnEveryInput) {
  if (!cpu_has(Isa::kAvx2)) GTEST_SKIP() << "no AVX2";
  std::vector<int16_t> x(65536), y(65536);
  for (int i = 0; i < 65536; ++i) x[i] = static_cast<int16_t>(i - 32768);
  for (int m = 0; m <= 6; ++m) {
    kernels::logistic_int16_avx2(x.data(), y.data(), 65536, m);
    int bad = 0;
    for (int i = 0; i < 65536; ++i)
      if (y[i] != quant::logistic_int16(x[i], m) && bad++ < 5)
        ADD_FAILURE() << "logistic m " << m << " x " << x[i] << ": " << y[i] << " vs "
                      << quant::logistic_int16(x[i], m);
    kernels::tanh_int16_avx2(x.data(), y.data(), 65536, m);
    for (int i = 0; i < 65536; ++i)
      if (y[i] != quant::tanh_int16(x[i], m) && bad++ < 10)
        ADD_FAILURE() << "tanh m " << m << " x " << x[i] << ": " << y[i] << " vs "
                      << quant::tanh_int16(x[i], m);
    EXPECT_EQ(bad, 0) << "m " << m;
  }
}

enum class Cell { kLstm, kGruAfter, kGruBefore };

struct Case {
  Cell cell;
  int64_t units, depth, steps, batch;
  int mask;  // 0 none, 1 gaps, 2 gaps and an all-false row (the last)
  bool sequences;
  // Wide ranges: gate multipliers up to 2^10 and biases near 2^31, so that x 2^left and the
  // gate sums saturate (the clamps before the int32 sums); hidden scales down to 2e-5.
  bool extreme = false;
};

// Random quantization attributes: weight scales such that the gate multipliers fall on both
// sides of 1 (left shifts and right shifts), zero points anywhere in int8, every cell_int_bits.
Attrs random_attrs(const Case& c, Rng& rng) {
  const int gates = c.cell == Cell::kLstm ? 4 : 3;
  std::vector<double> swx, swh;
  const float wmax = c.extreme ? 0.5f : 0.02f;
  for (int g = 0; g < gates; ++g) {
    swx.push_back(rng.uniform(0.0005f, wmax));
    swh.push_back(rng.uniform(0.0005f, wmax * 1.5f));
  }
  // GRU: 2^15 / s_h must stay below 2^31 - 2^23 (the reference's int32 update sum).
  const float sh_min = !c.extreme ? 0.004f : c.cell == Cell::kLstm ? 2e-5f : 1e-4f;
  Attrs a{{"input_scale", static_cast<double>(rng.uniform(0.01f, c.extreme ? 0.5f : 0.08f))},
          {"input_zero_point", static_cast<int64_t>(rng.next_u32() % 256) - 128},
          {"hidden_scale", static_cast<double>(rng.uniform(sh_min, c.extreme ? 0.001f : 0.03f))},
          {"hidden_zero_point", static_cast<int64_t>(rng.next_u32() % 200) - 100},
          {"input_weight_scales", swx},
          {"recurrent_weight_scales", swh},
          {"return_sequences", c.sequences}};
  const uint32_t flags = rng.next_u32();
  const bool backwards = flags & 1;
  a.set("go_backwards", backwards);
  if (c.mask) a.set("zero_output_for_mask", (flags & 2) != 0);
  if (c.sequences && backwards) a.set("reverse_output", (flags & 4) != 0);
  if (c.extreme && c.cell == Cell::kGruAfter && (flags & 8)) {
    // M_h = 2 (1 - 2^-24): m = 2^31 - 128 after a saturated left shift of a recurrent sum near
    // the bias's 2^31, so that MBQM is within 2^8 of INT32_MAX and px + MBQM leaves int32.
    a.set("hidden_scale", std::ldexp(1.0, -10));
    a.set("recurrent_weight_scales",
          std::vector<double>(3, static_cast<double>(std::nextafter(0.5f, 0.0f))));
  }
  if (c.cell == Cell::kLstm)
    a.set("cell_int_bits", static_cast<int64_t>(rng.next_u32() % 7));
  else
    a.set("reset_after", c.cell == Cell::kGruAfter);
  return a;
}

Tensor make_mask(const Case& c, Rng& rng) {
  Tensor m = Tensor::zeros({c.batch, c.steps}, DType::kBool);
  bool* p = m.data<bool>();
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t t = 0; t < c.steps; ++t) {
      // Gaps: about one step in three false, the first step of row 0 always false (the output
      // before the first valid step).
      const bool gap = (b == 0 && t == 0) || rng.next_u32() % 3 == 0;
      p[b * c.steps + t] = !gap;
      if (c.mask == 2 && b == c.batch - 1) p[b * c.steps + t] = false;
    }
  return m;
}

std::vector<Tensor> make_inputs(const Case& c, Rng& rng) {
  const int64_t gu = (c.cell == Cell::kLstm ? 4 : 3) * c.units;
  // Extreme: up to 2^31 - 2^23, which leaves room for the zero-point terms and the sums of
  // these shapes in the reference's int32 accumulator.
  const int64_t bmax = c.extreme ? (int64_t{1} << 31) - (int64_t{1} << 23) : 30000;
  std::vector<Tensor> in = {
      random_int_tensor({c.batch, c.steps, c.depth}, rng, -128, 127, DType::kS8),
      random_int_tensor({c.depth, gu}, rng, -127, 127, DType::kS8),
      random_int_tensor({c.units, gu}, rng, -127, 127, DType::kS8),
      random_int_tensor({gu}, rng, -bmax, bmax, DType::kS32)};
  if (c.cell != Cell::kLstm) in.push_back(random_int_tensor({gu}, rng, -bmax, bmax, DType::kS32));
  if (c.mask) in.push_back(make_mask(c, rng));
  return in;
}

const char* op_of(Cell cell) { return cell == Cell::kLstm ? "qlstm" : "qgru"; }

// Every row this CPU runs equals the reference (atol = rtol = 0) on every case; the reference
// outputs must vary (a sweep of constant outputs could not catch a wrong row).
void sweep(Cell cell, uint64_t seed) {
  const std::string op = op_of(cell);
  const int want_rows = rows_on_this_cpu(op);
  if (want_rows == 0) GTEST_SKIP() << "no row of " << op << " runs on this CPU";
  Rng rng(seed);
  std::set<int> codes;
  int cases = 0;
  for (int64_t units : {1, 7, 8, 15, 16, 17, 33})
    for (int64_t depth : {1, 3, 64, 65})
      for (int64_t steps : {1, 2, 9})
        for (int64_t batch : {1, 3})
          for (int mask : {0, 1, 2})
            for (bool sequences : {false, true}) {
              const Case c{cell, units, depth, steps, batch, mask, sequences};
              const Attrs a = random_attrs(c, rng);
              const std::vector<Tensor> in = make_inputs(c, rng);
              SCOPED_TRACE(op + " units " + std::to_string(units) + " depth " +
                           std::to_string(depth) + " T " + std::to_string(steps) + " batch " +
                           std::to_string(batch) + " mask " + std::to_string(mask));
              EXPECT_EQ(expect_fast_matches_reference(op, in, a, 0.0, 0.0), want_rows);
              if (cases++ % 16 == 0) {
                const Tensor y = ops::apply(op, in, a)[0];
                for (int64_t i = 0; i < y.numel(); ++i) codes.insert(y.data<int8_t>()[i]);
              }
            }
  EXPECT_GT(codes.size(), 100u) << "the reference outputs barely vary";
}

TEST(QRnnFast, LstmRowsEqualTheReferenceOnEdgeShapes) { sweep(Cell::kLstm, 1); }
TEST(QRnnFast, GruResetAfterRowsEqualTheReferenceOnEdgeShapes) { sweep(Cell::kGruAfter, 2); }
TEST(QRnnFast, GruResetBeforeRowsEqualTheReferenceOnEdgeShapes) { sweep(Cell::kGruBefore, 3); }

// Saturating regimes: every row equals the reference where MBQM's left shift saturates and the
// gate sums leave int16 by far.
TEST(QRnnFast, RowsEqualTheReferenceWhereTheArithmeticSaturates) {
  Rng rng(11);
  for (Cell cell : {Cell::kLstm, Cell::kGruAfter, Cell::kGruBefore}) {
    const std::string op = op_of(cell);
    if (rows_on_this_cpu(op) == 0) GTEST_SKIP() << "no row runs on this CPU";
    for (int64_t units : {1, 17, 33})
      for (int64_t depth : {3, 65})
        for (int mask : {0, 2})
          for (bool sequences : {false, true}) {
            const Case c{cell, units, depth, 9, 3, mask, sequences, true};
            const Attrs a = random_attrs(c, rng);
            SCOPED_TRACE(op + " units " + std::to_string(units) + " depth " +
                         std::to_string(depth) + " " + a.str());
            EXPECT_EQ(expect_fast_matches_reference(op, make_inputs(c, rng), a, 0.0, 0.0),
                      rows_on_this_cpu(op));
          }
  }
}

// A longer sequence with a larger state (many vector blocks, tiles of 4 rows), both cells.
TEST(QRnnFast, RowsEqualTheReferenceOnALargerBatch) {
  Rng rng(7);
  for (Cell cell : {Cell::kLstm, Cell::kGruAfter, Cell::kGruBefore}) {
    if (rows_on_this_cpu(op_of(cell)) == 0) GTEST_SKIP() << "no row runs on this CPU";
    const Case c{cell, 70, 40, 20, 9, 1, true};
    const Attrs a = random_attrs(c, rng);
    EXPECT_EQ(expect_fast_matches_reference(op_of(cell), make_inputs(c, rng), a, 0.0, 0.0),
              rows_on_this_cpu(op_of(cell)));
  }
}

// One prepared plan (one workspace) run by one row on new weights round after round, then the
// rows in turn: the packing kept from an earlier run must not be reused for other weights,
// biases or rows.
TEST(QRnnFast, APreparedWorkspaceRepacksWhenTheWeightsChange) {
  for (Cell cell : {Cell::kLstm, Cell::kGruAfter}) {
    const std::string op = op_of(cell);
    if (rows_on_this_cpu(op) == 0) GTEST_SKIP() << "no row runs on this CPU";
    const OpDef& def = find_op(op);
    std::vector<const FastKernel*> rows;
    for (const FastKernel& fk : def.fast)
      if (cpu_has(fk.isa)) rows.push_back(&fk);
    // Each row alone, then all rows alternating (the last schedule).
    std::vector<std::vector<const FastKernel*>> schedules;
    for (const FastKernel* fk : rows) schedules.push_back({fk});
    schedules.push_back(rows);
    for (const auto& schedule : schedules) {
      Rng rng(21);
      const Case c{cell, 17, 5, 4, 3, 1, true};
      const Attrs a = random_attrs(c, rng);
      std::vector<Tensor> in = make_inputs(c, rng);
      std::vector<ValueType> types;
      for (const Tensor& t : in) types.push_back({t.dtype(), t.shape()});
      const std::vector<ValueType> out_types = infer_op(def, types, a);
      const std::any params = prepare_op(def, types, out_types, a);
      for (int round = 0; round < 8; ++round) {
        // Rounds 0-1 keep the weights (the packing is reused), later rounds change w_x, w_h or
        // the bias.
        if (round >= 2) {
          const int which = 1 + round % 3;
          in[which] = random_int_tensor(in[which].shape(), rng, -127, 127, in[which].dtype());
        }
        std::vector<Tensor> want{Tensor(out_types[0].shape, out_types[0].dtype)};
        def.reference(KernelCtx{in, want, &params});
        for (const FastKernel* fk : schedule) {
          std::vector<Tensor> got{Tensor(out_types[0].shape, out_types[0].dtype)};
          fk->run(KernelCtx{in, got, &params});
          EXPECT_TRUE(testing::tensors_equal(got[0], want[0])) << fk->name << " round " << round;
        }
      }
    }
  }
}

}  // namespace
}  // namespace lowbit

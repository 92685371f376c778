// Optimizers, schedules, clipping and weight decay against the Keras 3 formulas recomputed here
// in double (K3:optimizers/{sgd,adam,adamw,rmsprop,base_optimizer}.py; layer-semantics.md 7.7).
#include "lowbit/nn/optimizers.h"

#include <gtest/gtest.h>

#include <cmath>

#include "lowbit/ops.h"
#include "testing/op_testing.h"

namespace lowbit::nn {
namespace {

using Vec = std::vector<double>;

// The graph computes in f32; the references in double. A few steps on values of order 1 keep
// the difference near f32 roundoff (~1e-7 relative) per step.
constexpr double kAtol = 2e-6;
constexpr double kRtol = 2e-5;

void expect_near_vec(const Tensor& got, const Vec& want, const std::string& what) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size())) << what;
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(got.get_as_double(static_cast<int64_t>(i)), want[i],
                kAtol + kRtol * std::abs(want[i]))
        << what << " element " << i;
}

Tensor vec_tensor(const Vec& v) {
  std::vector<float> f(v.begin(), v.end());
  return Tensor::from_vector<float>(f, {static_cast<int64_t>(v.size())});
}

// One graph holding variables, gradient placeholders and the optimizer's updates.
struct Harness {
  Graph g;
  OptimizerPtr opt;
  Value lr, t;
  std::vector<Value> vars, grads;
  std::unique_ptr<Executor> exec;

  Harness(OptimizerPtr o, const std::vector<Vec>& inits) : opt(std::move(o)) {
    lr = g.placeholder("lr", DType::kF32, {});
    t = g.placeholder("t", DType::kF32, {});
    std::vector<std::string> names;
    for (size_t i = 0; i < inits.size(); ++i) {
      const std::string index = std::to_string(i);
      names.push_back(std::string("layer/w").append(index));
      vars.push_back(g.variable(names.back(), vec_tensor(inits[i])));
      grads.push_back(g.placeholder(std::string("g").append(index), DType::kF32,
                                    {static_cast<int64_t>(inits[i].size())}));
    }
    exec = std::make_unique<Executor>(g, std::vector<Value>{},
                                      opt->build_updates(g, vars, grads, names, lr, t));
  }
  void step(const std::vector<Vec>& gs) {
    auto feeds = opt->step_feeds(lr, t);
    for (size_t i = 0; i < gs.size(); ++i) feeds.emplace_back(grads[i], vec_tensor(gs[i]));
    exec->run(feeds);
    opt->set_iterations(opt->iterations() + 1);
  }
  const Tensor& w(size_t i = 0) { return g.variable_tensor(vars[i]); }
};

// ---- References in double, written from the Keras sources ----

struct RefSGD {
  double lr, mu;
  bool nesterov;
  Vec m;
  void step(Vec& w, const Vec& g) {
    if (m.empty()) m.assign(w.size(), 0.0);
    for (size_t i = 0; i < w.size(); ++i) {
      if (mu == 0) {
        w[i] -= lr * g[i];
        continue;
      }
      m[i] = mu * m[i] - lr * g[i];
      w[i] += nesterov ? mu * m[i] - lr * g[i] : m[i];
    }
  }
};

struct RefAdam {
  double lr, b1 = 0.9, b2 = 0.999, eps = 1e-7;
  bool amsgrad = false;
  double wd = 0;  // decoupled (AdamW)
  Vec m, v, vh;
  int t = 0;
  void step(Vec& w, const Vec& g) {
    if (m.empty()) m = v = vh = Vec(w.size(), 0.0);
    ++t;
    // Keras casts beta to the variable's dtype before the power: 1 - 0.999f^1 is 1.3e-5 away
    // from 0.001, far above f32 roundoff. (The moment updates use 1 - beta computed in double.)
    const double b1f = static_cast<float>(b1), b2f = static_cast<float>(b2);
    const double alpha = lr * std::sqrt(1 - std::pow(b2f, t)) / (1 - std::pow(b1f, t));
    for (size_t i = 0; i < w.size(); ++i) {
      w[i] -= w[i] * wd * lr;
      m[i] += (g[i] - m[i]) * (1 - b1);
      v[i] += (g[i] * g[i] - v[i]) * (1 - b2);
      vh[i] = std::max(vh[i], v[i]);
      w[i] -= alpha * m[i] / (std::sqrt(amsgrad ? vh[i] : v[i]) + eps);
    }
  }
};

// Kingma & Ba Algorithm 1 (PyTorch, tfjs): epsilon added to the bias-corrected sqrt(v_hat).
struct RefAdamPaper {
  double lr, b1 = 0.9, b2 = 0.999, eps;
  Vec m, v;
  int t = 0;
  void step(Vec& w, const Vec& g) {
    if (m.empty()) m = v = Vec(w.size(), 0.0);
    ++t;
    for (size_t i = 0; i < w.size(); ++i) {
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      double mh = m[i] / (1 - std::pow(b1, t)), vhat = v[i] / (1 - std::pow(b2, t));
      w[i] -= lr * mh / (std::sqrt(vhat) + eps);
    }
  }
};

struct RefRMSprop {
  double lr, rho = 0.9, mu = 0, eps = 1e-7;
  bool centered = false;
  Vec v, a, mom;
  void step(Vec& w, const Vec& g) {
    if (v.empty()) v = a = mom = Vec(w.size(), 0.0);
    for (size_t i = 0; i < w.size(); ++i) {
      v[i] = rho * v[i] + (1 - rho) * g[i] * g[i];
      double d = v[i] + eps;
      if (centered) {
        a[i] = rho * a[i] + (1 - rho) * g[i];
        d = v[i] - a[i] * a[i] + eps;
      }
      double inc = lr * g[i] / std::sqrt(d);
      if (mu > 0) {
        mom[i] = mu * mom[i] + inc;
        w[i] -= mom[i];
      } else {
        w[i] -= inc;
      }
    }
  }
};

const Vec kW0 = {0.5, -1.25, 2.0};
const std::vector<Vec> kGrads = {
    {0.3, -0.7, 1.1}, {0.25, -0.4, 0.9}, {-0.2, 0.6, 0.5}, {0.1, 0.05, -0.8}};

template <class Ref>
void expect_trajectory(OptimizerPtr opt, Ref ref, const std::string& what) {
  Harness h(std::move(opt), {kW0});
  Vec w = kW0;
  for (size_t s = 0; s < kGrads.size(); ++s) {
    h.step({kGrads[s]});
    ref.step(w, kGrads[s]);
    expect_near_vec(h.w(), w, what + " step " + std::to_string(s + 1));
  }
}

// ---- Optimizer trajectories ----

TEST(Optimizers, SGDPlainMomentumAndNesterov) {
  expect_trajectory(SGD(), RefSGD{0.01, 0, false}, "SGD default lr 0.01");
  expect_trajectory(SGD({.learning_rate = 0.5}, {.momentum = 0.9}), RefSGD{0.5, 0.9, false},
                    "SGD momentum");
  expect_trajectory(SGD({.learning_rate = 0.5}, {.momentum = 0.9, .nesterov = true}),
                    RefSGD{0.5, 0.9, true}, "SGD nesterov");
  // Nesterov and plain momentum really differ on this trajectory.
  Vec a = kW0, b = kW0;
  RefSGD pa{0.5, 0.9, false}, pb{0.5, 0.9, true};
  for (const Vec& g : kGrads) pa.step(a, g), pb.step(b, g);
  EXPECT_GT(std::abs(a[0] - b[0]), 0.05);
}

TEST(Optimizers, SGDMomentumKeepsOneSlotAndNoneWithoutMomentum) {
  Harness plain(SGD(), {kW0});
  EXPECT_TRUE(plain.opt->slots().empty());
  Harness mom(SGD({}, {.momentum = 0.5}), {kW0});
  ASSERT_EQ(mom.opt->slots().size(), 1u);
  EXPECT_TRUE(mom.opt->slots().count("momentum/layer/w0"));
  mom.step({kGrads[0]});  // m = -lr * g
  expect_near_vec(mom.opt->slots().at("momentum/layer/w0"), {-0.003, 0.007, -0.011}, "m");
}

TEST(Optimizers, AdamMatchesKerasEpsilonHat) {
  expect_trajectory(Adam(), RefAdam{.lr = 0.001}, "Adam defaults");
  expect_trajectory(Adam({.learning_rate = 0.2}, {.beta_1 = 0.8, .beta_2 = 0.99}),
                    RefAdam{.lr = 0.2, .b1 = 0.8, .b2 = 0.99}, "Adam betas");
  // A large epsilon separates Keras' placement from Algorithm 1's.
  expect_trajectory(Adam({.learning_rate = 0.1}, {.epsilon = 0.1}), RefAdam{.lr = 0.1, .eps = 0.1},
                    "Adam epsilon 0.1");
  Vec keras = kW0, paper = kW0;
  RefAdam rk{.lr = 0.1, .eps = 0.1};
  RefAdamPaper rp{.lr = 0.1, .eps = 0.1};
  for (const Vec& g : kGrads) rk.step(keras, g), rp.step(paper, g);
  EXPECT_GT(std::abs(keras[2] - paper[2]), 0.05);
}

TEST(Optimizers, AdamSlotsHoldTheMoments) {
  Harness h(Adam({.learning_rate = 0.1}), {kW0});
  h.step({kGrads[0]});
  h.step({kGrads[1]});
  const auto& s = h.opt->slots();
  ASSERT_EQ(s.size(), 2u);
  Vec m(3), v(3);
  for (int i = 0; i < 3; ++i) {
    m[i] = 0.9 * (0.1 * kGrads[0][i]) + 0.1 * kGrads[1][i];
    v[i] = 0.999 * (0.001 * kGrads[0][i] * kGrads[0][i]) + 0.001 * kGrads[1][i] * kGrads[1][i];
  }
  expect_near_vec(s.at("momentum/layer/w0"), m, "m");
  expect_near_vec(s.at("velocity/layer/w0"), v, "v");
}

TEST(Optimizers, AdamAmsgradUsesTheRunningMaximum) {
  // Shrinking gradients with a short beta_2 memory make v fall below its maximum, where
  // amsgrad differs.
  const std::vector<Vec> gs = {
      {2.0, -3.0, 1.5}, {0.1, -0.1, 0.2}, {0.05, 0.1, -0.1}, {0.1, 0.1, 0.1}};
  Harness h(Adam({.learning_rate = 0.1}, {.beta_2 = 0.5, .amsgrad = true}), {kW0});
  Vec w = kW0, plain = kW0;
  RefAdam ref{.lr = 0.1, .b2 = 0.5, .amsgrad = true}, ref_plain{.lr = 0.1, .b2 = 0.5};
  for (const Vec& g : gs) {
    h.step({g});
    ref.step(w, g);
    ref_plain.step(plain, g);
  }
  expect_near_vec(h.w(), w, "amsgrad");
  EXPECT_GT(std::abs(w[0] - plain[0]), 1e-3);
  EXPECT_EQ(h.opt->slots().size(), 3u);
  expect_near_vec(h.opt->slots().at("velocity_hat/layer/w0"), ref.vh, "v_hat");
}

TEST(Optimizers, AdamWDecaysDecoupledWithDefault0004) {
  auto opt = AdamW({.learning_rate = 0.5});
  ASSERT_TRUE(opt->options().weight_decay.has_value());
  EXPECT_DOUBLE_EQ(*opt->options().weight_decay, 0.004);
  EXPECT_EQ(opt->class_name(), "AdamW");
  expect_trajectory(opt, RefAdam{.lr = 0.5, .wd = 0.004}, "AdamW");
  // Decoupled: the moments are those of plain Adam on the same gradients.
  Harness a(AdamW({.learning_rate = 0.5, .weight_decay = 0.3}), {kW0});
  Harness b(Adam({.learning_rate = 0.5}), {kW0});
  for (const Vec& g : kGrads) a.step({g}), b.step({g});
  EXPECT_TRUE(testing::tensors_near(a.opt->slots().at("momentum/layer/w0"),
                                    b.opt->slots().at("momentum/layer/w0"), 0, 0));
  EXPECT_TRUE(testing::tensors_near(a.opt->slots().at("velocity/layer/w0"),
                                    b.opt->slots().at("velocity/layer/w0"), 0, 0));
  Vec w = kW0;
  RefAdam ref{.lr = 0.5, .wd = 0.3};
  for (const Vec& g : kGrads) ref.step(w, g);
  expect_near_vec(a.w(), w, "AdamW wd 0.3");
}

TEST(Optimizers, WeightDecayOnSGDAndExclusionByName) {
  // w <- w - w*wd*lr - lr*g, for any optimizer (Keras 3 base optimizer).
  auto opt = SGD({.learning_rate = 0.1, .weight_decay = 0.5});
  opt->exclude_from_weight_decay({"bias"});
  Graph g;
  Value lr = g.placeholder("lr", DType::kF32, {}), t = g.placeholder("t", DType::kF32, {});
  Value k = g.variable("k", vec_tensor({1.0, -2.0}));
  Value b = g.variable("b", vec_tensor({1.0, -2.0}));
  Value gk = g.constant(vec_tensor({0.5, 0.5})), gb = g.constant(vec_tensor({0.5, 0.5}));
  Executor ex(g, {},
              opt->build_updates(g, {k, b}, {gk, gb}, {"dense/kernel", "dense/bias"}, lr, t));
  ex.run(opt->step_feeds(lr, t));
  expect_near_vec(g.variable_tensor(k), {1.0 - 0.05 - 0.05, -2.0 + 0.1 - 0.05}, "kernel decays");
  expect_near_vec(g.variable_tensor(b), {1.0 - 0.05, -2.0 - 0.05}, "bias excluded");
  testing::expect_throws_with<ValueError>([&] { opt->exclude_from_weight_decay({"(("}); },
                                          "invalid pattern");
}

TEST(Optimizers, RMSpropPlainMomentumCentered) {
  expect_trajectory(RMSprop(), RefRMSprop{.lr = 0.001}, "RMSprop defaults");
  expect_trajectory(RMSprop({.learning_rate = 0.05}, {.rho = 0.8, .momentum = 0.5}),
                    RefRMSprop{.lr = 0.05, .rho = 0.8, .mu = 0.5}, "RMSprop momentum");
  expect_trajectory(RMSprop({.learning_rate = 0.05}, {.centered = true}),
                    RefRMSprop{.lr = 0.05, .centered = true}, "RMSprop centered");
  expect_trajectory(RMSprop({.learning_rate = 0.05}, {.momentum = 0.7, .centered = true}),
                    RefRMSprop{.lr = 0.05, .mu = 0.7, .centered = true},
                    "RMSprop centered momentum");
  // Keras 3 puts epsilon inside the square root: with epsilon = 1, one step from v = 0.1 g^2
  // moves by lr g / sqrt(0.1 g^2 + 1), not lr g / (sqrt(0.1 g^2) + 1).
  expect_trajectory(RMSprop({.learning_rate = 0.1}, {.epsilon = 1.0}),
                    RefRMSprop{.lr = 0.1, .eps = 1.0}, "RMSprop epsilon 1");
}

TEST(Optimizers, RMSpropKerasDocstringExample) {
  // keras.optimizers.RMSprop(learning_rate=0.1) on loss var^2/2 from var = 10 gives 9.683772.
  Harness h(RMSprop({.learning_rate = 0.1}), {{10.0}});
  h.step({{10.0}});
  EXPECT_NEAR(h.w().get_as_double(0), 9.683772, 1e-5);
  auto slots = h.opt->slots();
  EXPECT_EQ(slots.size(), 1u);
  EXPECT_TRUE(slots.count("velocity/layer/w0"));
}

// ---- Clipping ----

TEST(Optimizers, ClipnormClipsEachGradientOnItsOwn) {
  // SGD with lr 1 moves each weight by minus its clipped gradient.
  Harness h(SGD({.learning_rate = 1.0, .clipnorm = 1.0}), {{0, 0}, {0, 0}});
  h.step({{3, 4}, {0.3, 0.4}});  // norms 5 (clipped to 1) and 0.5 (kept)
  expect_near_vec(h.w(0), {-0.6, -0.8}, "large gradient");
  expect_near_vec(h.w(1), {-0.3, -0.4}, "small gradient");
  h.step({{0, 0}, {0, 0}});  // a zero gradient stays zero (no NaN)
  expect_near_vec(h.w(0), {-0.6, -0.8}, "zero gradient");
}

TEST(Optimizers, GlobalClipnormScalesAllGradientsTogether) {
  Harness h(SGD({.learning_rate = 1.0, .global_clipnorm = 1.0}), {{0, 0}, {0, 0}});
  h.step({{3, 4}, {0.3, 0.4}});
  const double norm = std::sqrt(25.0 + 0.25);
  expect_near_vec(h.w(0), {-3 / norm, -4 / norm}, "first");
  expect_near_vec(h.w(1), {-0.3 / norm, -0.4 / norm}, "second");
  Harness small(SGD({.learning_rate = 1.0, .global_clipnorm = 10.0}), {{0, 0}, {0, 0}});
  small.step({{3, 4}, {0.3, 0.4}});  // global norm below 10: untouched
  expect_near_vec(small.w(0), {-3, -4}, "unclipped");
  small.step({{0, 0}, {0, 0}});  // norm 0: scale 1, no NaN
  expect_near_vec(small.w(1), {-0.3, -0.4}, "zero");
}

TEST(Optimizers, ClipvalueClipsElements) {
  Harness h(SGD({.learning_rate = 1.0, .clipvalue = 0.5}), {{0, 0, 0}});
  h.step({{3, -4, 0.2}});
  expect_near_vec(h.w(), {-0.5, 0.5, -0.2}, "clipvalue");
}

TEST(Optimizers, ClipOptionsAreMutuallyExclusive) {
  testing::expect_throws_with<ValueError>([] { SGD({.clipnorm = 1.0, .clipvalue = 1.0}); },
                                          "only one of clipnorm, clipvalue and global_clipnorm");
  testing::expect_throws_with<ValueError>([] { Adam({.clipnorm = 1.0, .global_clipnorm = 2.0}); },
                                          "only one of");
  testing::expect_throws_with<ValueError>([] { RMSprop({.clipvalue = -1.0}); },
                                          "'clipvalue' must be >= 0");
  testing::expect_throws_with<ValueError>([] { SGD({}, {.momentum = 1.5}); },
                                          "'momentum' must be in [0, 1]");
}

// ---- Schedules ----

TEST(Schedules, ExponentialDecayBothWays) {
  auto s = ExponentialDecay(0.1, 10, 0.5);
  EXPECT_NEAR((*s)(0), 0.1, 1e-15);
  EXPECT_NEAR((*s)(5), 0.1 * std::sqrt(0.5), 1e-15);
  EXPECT_NEAR((*s)(10), 0.05, 1e-15);
  EXPECT_NEAR((*s)(15), 0.1 * std::pow(0.5, 1.5), 1e-15);
  auto st = ExponentialDecay(0.1, 10, 0.5, /*staircase=*/true);
  EXPECT_NEAR((*st)(5), 0.1, 1e-15);
  EXPECT_NEAR((*st)(9), 0.1, 1e-15);
  EXPECT_NEAR((*st)(10), 0.05, 1e-15);
  EXPECT_NEAR((*st)(19), 0.05, 1e-15);
  EXPECT_NEAR((*st)(20), 0.025, 1e-15);
  testing::expect_throws_with<ValueError>([] { ExponentialDecay(0.1, 0, 0.5); },
                                          "'decay_steps' must be > 0");
}

TEST(Schedules, CosineDecayWithAndWithoutWarmup) {
  auto s = CosineDecay(1.0, 10, 0.1);
  EXPECT_NEAR((*s)(0), 1.0, 1e-12);
  EXPECT_NEAR((*s)(2), 0.9 * 0.5 * (1 + std::cos(M_PI * 0.2)) + 0.1, 1e-12);
  EXPECT_NEAR((*s)(5), 0.55, 1e-12);
  EXPECT_NEAR((*s)(10), 0.1, 1e-12);
  EXPECT_NEAR((*s)(50), 0.1, 1e-12);  // held at alpha after decay_steps
  auto w = CosineDecay(0.0, 10, 0.0, /*warmup_target=*/1.0, /*warmup_steps=*/5);
  EXPECT_NEAR((*w)(0), 0.0, 1e-12);
  EXPECT_NEAR((*w)(2), 0.4, 1e-12);
  EXPECT_NEAR((*w)(5), 1.0, 1e-12);
  EXPECT_NEAR((*w)(10), 0.5, 1e-12);
  EXPECT_NEAR((*w)(15), 0.0, 1e-12);
  EXPECT_NEAR((*w)(100), 0.0, 1e-12);
}

TEST(Schedules, PiecewiseConstantIncludesTheBoundaryInTheEarlierPiece) {
  auto s = PiecewiseConstantDecay({10, 20}, {1.0, 0.5, 0.1});
  EXPECT_EQ((*s)(0), 1.0);
  EXPECT_EQ((*s)(10), 1.0);
  EXPECT_EQ((*s)(11), 0.5);
  EXPECT_EQ((*s)(20), 0.5);
  EXPECT_EQ((*s)(21), 0.1);
  EXPECT_EQ((*s)(100000), 0.1);
  testing::expect_throws_with<ValueError>(
      [] {
        PiecewiseConstantDecay({10, 20}, {1.0, 0.5});
      },
      "one more value than boundaries");
  testing::expect_throws_with<ValueError>(
      [] {
        PiecewiseConstantDecay({20, 10}, {1, 2, 3});
      },
      "strictly increasing");
}

TEST(Schedules, InverseTimeAndPolynomial) {
  auto it = InverseTimeDecay(0.1, 1, 0.5);
  EXPECT_NEAR((*it)(2), 0.05, 1e-15);
  auto its = InverseTimeDecay(0.1, 4, 0.5, true);
  EXPECT_NEAR((*its)(3), 0.1, 1e-15);
  EXPECT_NEAR((*its)(4), 0.1 / 1.5, 1e-15);
  auto p = PolynomialDecay(0.1, 10, 0.01, 0.5);
  EXPECT_NEAR((*p)(5), 0.09 * std::sqrt(0.5) + 0.01, 1e-15);
  EXPECT_NEAR((*p)(20), 0.01, 1e-15);
  auto pc = PolynomialDecay(0.1, 10, 0.01, 0.5, /*cycle=*/true);
  EXPECT_NEAR((*pc)(0), 0.1, 1e-15);
  EXPECT_NEAR((*pc)(15), 0.09 * 0.5 + 0.01, 1e-15);  // decay period 20, 3/4 through
}

TEST(Schedules, ConfigRoundTrip) {
  std::vector<SchedulePtr> all = {
      ExponentialDecay(0.1, 7, 0.3, true), CosineDecay(0.2, 9, 0.05),
      CosineDecay(0.0, 9, 0.0, 0.4, 3),    PiecewiseConstantDecay({3, 8}, {0.3, 0.2, 0.1}),
      InverseTimeDecay(0.5, 2, 0.1),       PolynomialDecay(0.3, 4, 0.0, 2.0, true)};
  for (const auto& s : all) {
    Json c = s->get_config();
    EXPECT_EQ(c["class_name"], s->class_name());
    auto back = schedule_from_config(c);
    EXPECT_EQ(back->get_config(), c);
    for (int64_t step : {0, 1, 3, 5, 8, 9, 13, 40}) EXPECT_DOUBLE_EQ((*back)(step), (*s)(step));
  }
  // A Keras 3 serialized schedule.
  Json keras =
      Json::parse(R"({"module": "keras.optimizers.schedules", "class_name": "ExponentialDecay",
      "config": {"initial_learning_rate": 0.01, "decay_steps": 10000, "decay_rate": 0.9,
                 "staircase": false, "name": "ExponentialDecay"}, "registered_name": null})");
  EXPECT_NEAR((*schedule_from_config(keras))(10000), 0.009, 1e-15);
  testing::expect_throws_with<ValueError>(
      [] {
        schedule_from_config({{"class_name", "CosineDecayRestarts"}, {"config", Json::object()}});
      },
      "unknown class 'CosineDecayRestarts'");
  testing::expect_throws_with<ValueError>(
      [] {
        schedule_from_config({{"class_name", "ExponentialDecay"},
                              {"config",
                               {{"initial_learning_rate", 0.1},
                                {"decay_steps", 2},
                                {"decay_rate", 0.5},
                                {"x", 1}}}});
      },
      "argument 'x' not recognized");
}

TEST(Optimizers, ScheduleDrivesTheLearningRateFromIterations) {
  // lr for update k (1-based) is schedule(k - 1), as Keras evaluates it at iterations.
  auto opt = SGD({.learning_rate = 123.0, .schedule = PiecewiseConstantDecay({1}, {1.0, 0.5})});
  EXPECT_EQ(opt->learning_rate_at(0), 1.0);
  EXPECT_EQ(opt->learning_rate_at(2), 0.5);
  Harness h(opt, {{0.0}});
  h.step({{1.0}});
  h.step({{1.0}});
  h.step({{1.0}});
  EXPECT_NEAR(h.w().get_as_double(0), -2.5, 1e-6);
  EXPECT_EQ(opt->iterations(), 3);
  auto feeds = opt->step_feeds(h.lr, h.t);
  EXPECT_EQ(feeds[0].second.item<float>(), 0.5f);
  EXPECT_EQ(feeds[1].second.item<float>(), 4.0f);
}

// ---- Configs ----

TEST(Optimizers, ConfigRoundTripAndKerasDefaults) {
  std::vector<OptimizerPtr> all = {
      SGD(),
      SGD({.learning_rate = 0.3, .clipnorm = 2.0}, {.momentum = 0.8, .nesterov = true}),
      Adam(),
      Adam({.schedule = CosineDecay(0.01, 100), .weight_decay = 0.1}, {.amsgrad = true}),
      AdamW({.global_clipnorm = 1.0}, {.beta_1 = 0.85}),
      RMSprop(),
      RMSprop({.learning_rate = 0.01, .clipvalue = 0.5},
              {.rho = 0.7, .momentum = 0.2, .centered = true})};
  for (const auto& opt : all) {
    Json c = optimizer_to_config(*opt);
    auto back = optimizer_from_config(c);
    EXPECT_EQ(back->class_name(), opt->class_name());
    EXPECT_EQ(optimizer_to_config(*back), c) << c.dump();
  }
  Json sgd = SGD()->get_config();
  EXPECT_EQ(sgd["name"], "SGD");
  EXPECT_EQ(sgd["learning_rate"], 0.01);
  EXPECT_TRUE(sgd["clipnorm"].is_null());
  EXPECT_EQ(Adam()->get_config()["learning_rate"], 0.001);
  EXPECT_EQ(Adam()->get_config()["epsilon"], 1e-7);
  EXPECT_EQ(AdamW()->get_config()["weight_decay"], 0.004);
  EXPECT_EQ(RMSprop()->get_config()["rho"], 0.9);
  EXPECT_EQ(optimizer_by_name("Adam")->class_name(), "Adam");
  EXPECT_EQ(optimizer_by_name("rmsprop")->learning_rate(), 0.001);
  EXPECT_EQ(optimizer_by_name("sgd")->learning_rate(), 0.01);
  EXPECT_EQ(optimizer_by_name("adamw")->class_name(), "AdamW");
  testing::expect_throws_with<ValueError>([] { optimizer_by_name("nadam"); },
                                          "unknown optimizer 'nadam'");
}

TEST(Optimizers, ReadsKeras3AndTfKerasConfigs) {
  // What keras.optimizers.serialize(keras.optimizers.Adam()) writes in Keras 3.
  Json k3 = Json::parse(R"({"module": "keras.optimizers", "class_name": "Adam", "config": {
      "name": "adam", "learning_rate": 0.0010000000474974513, "weight_decay": null,
      "clipnorm": null, "global_clipnorm": null, "clipvalue": null, "use_ema": false,
      "ema_momentum": 0.99, "ema_overwrite_frequency": null, "loss_scale_factor": null,
      "gradient_accumulation_steps": null, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-07,
      "amsgrad": false}, "registered_name": null})");
  auto a = optimizer_from_config(k3);
  EXPECT_EQ(a->class_name(), "Adam");
  EXPECT_NEAR(a->learning_rate_at(0), 0.001, 1e-9);
  // tf.keras 2.11+ adds jit_compile and is_legacy_optimizer.
  Json tk = Json::parse(R"({"class_name": "SGD", "config": {"name": "SGD", "weight_decay": null,
      "clipnorm": null, "global_clipnorm": null, "clipvalue": null, "use_ema": false,
      "ema_momentum": 0.99, "ema_overwrite_frequency": null, "jit_compile": true,
      "is_legacy_optimizer": false, "learning_rate": 0.05, "momentum": 0.9, "nesterov": true}})");
  auto s = optimizer_from_config(tk);
  EXPECT_EQ(s->get_config()["momentum"], 0.9);
  EXPECT_EQ(s->learning_rate(), 0.05);
  EXPECT_EQ(optimizer_from_config(Json("RMSprop"))->class_name(), "RMSprop");
  testing::expect_throws_with<ValueError>(
      [] {
        optimizer_from_config({{"class_name", "adam"}, {"config", {{"betaa", 0.9}}}});
      },
      "argument 'betaa' not recognized");
  testing::expect_throws_with<UnsupportedError>(
      [] {
        optimizer_from_config({{"class_name", "Adam"}, {"config", {{"use_ema", true}}}});
      },
      "use_ema");
  testing::expect_throws_with<ValueError>(
      [] {
        optimizer_from_config({{"class_name", "AdamW"}, {"config", {{"weight_decay", nullptr}}}});
      },
      "'weight_decay' must be a number");
  testing::expect_throws_with<ValueError>(
      [] {
        optimizer_from_config({{"class_name", "Lion"}});
      },
      "unknown class 'Lion'");
}

// ---- Slots and graphs ----

TEST(Optimizers, SlotsAreSharedBetweenGraphs) {
  auto opt = Adam({.learning_rate = 0.1});
  Tensor w = vec_tensor(kW0);  // the weight both graphs bind
  auto build = [&](Graph& g, Value& lr, Value& t, Value& grad) {
    lr = g.placeholder("lr", DType::kF32, {});
    t = g.placeholder("t", DType::kF32, {});
    grad = g.placeholder("grad", DType::kF32, {3});
    Value v = g.variable("dense/kernel", w);
    return opt->build_updates(g, {v}, {grad}, {"dense/kernel"}, lr, t);
  };
  Graph g1, g2;
  Value lr1, t1, gr1, lr2, t2, gr2;
  auto u1 = build(g1, lr1, t1, gr1);
  ASSERT_EQ(opt->slots().size(), 2u);
  const void* m_data = opt->slots().at("momentum/dense/kernel").raw();
  const int vars_before = static_cast<int>(g1.variables().size());
  opt->build_updates(g1, {g1.find("dense/kernel")}, {gr1}, {"dense/kernel"}, lr1, t1);
  EXPECT_EQ(static_cast<int>(g1.variables().size()), vars_before);  // rebinding reuses the nodes
  auto u2 = build(g2, lr2, t2, gr2);
  EXPECT_EQ(opt->slots().size(), 2u);
  EXPECT_EQ(opt->slots().at("momentum/dense/kernel").raw(), m_data);
  int bound = 0;
  for (const Value& v : g2.variables())
    if (g2.variable_tensor(v).raw() == m_data) ++bound;
  EXPECT_EQ(bound, 1);

  // One step in each graph continues one trajectory.
  Executor e1(g1, {}, u1), e2(g2, {}, u2);
  auto feeds = opt->step_feeds(lr1, t1);
  feeds.emplace_back(gr1, vec_tensor(kGrads[0]));
  e1.run(feeds);
  opt->set_iterations(1);
  feeds = opt->step_feeds(lr2, t2);
  feeds.emplace_back(gr2, vec_tensor(kGrads[1]));
  e2.run(feeds);
  Vec ref = kW0;
  RefAdam r{.lr = 0.1};
  r.step(ref, kGrads[0]);
  r.step(ref, kGrads[1]);
  expect_near_vec(w, ref, "two graphs");
  expect_near_vec(opt->slots().at("momentum/dense/kernel"), r.m, "shared m");
}

TEST(Optimizers, LoadSlotCopiesIntoTheBoundTensor) {
  Harness h(SGD({.learning_rate = 1.0}, {.momentum = 0.5}), {{0.0, 0.0}});
  Tensor& m = h.opt->slots().at("momentum/layer/w0");
  const void* data = m.raw();
  h.opt->load_slot("momentum/layer/w0", vec_tensor({1.0, -1.0}));
  EXPECT_EQ(h.opt->slots().at("momentum/layer/w0").raw(), data);
  h.step({{0.0, 0.0}});  // m = 0.5 * m; w += m
  expect_near_vec(h.w(), {0.5, -0.5}, "restored momentum drives the step");
  testing::expect_throws_with<ShapeError>(
      [&] { h.opt->load_slot("momentum/layer/w0", vec_tensor({1.0})); }, "expected shape [2]");
  h.opt->load_slot("momentum/other", vec_tensor({3.0}));
  EXPECT_EQ(h.opt->slots().size(), 2u);
}

TEST(Optimizers, BuildUpdatesErrorsAndMissingGradients) {
  auto opt = Adam();
  Graph g;
  Value lr = g.placeholder("lr", DType::kF32, {}), t = g.placeholder("t", DType::kF32, {});
  Value a = g.variable("a", vec_tensor({1, 2}));
  Value b = g.variable("b", vec_tensor({1, 2, 3}));
  Value ga = g.constant(vec_tensor({0.1, 0.1}));
  testing::expect_throws_with<ValueError>(
      [&] {
        opt->build_updates(g, {a, b}, {ga}, {"a", "b"}, lr, t);
      },
      "as many gradients");
  testing::expect_throws_with<ShapeError>([&] { opt->build_updates(g, {b}, {ga}, {"b"}, lr, t); },
                                          "the gradient of 'b' has shape [2]");
  testing::expect_throws_with<GraphError>([&] { opt->build_updates(g, {ga}, {ga}, {"x"}, lr, t); },
                                          "is not a variable");
  testing::expect_throws_with<ValueError>(
      [&] {
        opt->build_updates(g, {a, b}, {ga, ga}, {"a", "a"}, lr, t);
      },
      "'a' is repeated");
  testing::expect_throws_with<DTypeError>([&] { opt->build_updates(g, {a}, {ga}, {"a"}, ga, t); },
                                          "'lr' must be an f32 scalar");
  testing::expect_throws_with<ValueError>(
      [&] { opt->build_updates(g, {a}, {Value()}, {"a"}, lr, t); }, "no gradients");
  // A variable without a gradient is left alone.
  auto u = opt->build_updates(g, {a, b}, {ga, Value()}, {"a", "b"}, lr, t);
  for (const auto& [var, val] : u) EXPECT_FALSE(var == b);
  EXPECT_EQ(u.size(), 3u);  // a, m/a, v/a
}

// ---- End to end ----

TEST(Optimizers, MinimiseAQuadraticThroughGraphAndExecutor) {
  const Vec target = {1.0, 2.0, -3.0};
  std::vector<std::pair<std::string, OptimizerPtr>> opts = {
      {"sgd", SGD({.learning_rate = 0.1})},
      {"nesterov", SGD({.learning_rate = 0.05}, {.momentum = 0.9, .nesterov = true})},
      {"adam", Adam({.schedule = ExponentialDecay(0.1, 100, 0.5)})},
      {"amsgrad", Adam({.schedule = ExponentialDecay(0.1, 100, 0.5)}, {.amsgrad = true})},
      {"rmsprop", RMSprop({.schedule = ExponentialDecay(0.05, 100, 0.5)}, {.centered = true})},
      {"adamw", AdamW({.schedule = ExponentialDecay(0.1, 100, 0.5), .weight_decay = 1e-4})}};
  for (auto& [what, opt] : opts) {
    Graph g;
    Value lr = g.placeholder("lr", DType::kF32, {}), t = g.placeholder("t", DType::kF32, {});
    Value w = g.variable("w", vec_tensor({5.0, -3.0, 0.5}));
    Value loss = ops::sum(ops::square(w - g.constant(vec_tensor(target))));
    auto grads = gradients(loss, {w});
    Executor ex(g, {loss}, opt->build_updates(g, {w}, grads, {"w"}, lr, t));
    double first = 0, last = 0;
    for (int s = 0; s < 1000; ++s) {
      last = ex.run(opt->step_feeds(lr, t))[0].item<double>();
      if (s == 0) first = last;
      opt->set_iterations(opt->iterations() + 1);
    }
    EXPECT_GT(first, 30.0) << what;
    EXPECT_LT(last, 1e-4) << what;
    for (int i = 0; i < 3; ++i)
      EXPECT_NEAR(g.variable_tensor(w).get_as_double(i), target[i], 1e-2) << what;
  }
}

}  // namespace
}  // namespace lowbit::nn

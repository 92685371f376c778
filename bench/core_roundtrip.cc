// How fast the two CPUs exchange cache lines: the machine-side half of the 2-thread figures.
// On this project's virtual machines the answer changes with where the host runs the two vCPUs
// (docs/performance.md): about 55 ns per round trip in some states, about 330 ns in others.
//
//   core_roundtrip [--rounds 200000] [--repeat 3]
//
// Prints one JSON line per repeat: the round trip of one cache line between threads pinned to
// CPUs 0 and 1 (ping-pong on an atomic), and the time for CPU 0 to read 1 MiB just written by
// CPU 1.
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace {

void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Round trip in ns: CPU 0 sets the flag, CPU 1 clears it.
double roundtrip_ns(int rounds) {
  alignas(64) static std::atomic<int> flag{0};
  std::thread other([&] {
    pin(1);
    for (int i = 0; i < rounds; ++i) {
      while (flag.load(std::memory_order_acquire) != 1) {
      }
      flag.store(0, std::memory_order_release);
    }
  });
  pin(0);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < rounds; ++i) {
    flag.store(1, std::memory_order_release);
    while (flag.load(std::memory_order_acquire) != 0) {
    }
  }
  const double s = seconds_since(t0);
  other.join();
  return s / rounds * 1e9;
}

// GB/s of CPU 0 reading 1 MiB that CPU 1 has just written (8 independent sums).
double cross_read_gbs(int reps) {
  std::vector<float> buf(1 << 18);
  std::atomic<int> turn{0};
  std::thread writer([&] {
    pin(1);
    for (int r = 0; r < reps; ++r) {
      while (turn.load() != 1) {
      }
      for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i + r);
      turn.store(2);
    }
  });
  pin(0);
  double total = 0;
  volatile float sink = 0;
  for (int r = 0; r < reps; ++r) {
    turn.store(1);
    while (turn.load() != 2) {
    }
    const auto t0 = std::chrono::steady_clock::now();
    float acc[8] = {};
    for (size_t i = 0; i < buf.size(); i += 8)
      for (int j = 0; j < 8; ++j) acc[j] += buf[i + j];
    total += seconds_since(t0);
    sink = acc[0] + acc[7];
  }
  writer.join();
  (void)sink;
  return static_cast<double>(buf.size() * sizeof(float)) * reps / total / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 200000, repeat = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--rounds")
      rounds = std::stoi(argv[i + 1]);
    else if (k == "--repeat")
      repeat = std::stoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "core_roundtrip: unknown argument '%s'\n", k.c_str());
      return 1;
    }
  }
  if (std::thread::hardware_concurrency() < 2) {
    std::fprintf(stderr, "core_roundtrip: needs 2 CPUs\n");
    return 1;
  }
  for (int r = 0; r < repeat; ++r)
    std::printf(
        "{\"bench\": \"core_roundtrip\", \"roundtrip_ns\": %.1f, \"cross_read_gb_s\": %.1f}\n",
        roundtrip_ns(rounds), cross_read_gbs(200));
  return 0;
}

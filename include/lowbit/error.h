// Errors thrown at API boundaries (public calls, graph building, shape functions, loading).
//
// Every message names the op or function, the argument, what was expected and what was found:
//   matmul: argument 'b': inner dimensions differ: expected [3,*] but found [4,5] (a is [2,3])
// Kernels never throw; they assert with LOWBIT_CHECK / LOWBIT_DCHECK.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace lowbit {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// A shape is wrong (rank, dimension, broadcasting, inner dimensions...).
class ShapeError : public Error {
 public:
  using Error::Error;
};
// A dtype is wrong (f32 expected, integer found, ...).
class DTypeError : public Error {
 public:
  using Error::Error;
};
// An argument value or attribute is invalid (axis out of range, negative rate, unknown name).
class ValueError : public Error {
 public:
  using Error::Error;
};
// Reading or writing a file failed (missing, truncated, corrupted, wrong format).
class IoError : public Error {
 public:
  using Error::Error;
};
// The request is well-formed but not supported (an op without gradient, a layout we lack).
class UnsupportedError : public Error {
 public:
  using Error::Error;
};
// A graph is malformed or used wrongly (value from another graph, missing feed, cycle).
class GraphError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void check_failed(const char* file, int line, const char* cond,
                               const std::string& msg);
}  // namespace detail

}  // namespace lowbit

// Throws E with the streamed message: LOWBIT_THROW(ShapeError, "add: ", a, " vs ", b).
#define LOWBIT_THROW(E, ...) throw ::lowbit::E(::lowbit::detail::cat(__VA_ARGS__))

// Cheap invariant that must hold everywhere (also in release builds); aborts with a message.
#define LOWBIT_CHECK(cond, ...)                                                             \
  do {                                                                                      \
    if (!(cond))                                                                            \
      ::lowbit::detail::check_failed(__FILE__, __LINE__, #cond,                             \
                                     ::lowbit::detail::cat("" __VA_OPT__(, ) __VA_ARGS__)); \
  } while (0)

#ifdef NDEBUG
#define LOWBIT_DCHECK(cond, ...) \
  do {                           \
  } while (0)
#else
#define LOWBIT_DCHECK(cond, ...) LOWBIT_CHECK(cond __VA_OPT__(, ) __VA_ARGS__)
#endif

// Shared by the fuzz targets: a check that survives NDEBUG and says what broke.
#pragma once

#include <cstdio>
#include <cstdlib>

// An invariant the code under test promises; a violation is a finding, so
// it aborts (libFuzzer saves the input as a crash-* reproducer).
#define FUZZ_CHECK(cond, ...)                                                     \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::fprintf(stderr, "%s:%d: invariant broken: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                          \
      std::fputc('\n', stderr);                                                   \
      std::abort();                                                               \
    }                                                                             \
  } while (0)

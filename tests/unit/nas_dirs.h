// Real temporary directories standing in for the NAS, as the unit tests
// that use them share it (backend_test, tree_sync_test, split_brain_test):
// making them, looking at files in them, opening Backends on them.
#pragma once

#include <stdlib.h>
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "fs/backend.h"

namespace nasfs::testutil {

// A new directory from a mkdtemp template ("/tmp/name-XXXXXX"); a test
// failure if it cannot be made.
inline std::string MakeTemp(std::string tmpl) {
  if (!::mkdtemp(tmpl.data())) ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
  return tmpl;
}

// The whole content of the file at path ("" if it cannot be read).
inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Whether anything (a dangling symlink too) is at path.
inline bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

// The target of the symlink at path ("" if it is none).
inline std::string LinkTarget(const std::string& path) {
  std::error_code ec;
  return std::filesystem::read_symlink(path, ec).string();
}

// A master Backend on master_dir and a backup on backup_dir (2 threads, 2 s
// I/O timeout each), both opened, then both started; a failure (neither
// started) if either root cannot be opened.
inline ::testing::AssertionResult StartPair(const std::string& master_dir, const std::string& backup_dir,
                                            std::unique_ptr<Backend>* master, std::unique_ptr<Backend>* backup) {
  *master = std::make_unique<Backend>(Role::kMaster, master_dir, 2, std::chrono::milliseconds(2000));
  *backup = std::make_unique<Backend>(Role::kBackup, backup_dir, 2, std::chrono::milliseconds(2000));
  for (Backend* nas : {master->get(), backup->get()}) {
    auto r = nas->OpenRoot();
    if (!r) return ::testing::AssertionFailure() << "OpenRoot " << nas->name() << ": " << std::strerror(r.error());
  }
  (*master)->Start();
  (*backup)->Start();
  return ::testing::AssertionSuccess();
}

}  // namespace nasfs::testutil

#include "util/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "util/error.h"

namespace mha2mla {
namespace {

std::string errno_text() { return std::strerror(errno); }

// pid keeps concurrent processes apart, the counter keeps threads of one process apart.
std::string temp_name(const std::string& path) {
  static std::atomic<unsigned long> counter{0};
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
}

void fsync_path(const std::string& path, int flags, bool required) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) {
    if (required) fail("cannot open " + path + " to sync: " + errno_text());
    return;
  }
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0 && required) fail("cannot sync " + path + ": " + std::strerror(err));
}

std::string parent_dir(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& writer) {
  const std::string tmp = temp_name(path);
  try {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) fail("cannot create " + tmp + ": " + errno_text());
      writer(out);
      out.flush();
      if (!out) fail("write failed for " + tmp + " (disk full?)");
      out.close();
      if (out.fail()) fail("cannot close " + tmp);
    }
    // Data must be on disk before the rename publishes it, or a crash could leave an empty target.
    fsync_path(tmp, O_RDONLY, true);
    if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename " + tmp + " to " + path + ": " + errno_text());
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  // Persist the directory entry too; best effort, some filesystems refuse fsync on directories.
  fsync_path(parent_dir(path), O_RDONLY | O_DIRECTORY, false);
}

void write_text_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, [&](std::ostream& os) { os.write(text.data(), static_cast<std::streamsize>(text.size())); });
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open " + path + ": " + errno_text());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("cannot read " + path);
  return ss.str();
}

}  // namespace mha2mla

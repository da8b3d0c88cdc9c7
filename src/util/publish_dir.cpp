#include "util/publish_dir.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "util/error.h"
#include "util/fault.h"

namespace mha2mla {
namespace fs = std::filesystem;

namespace {

constexpr const char* kTmpSuffix = ".tmp-publish";
constexpr const char* kOldSuffix = ".old-publish";

void sync_dir(const fs::path& p) {
  int fd = ::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);  // best effort: some filesystems refuse fsync on folders
  ::close(fd);
}

// Files written by other means than write_file_atomic (copies) must reach the disk before the rename.
void sync_tree(const fs::path& root) {
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_regular_file(ec)) {
      int fd = ::open(it->path().c_str(), O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
      }
    } else if (it->is_directory(ec)) {
      sync_dir(it->path());
    }
  }
  sync_dir(root);
}

std::string normalized(const std::string& dst) {
  fs::path p(dst);
  while (!p.empty() && !p.has_filename()) p = p.parent_path();  // "out/" -> "out"
  check(!p.empty(), "cannot publish a folder at \"" + dst + "\"");
  return p.string();
}

std::string parent_of(const std::string& p) {
  fs::path parent = fs::path(p).parent_path();
  return parent.empty() ? "." : parent.string();
}

bool empty_or_missing(const std::string& p) {
  std::error_code ec;
  return !fs::exists(p, ec) || fs::is_empty(p, ec);
}

}  // namespace

std::string PublishDir::temp_path(const std::string& dst) { return normalized(dst) + kTmpSuffix; }

bool is_publish_temp(const std::string& name) {
  auto ends = [&](const char* suf) {
    const size_t n = std::strlen(suf);
    return name.size() >= n && name.compare(name.size() - n, n, suf) == 0;
  };
  return ends(kTmpSuffix) || ends(kOldSuffix);
}

PublishDir::PublishDir(const std::string& dst, bool replace) {
  dst_ = normalized(dst);
  tmp_ = dst_ + kTmpSuffix;
  old_ = dst_ + kOldSuffix;
  std::error_code ec;
  // A publication killed between its two fallback renames left the complete old folder aside: restore it.
  if (!fs::exists(dst_, ec) && fs::is_directory(old_, ec)) ::rename(old_.c_str(), dst_.c_str());
  if (fs::exists(dst_, ec)) {
    check(fs::is_directory(dst_, ec), dst_ + " exists and is not a folder");
    check(replace || fs::is_empty(dst_, ec), dst_ + " already exists and is not empty");
  }
  fs::remove_all(tmp_, ec);
  fs::remove_all(old_, ec);
  fs::create_directories(tmp_, ec);
  if (ec || !fs::is_directory(tmp_)) fail("cannot create " + tmp_ + ": " + ec.message());
}

PublishDir::~PublishDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(tmp_, ec);
}

void PublishDir::commit() {
  check(!committed_, "folder " + dst_ + " published twice");
  sync_tree(tmp_);
  fault_point("publish:built");
  std::error_code ec;
  if (empty_or_missing(dst_)) {
    // rename(2) replaces a missing or empty folder in one step.
    if (::rename(tmp_.c_str(), dst_.c_str()) != 0)
      fail("cannot rename " + tmp_ + " to " + dst_ + ": " + std::strerror(errno));
  } else if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, dst_.c_str(), RENAME_EXCHANGE) == 0) {
    // dst now holds the new folder and tmp the old one.
    fault_point("publish:exchanged");
    fs::remove_all(tmp_, ec);
  } else {
    // No atomic exchange on this filesystem: move the old folder aside first. A kill between the two
    // renames leaves the complete old folder at dst.old-publish, which the next PublishDir restores.
    if (::rename(dst_.c_str(), old_.c_str()) != 0)
      fail("cannot rename " + dst_ + " to " + old_ + ": " + std::strerror(errno));
    fault_point("publish:moved_aside");
    if (::rename(tmp_.c_str(), dst_.c_str()) != 0) {
      const int err = errno;
      ::rename(old_.c_str(), dst_.c_str());
      fail("cannot rename " + tmp_ + " to " + dst_ + ": " + std::strerror(err));
    }
    fs::remove_all(old_, ec);
  }
  committed_ = true;
  sync_dir(parent_of(dst_));
}

void publish_dir(const std::string& dst, const std::function<void(const std::string&)>& build, bool replace) {
  PublishDir p(dst, replace);
  build(p.tmp());
  p.commit();
}

}  // namespace mha2mla

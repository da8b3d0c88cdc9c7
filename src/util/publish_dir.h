#pragma once
// Publishes a folder atomically: it is built under a temporary name next to its destination, synced, then
// put in place with one rename (an atomic exchange when a previous version is there). A reader, or a process
// killed at any point, sees the old folder or the complete new one, never a mix; leftovers of a killed
// publication are cleaned up (or, where the old folder was moved aside, restored) by the next one.
#include <functional>
#include <string>

namespace mha2mla {

class PublishDir {
 public:
  // Checks dst (with replace=false an existing non-empty dst is an Error), clears leftovers and creates
  // the empty temporary folder.
  explicit PublishDir(const std::string& dst, bool replace = true);
  ~PublishDir();  // removes the temporary folder unless committed
  PublishDir(const PublishDir&) = delete;
  PublishDir& operator=(const PublishDir&) = delete;

  const std::string& tmp() const { return tmp_; }  // where to build
  void commit();                                   // syncs tmp and puts it at dst

  // The temporary folder's name for dst, for processes that write into it without owning it.
  static std::string temp_path(const std::string& dst);

 private:
  std::string dst_, tmp_, old_;
  bool committed_ = false;
};

// PublishDir in one call: build(tmp) fills the folder; if it throws, dst is untouched.
void publish_dir(const std::string& dst, const std::function<void(const std::string& tmp)>& build,
                 bool replace = true);

// Whether a file name is one of the temporary names above (for listings that must skip them).
bool is_publish_temp(const std::string& name);

}  // namespace mha2mla

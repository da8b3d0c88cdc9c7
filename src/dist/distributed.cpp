#include "dist/distributed.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef MHA2MLA_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "util/error.h"

namespace mha2mla::dist {

struct Dist::Group {
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
};

namespace {

int env_int(const char* name, int def) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  check(end && *end == '\0', std::string("environment variable ") + name + " must be an integer, got \"" + v + "\"");
  return static_cast<int>(x);
}

int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  check(fd >= 0, "cannot open a socket to find a free port");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    close(fd);
    fail("cannot find a free loopback port");
  }
  int port = ntohs(a.sin_port);
  close(fd);
  return port;
}

}  // namespace

Dist Dist::from_env(const torch::Device& device) {
  Dist d;
  d.world_ = env_int("WORLD_SIZE", 1);
  d.rank_ = env_int("RANK", 0);
  check(d.world_ >= 1 && d.rank_ >= 0 && d.rank_ < d.world_, "RANK must be in [0, WORLD_SIZE)");
  if (d.world_ == 1) return d;
  const char* addr = std::getenv("MASTER_ADDR");
  const int port = env_int("MASTER_PORT", -1);
  check(addr && *addr && port > 0, "distributed training needs MASTER_ADDR and MASTER_PORT");
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(port);
  so.isServer = d.rank_ == 0;
  so.numWorkers = d.world_;
  // A rank that dies mid-collective makes the others fail after this long instead of waiting forever.
  const int timeout_s = env_int("MHA2MLA_DIST_TIMEOUT", 300);
  check(timeout_s > 0, "MHA2MLA_DIST_TIMEOUT must be a positive number of seconds");
  so.timeout = std::chrono::seconds(timeout_s);
  auto store = c10::make_intrusive<c10d::TCPStore>(addr, so);
#ifdef MHA2MLA_WITH_NCCL
  if (device.is_cuda()) {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    d.pg_ = std::make_shared<Group>(Group{c10::make_intrusive<c10d::ProcessGroupNCCL>(store, d.rank_, d.world_, opts)});
    return d;
  }
#endif
  (void)device;
  auto opts = c10d::ProcessGroupGloo::Options::create();
  opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(addr));
  opts->timeout = std::chrono::seconds(timeout_s);
  d.pg_ = std::make_shared<Group>(Group{c10::make_intrusive<c10d::ProcessGroupGloo>(store, d.rank_, d.world_, opts)});
  return d;
}

void Dist::allreduce_mean(const std::vector<torch::Tensor>& ts) {
  if (world_ == 1 || ts.empty()) return;
  std::vector<torch::Tensor> flat;
  for (const auto& t : ts) flat.push_back(t.reshape({-1}));
  auto buf = torch::cat(flat);
  std::vector<torch::Tensor> v{buf};
  pg_->pg->allreduce(v)->wait();
  // MHA2MLA_MUTATE=allreduce-sum plants the classic world-size bug, so a test can show that it fails.
  static const bool mutate_sum = [] {
    const char* m = std::getenv("MHA2MLA_MUTATE");
    return m && std::string(m) == "allreduce-sum";
  }();
  if (!mutate_sum) buf.div_(world_);
  int64_t off = 0;
  for (const auto& t : ts) {
    auto n = t.numel();
    t.view({-1}).copy_(buf.narrow(0, off, n));
    off += n;
  }
}

void Dist::allreduce_sum(torch::Tensor& t) {
  if (world_ == 1) return;
  std::vector<torch::Tensor> v{t};
  pg_->pg->allreduce(v)->wait();
}

void Dist::broadcast(torch::Tensor& t, int root) {
  if (world_ == 1) return;
  std::vector<torch::Tensor> v{t};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  pg_->pg->broadcast(v, o)->wait();
}

void Dist::barrier() {
  if (world_ == 1) return;
  pg_->pg->barrier()->wait();
}

int launch_local(int nproc, const std::vector<std::string>& args) {
  check(nproc >= 1, "--nproc must be at least 1");
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < nproc; ++r) {
    pid_t pid = fork();
    check(pid >= 0, "fork failed");
    if (pid == 0) {
      setenv("RANK", std::to_string(r).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      std::vector<char*> cargv;
      for (const auto& a : args) cargv.push_back(const_cast<char*>(a.c_str()));
      cargv.push_back(nullptr);
      execv("/proc/self/exe", cargv.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  int result = 0;
  size_t left = pids.size();
  while (left > 0) {
    int status = 0;
    pid_t done = wait(&status);
    if (done < 0) break;
    --left;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    if (code != 0 && result == 0) {
      result = code;
      const int rank = static_cast<int>(std::find(pids.begin(), pids.end(), done) - pids.begin());
      const std::string how = WIFSIGNALED(status) ? "was killed by signal " + std::to_string(WTERMSIG(status))
                                                  : "exited with status " + std::to_string(code);
      std::fprintf(stderr, "mha2mla train: error: rank %d of %d %s; stopping the other processes\n", rank, nproc,
                   how.c_str());
      for (pid_t p : pids)
        if (p != done) kill(p, SIGTERM);  // one rank failed: the others would wait forever
    }
  }
  return result;
}

}  // namespace mha2mla::dist

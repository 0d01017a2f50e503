// Runs a command and prints its peak resident memory (the child's
// ru_maxrss, in KiB) on stdout, then exits with the command's status, so a
// test can bound a tool's memory without /usr/bin/time.
//
//   gquant_peak_rss COMMAND [ARGS...]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s COMMAND [ARGS...]\n", argv[0]);
    return 2;
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    std::fprintf(stderr, "fork: %s\n", std::strerror(errno));
    return 2;
  }
  if (pid == 0) {
    ::execvp(argv[1], argv + 1);
    std::fprintf(stderr, "cannot run %s: %s\n", argv[1], std::strerror(errno));
    ::_exit(127);
  }
  int status = 0;
  struct rusage usage {};
  while (::wait4(pid, &status, 0, &usage) < 0) {
    if (errno != EINTR) {
      std::fprintf(stderr, "wait4: %s\n", std::strerror(errno));
      return 2;
    }
  }
  std::printf("%ld\n", usage.ru_maxrss);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

// A floor under explicit thread stack sizes, for CUDA builds of the worker.
//
// Why: civetweb (prometheus-cpp's /metrics server) starts its threads with a
// fixed stack of about 100 KiB, and glibc carves every thread's static TLS out
// of its stack. cuBLASLt alone brings 92 KiB of static TLS, so once the worker
// links the CUDA libraries pthread_create fails with EINVAL and the metrics
// server cannot start ("Cannot create threads"). This definition interposes
// the libc function for the whole process (the executable's symbol wins over
// libc's for civetweb's calls) and raises any requested stack size below
// kStackFloor; larger requests and the default stack are untouched.
#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>

namespace {

constexpr size_t kStackFloor = size_t{1} << 20;  // 1 MiB: TLS + civetweb's frames with room

using SetStackSizeFn = int (*)(pthread_attr_t*, size_t);

SetStackSizeFn RealSetStackSize() {
  static const SetStackSizeFn real =
      reinterpret_cast<SetStackSizeFn>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  return real;
}

}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) {
  const SetStackSizeFn real = RealSetStackSize();
  if (real == nullptr) return ENOSYS;
  return real(attr, std::max(size, kStackFloor));
}

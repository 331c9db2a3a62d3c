// The Prometheus scrape endpoint shared by shrinkray-coordinator and
// shrinkray-worker: an HTTP server that serves one registry at /metrics.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/registry.h"

namespace prometheus {
class Exposer;
}  // namespace prometheus

namespace shrinkray {

class MetricsEndpoint {
 public:
  // Serves `registry` at http://HOST:PORT/metrics. `listen` is "HOST:PORT" with
  // HOST an IPv4 literal, "[IPv6]", "localhost", or empty/"*" for every
  // interface; PORT 0 picks a free port (see port()). A malformed `listen` is
  // InvalidArgument naming it; a port that cannot be bound is Unavailable.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& listen, std::shared_ptr<prometheus::Registry> registry);

  ~MetricsEndpoint();
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  // The port actually bound (the chosen one when `listen` asked for port 0).
  int port() const { return port_; }
  // "HOST:PORT" with the bound port, e.g. for WorkerHello.metrics_address.
  const std::string& address() const { return address_; }

 private:
  MetricsEndpoint(std::unique_ptr<prometheus::Exposer> exposer,
                  std::shared_ptr<prometheus::Registry> registry, int port, std::string address);

  // The exposer holds only a weak_ptr to the registry; keeping it here ties
  // the registry's lifetime to the endpoint's.
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  std::string address_;
};

}  // namespace shrinkray

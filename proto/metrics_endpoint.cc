#include "proto/metrics_endpoint.h"

#include <arpa/inet.h>

#include <charconv>
#include <exception>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "prometheus/exposer.h"

namespace shrinkray {
namespace {

struct ListenAddress {
  std::string civet_ports;   // civetweb's "listening_ports" syntax
  std::string display_host;  // for address()
};

absl::Status BadListen(const std::string& listen, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("metrics listen address \"", listen, "\": ", why,
                   " (want HOST:PORT, e.g. 0.0.0.0:9090 or 127.0.0.1:0)"));
}

// Checked here rather than left to civetweb, which reports every problem as
// the same exception and gives special meaning to suffixes (s, r) and commas.
absl::StatusOr<ListenAddress> ParseListen(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return BadListen(listen, "no port");
  const std::string host = listen.substr(0, colon);
  const std::string port_text = listen.substr(colon + 1);
  int port = -1;
  const auto [end, ec] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
      port < 0 || port > 65535) {
    return BadListen(listen, "port must be a number from 0 to 65535");
  }
  const std::string port_str = std::to_string(port);

  if (host.empty() || host == "*") return ListenAddress{port_str, "0.0.0.0"};
  if (host == "localhost") return ListenAddress{"127.0.0.1:" + port_str, "127.0.0.1"};
  unsigned char buf[16];
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    const std::string v6 = host.substr(1, host.size() - 2);
    if (inet_pton(AF_INET6, v6.c_str(), buf) != 1) {
      return BadListen(listen, "not an IPv6 address inside [ ]");
    }
    // civetweb's IPv6 syntax is "+" (dual stack) or "[addr]:port".
    return ListenAddress{host + ":" + port_str, host};
  }
  if (inet_pton(AF_INET, host.c_str(), buf) != 1) {
    return BadListen(listen, "host must be an IP address, [IPv6], localhost or empty");
  }
  return ListenAddress{host + ":" + port_str, host};
}

}  // namespace

MetricsEndpoint::MetricsEndpoint(std::unique_ptr<prometheus::Exposer> exposer,
                                 std::shared_ptr<prometheus::Registry> registry, int port,
                                 std::string address)
    : registry_(std::move(registry)),
      exposer_(std::move(exposer)),
      port_(port),
      address_(std::move(address)) {}

MetricsEndpoint::~MetricsEndpoint() = default;

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& listen, std::shared_ptr<prometheus::Registry> registry) {
  if (registry == nullptr) return absl::InvalidArgumentError("metrics registry is null");
  absl::StatusOr<ListenAddress> parsed = ParseListen(listen);
  if (!parsed.ok()) return parsed.status();

  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(parsed->civet_ports);
  } catch (const std::exception& e) {
    // civetweb throws only when it cannot start the server; with the address
    // already validated that means the port is taken or not ours to bind.
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", listen, ": ", e.what()));
  }
  const std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.empty() || ports.front() <= 0) {
    return absl::UnavailableError(absl::StrCat("metrics server on ", listen, " bound no port"));
  }
  exposer->RegisterCollectable(registry);
  const int port = ports.front();
  std::string address = absl::StrCat(parsed->display_host, ":", port);
  return std::unique_ptr<MetricsEndpoint>(
      new MetricsEndpoint(std::move(exposer), std::move(registry), port, std::move(address)));
}

}  // namespace shrinkray

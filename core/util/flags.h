// A small `--name value` / `--name=value` parser for the command-line tools
// (shrinkray, shrinkray-coordinator, shrinkray-worker). Every flag a command
// accepts is declared; anything else is a usage error. Flags declared
// repeatable may appear several times (GetAll); others only once.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace shrinkray {

class Flags {
 public:
  // `value_flags` take a value; `bool_flags` do not. Repeating a flag is an error.
  static absl::StatusOr<Flags> Parse(const std::vector<std::string>& args,
                                     const std::set<std::string>& value_flags,
                                     const std::set<std::string>& bool_flags = {},
                                     const std::set<std::string>& repeated_flags = {});

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  absl::StatusOr<std::string> Required(const std::string& name) const;
  std::string Get(const std::string& name, const std::string& fallback) const;
  absl::StatusOr<long> GetInt(const std::string& name, long fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;
  // Every value of a repeatable flag, in order (empty when absent).
  std::vector<std::string> GetAll(const std::string& name) const;

 private:
  std::map<std::string, std::vector<std::string>> values_;
};

}  // namespace shrinkray

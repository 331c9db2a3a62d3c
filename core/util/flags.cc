#include "core/util/flags.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace shrinkray {

absl::StatusOr<Flags> Flags::Parse(const std::vector<std::string>& args,
                                   const std::set<std::string>& value_flags,
                                   const std::set<std::string>& bool_flags,
                                   const std::set<std::string>& repeated_flags) {
  Flags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (flags.values_.count(name) > 0 && repeated_flags.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " given twice"));
    }
    if (bool_flags.count(name) > 0) {
      if (value.has_value()) return absl::InvalidArgumentError(absl::StrCat("flag --", name, " takes no value"));
      flags.values_[name].push_back("true");
    } else if (value_flags.count(name) > 0 || repeated_flags.count(name) > 0) {
      if (!value.has_value()) {
        if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
        value = args[++i];
      }
      flags.values_[name].push_back(*value);
    } else {
      std::set<std::string> all = value_flags;
      all.insert(bool_flags.begin(), bool_flags.end());
      all.insert(repeated_flags.begin(), repeated_flags.end());
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " (accepted: --", absl::StrJoin(all, ", --"), ")"));
    }
  }
  return flags;
}

absl::StatusOr<std::string> Flags::Required(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return absl::InvalidArgumentError(absl::StrCat("missing required flag --", name));
  return it->second.back();
}

std::string Flags::Get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.back();
}

absl::StatusOr<long> Flags::GetInt(const std::string& name, long fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  long value = 0;
  if (!absl::SimpleAtoi(it->second.back(), &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --", name, ": '", it->second.back(), "' is not an integer"));
  }
  return value;
}

absl::StatusOr<double> Flags::GetDouble(const std::string& name, double fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  double value = 0;
  if (!absl::SimpleAtod(it->second.back(), &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --", name, ": '", it->second.back(), "' is not a number"));
  }
  return value;
}

std::vector<std::string> Flags::GetAll(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

}  // namespace shrinkray

#include "core/pipeline/linear_result_codec.h"

#include <cstring>
#include <exception>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace shrinkray {
namespace {

using json = nlohmann::json;

template <typename T>
json Binary(const std::vector<T>& v) {
  std::vector<uint8_t> bytes(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(bytes.data(), v.data(), bytes.size());
  return json::binary(std::move(bytes));
}

template <typename T>
std::vector<T> FromBinary(const json& j) {
  const auto& bytes = j.get_binary();
  if (bytes.size() % sizeof(T) != 0) throw std::runtime_error("binary field of a wrong size");
  std::vector<T> v(bytes.size() / sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), bytes.data(), bytes.size());
  return v;
}

}  // namespace

std::vector<uint8_t> EncodeLinearResult(const LinearState& state, const MatrixReport& report) {
  json j = {{"report", MatrixReportToRecord(report)},
            {"weight", Binary(state.weight)},
            {"keep", Binary(state.keep)},
            {"pattern", state.pattern}};
  if (state.quantized.has_value()) {
    const QuantizedWeight& q = *state.quantized;
    j["quantized"] = {{"rows", q.rows},         {"cols", q.cols},       {"bits", q.bits},
                      {"group_size", q.group_size}, {"sym", q.sym},     {"act_order", q.act_order},
                      {"num_groups", q.num_groups}, {"codes", Binary(q.codes)}, {"scales", Binary(q.scales)},
                      {"zeros", Binary(q.zeros)},   {"g_idx", Binary(q.g_idx)}};
  }
  return json::to_cbor(j);
}

absl::Status DecodeLinearResult(std::span<const uint8_t> bytes, LinearState* state, MatrixReport* report) {
  try {
    const json j = json::from_cbor(bytes.begin(), bytes.end());
    *report = MatrixReportFromRecord(j.at("report"));
    state->weight = FromBinary<float>(j.at("weight"));
    state->keep = FromBinary<uint8_t>(j.at("keep"));
    state->pattern = j.at("pattern").get<std::string>();
    state->quantized.reset();
    if (j.contains("quantized")) {
      const json& qj = j.at("quantized");
      QuantizedWeight q;
      q.rows = qj.at("rows").get<int>();
      q.cols = qj.at("cols").get<int>();
      q.bits = qj.at("bits").get<int>();
      q.group_size = qj.at("group_size").get<int>();
      q.sym = qj.at("sym").get<bool>();
      q.act_order = qj.at("act_order").get<bool>();
      q.num_groups = qj.at("num_groups").get<int>();
      q.codes = FromBinary<uint8_t>(qj.at("codes"));
      q.scales = FromBinary<float>(qj.at("scales"));
      q.zeros = FromBinary<int32_t>(qj.at("zeros"));
      q.g_idx = FromBinary<int32_t>(qj.at("g_idx"));
      state->quantized = std::move(q);
    }
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("compressed-matrix record: ", e.what()));
  }
  if (state->weight.size() != static_cast<size_t>(report->rows) * report->cols) {
    return absl::DataLossError(absl::StrCat("compressed-matrix record of ", report->module, ": ", state->weight.size(),
                                            " weights for a ", report->rows, "x", report->cols, " matrix"));
  }
  return absl::OkStatus();
}

}  // namespace shrinkray

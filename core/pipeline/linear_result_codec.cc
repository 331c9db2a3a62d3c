#include "core/pipeline/linear_result_codec.h"

#include <cstring>
#include <exception>

#include "absl/strings/str_cat.h"
#include "core/algo/quantized_codes.h"
#include "core/io/model_writer.h"
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
  json j = {{"report", MatrixReportToRecord(report)}, {"keep", Binary(state.keep)}, {"pattern", state.pattern}};
  // A quantized weight that is exactly its dequantized codes (GPTQ, RTN) goes
  // as its codes alone, two to a byte up to 4 bits: a w4 matrix in ~1/8 of
  // its float32 bytes.
  const bool from_codes = state.quantized.has_value() && IsDequantized(*state.quantized, state.weight);
  if (!from_codes) j["weight"] = Binary(state.weight);
  if (state.quantized.has_value()) {
    const QuantizedWeight& q = *state.quantized;
    const bool pairs = CodesPerByte(q.bits) == 2 && q.codes.size() == static_cast<size_t>(q.rows) * q.cols;
    std::vector<uint8_t> codes;
    if (pairs) {
      codes.resize((q.codes.size() + 1) / 2);
      PackCodePairs(q.codes.data(), q.codes.size(), codes.data());
    }
    j["quantized"] = {{"rows", q.rows},
                      {"cols", q.cols},
                      {"bits", q.bits},
                      {"group_size", q.group_size},
                      {"sym", q.sym},
                      {"act_order", q.act_order},
                      {"num_groups", q.num_groups},
                      {"codes_per_byte", pairs ? 2 : 1},
                      {"codes", pairs ? json::binary(std::move(codes)) : Binary(q.codes)},
                      {"scales", Binary(q.scales)},
                      {"zeros", Binary(q.zeros)},
                      {"g_idx", Binary(q.g_idx)}};
  }
  return json::to_cbor(j);
}

absl::Status DecodeLinearResult(std::span<const uint8_t> bytes, LinearState* state, MatrixReport* report) {
  try {
    const json j = json::from_cbor(bytes.begin(), bytes.end());
    *report = MatrixReportFromRecord(j.at("report"));
    state->weight.clear();
    if (j.contains("weight")) state->weight = FromBinary<float>(j.at("weight"));
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
      const int per_byte = qj.at("codes_per_byte").get<int>();
      if (per_byte == 2) {
        const std::vector<uint8_t> pairs = FromBinary<uint8_t>(qj.at("codes"));
        const size_t count = static_cast<size_t>(q.rows) * static_cast<size_t>(q.cols);
        if (q.rows < 0 || q.cols < 0 || pairs.size() != (count + 1) / 2) {
          throw std::runtime_error("codes of a wrong size");
        }
        q.codes.resize(count);
        UnpackCodePairs(pairs.data(), count, q.codes.data());
      } else if (per_byte == 1) {
        q.codes = FromBinary<uint8_t>(qj.at("codes"));
      } else {
        throw std::runtime_error(absl::StrCat(per_byte, " codes per byte"));
      }
      q.scales = FromBinary<float>(qj.at("scales"));
      q.zeros = FromBinary<int32_t>(qj.at("zeros"));
      q.g_idx = FromBinary<int32_t>(qj.at("g_idx"));
      state->quantized = std::move(q);
    }
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("compressed-matrix record: ", e.what()));
  }
  // Sent as its codes: rebuilt from them, once their layout is checked.
  if (state->weight.empty() && state->quantized.has_value()) {
    const absl::Status valid = ValidateQuantizedWeight(*state->quantized, report->module);
    if (!valid.ok()) return absl::DataLossError(absl::StrCat("compressed-matrix record: ", valid.message()));
    state->weight = DequantizeAll(*state->quantized);
  }
  if (state->weight.size() != static_cast<size_t>(report->rows) * report->cols) {
    return absl::DataLossError(absl::StrCat("compressed-matrix record of ", report->module, ": ", state->weight.size(),
                                            " weights for a ", report->rows, "x", report->cols, " matrix"));
  }
  return absl::OkStatus();
}

}  // namespace shrinkray

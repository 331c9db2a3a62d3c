#include "core/pipeline/compress_report.h"

#include <limits>

namespace shrinkray {

double JsonNumberOrNaN(const nlohmann::json& j, const char* key) {
  const nlohmann::json& v = j.at(key);
  return v.is_null() ? std::numeric_limits<double>::quiet_NaN() : v.get<double>();
}

nlohmann::json MatrixReport::ToJson() const {
  nlohmann::json j = {
      {"module", module},
      {"layer", layer},
      {"group", group},
      {"shape", {rows, cols}},
      {"methods", methods},
      {"bits", bits},
      {"sparsity", sparsity},
      {"error", error},
      {"seconds", seconds},
  };
  if (bits > 0) {
    j["group_size"] = group_size;
    j["sym"] = sym;
    j["act_order"] = act_order;
  }
  if (!pattern.empty()) j["pattern"] = pattern;
  j["rtn_error"] = rtn_error.has_value() ? nlohmann::json(*rtn_error) : nlohmann::json(nullptr);
  j["solver_loss"] = solver_loss;
  j["damp_used"] = damp_used;
  j["damp_increments"] = damp_increments;
  j["dead_columns"] = dead_columns;
  return j;
}

nlohmann::json CalibrationReport::ToJson() const {
  return {{"source", source},         {"pretokenized", pretokenized}, {"num_samples", num_samples},
          {"seqlen", seqlen},         {"seed", seed},                 {"source_tokens", source_tokens},
          {"tokens", static_cast<long>(num_samples) * seqlen}};
}

double CompressReport::MeanError() const {
  if (matrices.empty()) return 0.0;
  double sum = 0.0;
  for (const MatrixReport& m : matrices) sum += m.error;
  return sum / static_cast<double>(matrices.size());
}

nlohmann::json CompressReport::ToJson() const {
  nlohmann::json rows = nlohmann::json::array();
  double total_solve = 0.0;
  long with_rtn = 0, gptq_better = 0;
  for (const MatrixReport& m : matrices) {
    rows.push_back(m.ToJson());
    total_solve += m.seconds;
    if (m.rtn_error.has_value()) {
      ++with_rtn;
      if (m.error <= *m.rtn_error) ++gptq_better;
    }
  }
  nlohmann::json totals = {
      {"matrices", matrices.size()},
      {"mean_error", MeanError()},
      {"solve_seconds", total_solve},
  };
  if (with_rtn > 0) {
    totals["matrices_with_rtn_error"] = with_rtn;
    totals["matrices_error_le_rtn"] = gptq_better;
  }
  return {
      {"model", model_dir},
      {"output", out_dir},
      {"format", format},
      {"calibration", calibration.ToJson()},
      {"recipe", recipe},
      {"true_sequential", true_sequential},
      {"matrices", rows},
      {"totals", totals},
      {"dense_fallbacks", dense_fallbacks},
      {"timings",
       {{"load_seconds", load_seconds},
        {"calibration_seconds", calibration_seconds},
        {"embed_seconds", embed_seconds},
        {"layer_seconds", layer_seconds},
        {"write_seconds", write_seconds},
        {"io_wait_seconds", io_wait_seconds},
        {"total_seconds", total_seconds}}},
  };
}

nlohmann::json MatrixReportToRecord(const MatrixReport& m) {
  return {{"module", m.module},
          {"layer", m.layer},
          {"group", m.group},
          {"rows", m.rows},
          {"cols", m.cols},
          {"methods", m.methods},
          {"bits", m.bits},
          {"group_size", m.group_size},
          {"sym", m.sym},
          {"act_order", m.act_order},
          {"sparsity", m.sparsity},
          {"pattern", m.pattern},
          {"error", m.error},
          {"rtn_error", m.rtn_error.has_value() ? nlohmann::json(*m.rtn_error) : nlohmann::json()},
          {"has_rtn_error", m.rtn_error.has_value()},
          {"solver_loss", m.solver_loss},
          {"damp_used", m.damp_used},
          {"damp_increments", m.damp_increments},
          {"dead_columns", m.dead_columns},
          {"seconds", m.seconds}};
}

MatrixReport MatrixReportFromRecord(const nlohmann::json& j) {
  MatrixReport m;
  m.module = j.at("module").get<std::string>();
  m.layer = j.at("layer").get<int>();
  m.group = j.at("group").get<std::string>();
  m.rows = j.at("rows").get<int>();
  m.cols = j.at("cols").get<int>();
  m.methods = j.at("methods").get<std::vector<std::string>>();
  m.bits = j.at("bits").get<int>();
  m.group_size = j.at("group_size").get<int>();
  m.sym = j.at("sym").get<bool>();
  m.act_order = j.at("act_order").get<bool>();
  m.sparsity = JsonNumberOrNaN(j, "sparsity");
  m.pattern = j.at("pattern").get<std::string>();
  m.error = JsonNumberOrNaN(j, "error");
  if (j.at("has_rtn_error").get<bool>()) m.rtn_error = JsonNumberOrNaN(j, "rtn_error");
  m.solver_loss = JsonNumberOrNaN(j, "solver_loss");
  m.damp_used = JsonNumberOrNaN(j, "damp_used");
  m.damp_increments = j.at("damp_increments").get<int>();
  m.dead_columns = j.at("dead_columns").get<int>();
  m.seconds = JsonNumberOrNaN(j, "seconds");
  return m;
}

}  // namespace shrinkray

#include "core/pipeline/compress_report.h"

namespace shrinkray {

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
        {"total_seconds", total_seconds}}},
  };
}

}  // namespace shrinkray

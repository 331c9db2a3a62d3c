// What a compression run reports: one row per compressed matrix, plus the
// calibration data, the recipe and the timings. Written as report.json in the
// output folder.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace shrinkray {

struct MatrixReport {
  std::string module;  // "model.layers.0.mlp.down_proj"
  int layer = 0;
  std::string group;  // "qkv", "o", "gate_up", "down"
  int rows = 0;       // out_features
  int cols = 0;       // in_features
  std::vector<std::string> methods;  // the stages applied, in order
  int bits = 0;                      // 0: not quantized
  int group_size = -1;
  bool sym = true;
  bool act_order = false;
  double sparsity = 0.0;  // measured fraction of zeros after compression
  std::string pattern;    // "2:4" etc., empty when unstructured / not pruned
  // ‖(W−Q)X‖²/‖WX‖² on this matrix's calibration inputs, computed as
  // tr((W−Q) H (W−Q)ᵀ) / tr(W H Wᵀ) (the 2/n of H cancels).
  double error = 0.0;
  // The same for RTN at the GPTQ stage's bits/group/sym, when asked.
  std::optional<double> rtn_error;
  double solver_loss = 0.0;  // Σ (w−q)²/d²/2 of the Hessian solvers (0 otherwise)
  double damp_used = 0.0;    // percdamp that succeeded (Hessian solvers)
  int damp_increments = 0;
  int dead_columns = 0;
  double seconds = 0.0;      // solve time of all stages on this matrix

  nlohmann::json ToJson() const;
};

struct CalibrationReport {
  std::string source;
  bool pretokenized = false;
  int num_samples = 0;
  int seqlen = 0;
  uint64_t seed = 0;
  long source_tokens = 0;

  nlohmann::json ToJson() const;
};

struct CompressReport {
  std::string model_dir;
  std::string out_dir;
  std::string format;
  CalibrationReport calibration;
  nlohmann::json recipe;
  bool true_sequential = true;
  std::vector<MatrixReport> matrices;
  std::vector<double> layer_seconds;  // per decoder layer, statistics + solves + recompute
  double load_seconds = 0.0;
  double calibration_seconds = 0.0;
  double embed_seconds = 0.0;
  double write_seconds = 0.0;  // encoding + writing, on the writer thread when overlapped
  // What the layers waited for I/O: the writer thread falling behind, the
  // next layer's read not done yet, the last writes (all of write_seconds
  // when the I/O is not overlapped: CompressOptions::overlap_io).
  double io_wait_seconds = 0.0;
  double total_seconds = 0.0;
  std::vector<nlohmann::json> dense_fallbacks;  // {module, reason} the writer kept dense

  // Weighted by ‖WX‖² would need the denominators; these are plain means.
  double MeanError() const;
  nlohmann::json ToJson() const;
};

// Every field of a report row, exactly (NaN as null): the per-layer
// checkpoint and the broadcast of a solved matrix round-trip through it.
nlohmann::json MatrixReportToRecord(const MatrixReport& m);
// j[key] as a double; null (how nlohmann writes NaN and infinities) is NaN.
double JsonNumberOrNaN(const nlohmann::json& j, const char* key);
MatrixReport MatrixReportFromRecord(const nlohmann::json& j);

}  // namespace shrinkray

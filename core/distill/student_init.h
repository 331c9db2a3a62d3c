// The student of knowledge distillation, initialised from its teacher:
//   random: any config (vocabulary equal to the teacher's, since the KD loss
//     compares the two next-token distributions), seeded weights;
//   depth:  the teacher's decoder layers at the listed indices, in order,
//     with the embeddings, final norm and lm_head unchanged;
//   width:  every layer keeps the same number of MLP channels and of KV
//     groups (config.json has one intermediate_size and one head count),
//     chosen per layer by activation importance on calibration windows
//     (importance.h, Minitron): gate/up rows and down columns of the kept
//     channels, q/k/v rows (and biases) and o columns of the kept heads,
//     always in their original order.
// The result is the trainer's layout (train::ParameterStore) with its config;
// WriteStudentFolder writes it as a Hugging Face folder LlamaModel::Load reads.
//
// Decisions: keeping every layer (or the full width) is allowed and gives
// the teacher back exactly, which is how the pruning is tested; layer lists
// must be strictly increasing (no reordering, no repeats). Heads are pruned
// as whole KV groups (GQA stays valid with the same heads per group), so the
// target head count must be a multiple of heads / kv_heads. Pruning needs the
// teacher's weights; the streaming teacher is read through ReadParameter,
// but width pruning's importance pass needs it loaded whole.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/calib/calibration_set.h"
#include "core/distill/importance.h"
#include "core/model/config.h"
#include "core/model/llama.h"
#include "core/tensor/dtype.h"
#include "core/train/parameter_store.h"
#include "nlohmann/json.hpp"

namespace shrinkray::distill {

enum class StudentInitKind { kRandom, kDepth, kWidth };

struct StudentSpec {
  StudentInitKind kind = StudentInitKind::kRandom;

  // kRandom: the student's shape (validated as ValidateTrainConfig does) and
  // its ParameterStore::InitRandom seed and standard deviation.
  ModelConfig config;
  uint64_t seed = 0;
  double init_stddev = 0.02;

  // kDepth: teacher layer indices to keep, strictly increasing, in range.
  std::vector<int> keep_layers;

  // kWidth: the targets (unset keeps the teacher's; at least one must be set)
  // and the windows the importance is measured on.
  std::optional<int> intermediate_size;
  std::optional<int> num_attention_heads;
  CalibrationSet calibration;
  ImportanceOptions importance;
};

// Which channels and KV groups each layer keeps (ascending indices), for
// width pruning by any ranking (InitStudent uses the top ones by importance).
struct WidthSelection {
  std::vector<std::vector<int>> mlp_channels;  // [layers][kept intermediate]
  std::vector<std::vector<int>> kv_groups;     // [layers][kept kv heads]
};

struct StudentModel {
  ModelConfig config;  // as LlamaModel::Load reads it back from WriteStudentFolder
  train::ParameterStore weights;
  // How it was made, written into config.json's "shrinkray" for the record.
  nlohmann::json provenance;
  // Width pruning only: what was kept, and the importance it was ranked by.
  std::optional<WidthSelection> selection;
  std::optional<ModelImportance> importance;
};

// Builds the student of `teacher` per `spec`. InvalidArgument naming the
// field: a student larger than the teacher (keep_layers, intermediate_size,
// num_attention_heads), a layer index out of range, repeated or out of order,
// a head count that is not whole KV groups, a random student whose vocab_size
// differs from the teacher's, zero or negative sizes, width pruning without
// windows or without a target.
absl::StatusOr<StudentModel> InitStudent(const LlamaModel& teacher, const StudentSpec& spec);

// Width pruning with an explicit selection: every layer must keep the same
// number of channels and groups, each a strictly increasing list of valid
// indices (InvalidArgument naming the field and layer otherwise).
absl::StatusOr<StudentModel> PruneWidth(const LlamaModel& teacher, const WidthSelection& selection);

// Writes `student` as a dense Hugging Face folder in `dtype` (F32, F16,
// BF16): config.json with the student's sizes, model.safetensors, and the
// tokenizer / generation files copied from `teacher_dir` (when not empty).
// The writer's rules hold: an existing `out_dir` needs `overwrite`, and the
// folder appears only once complete.
absl::Status WriteStudentFolder(const std::filesystem::path& out_dir, const StudentModel& student,
                                const std::filesystem::path& teacher_dir, bool overwrite,
                                DType dtype = DType::kF32);

}  // namespace shrinkray::distill

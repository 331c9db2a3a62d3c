// Knowledge-distillation losses on logits, with their gradient w.r.t. the
// student logits:
//   loss = alpha * T^2 * mean_rows D(teacher_T, student_T) + (1 - alpha) * CE(z_S, labels)
// where student_T = softmax(z_S / T), teacher_T = softmax(z_T / T), and D is
// forward KL(teacher || student) (Hinton et al.), reverse KL(student ||
// teacher), or the generalized JSD of GKD (Agarwal et al.):
//   JSD_beta = beta * KL(teacher || M) + (1 - beta) * KL(student || M),
//   M = beta * teacher + (1 - beta) * student.
// The T^2 factor keeps the gradient scale independent of T for every D. CE is
// at temperature 1, averaged over the rows whose label is >= 0 (HF's -100
// ignored); D is averaged over all rows.
//
// The teacher is given as full logits or as its top-k per row (ids and
// log-probabilities of softmax(z_T / T), i.e. at the loss temperature; see
// TopKFromLogits). With top-k, D compares two distributions over the same
// support, so that every D is a proper divergence (zero iff they agree):
//   kRenormalize: teacher and student both restricted to the k ids and
//                 renormalised there (the student's other logits get no gradient);
//   kTailBucket:  k + 1 buckets: the k ids, plus one "tail" holding the rest of
//                 the mass (1 - sum of the teacher's top-k; the student's
//                 softmax mass outside the same ids).
// All arithmetic is in double whatever T is.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace shrinkray::train {

enum class Divergence { kForwardKL, kReverseKL, kJSD };
enum class TopKMode { kRenormalize, kTailBucket };

struct DistillLossOptions {
  Divergence divergence = Divergence::kForwardKL;
  double alpha = 0.5;        // weight of the divergence, in [0, 1]; 1 - alpha on CE
  double temperature = 1.0;  // > 0
  double beta = 0.5;         // JSD only, in (0, 1)
};

template <typename T>
struct TeacherLogits {
  std::span<const T> logits;  // [rows, vocab]
  int vocab = 0;
};

template <typename T>
struct TeacherTopK {
  std::span<const int32_t> ids;  // [rows, k], distinct within a row
  std::span<const T> log_probs;  // [rows, k], log softmax(z_T / T) at those ids
  int k = 0;
  TopKMode mode = TopKMode::kRenormalize;
};

struct DistillLossValue {
  double loss = 0;           // the mixed loss above
  double divergence = 0;     // mean_rows D (without alpha and T^2)
  double cross_entropy = 0;  // mean CE over labelled rows (0 when none)
};

// student_logits [rows, vocab]; labels [rows]; dlogits [rows, vocab] is
// OVERWRITTEN with d loss / d student_logits. InvalidArgument naming the field
// for alpha outside [0, 1], temperature <= 0, beta outside (0, 1) (JSD), a
// teacher vocab other than `vocab`, top_k <= 0 or larger than the vocabulary,
// top-k ids out of range or repeated, and wrong span sizes.
template <typename T>
absl::StatusOr<DistillLossValue> DistillLoss(const DistillLossOptions& options,
                                             std::span<const T> student_logits, long rows,
                                             int vocab, const TeacherLogits<T>& teacher,
                                             std::span<const int32_t> labels,
                                             std::span<T> dlogits);
template <typename T>
absl::StatusOr<DistillLossValue> DistillLoss(const DistillLossOptions& options,
                                             std::span<const T> student_logits, long rows,
                                             int vocab, const TeacherTopK<T>& teacher,
                                             std::span<const int32_t> labels,
                                             std::span<T> dlogits);

// The top-k of log softmax(logits / temperature) per row, most probable first
// (ties: lower id first): what a teacher cache stores for TeacherTopK.
template <typename T>
struct TopKTable {
  int k = 0;
  std::vector<int32_t> ids;   // [rows, k]
  std::vector<T> log_probs;   // [rows, k]
};
template <typename T>
absl::StatusOr<TopKTable<T>> TopKFromLogits(std::span<const T> logits, long rows, int vocab,
                                            int k, double temperature);

}  // namespace shrinkray::train

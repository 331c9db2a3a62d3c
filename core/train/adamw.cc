#include "core/train/adamw.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace shrinkray::train {

absl::StatusOr<AdamW> AdamW::Create(const AdamWOptions& o) {
  if (!(o.beta1 >= 0.0 && o.beta1 < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AdamWOptions.beta1 = ", o.beta1, " is outside [0, 1)"));
  }
  if (!(o.beta2 >= 0.0 && o.beta2 < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AdamWOptions.beta2 = ", o.beta2, " is outside [0, 1)"));
  }
  if (!(o.eps > 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat("AdamWOptions.eps = ", o.eps, " must be > 0"));
  }
  if (!(o.weight_decay >= 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AdamWOptions.weight_decay = ", o.weight_decay, " must be >= 0"));
  }
  return AdamW(o);
}

void AdamW::Update(std::span<float> params, std::span<const float> grads, std::span<float> m,
                   std::span<float> v, const AdamWOptions& o, double lr, double weight_decay,
                   int64_t step) {
  const double bc1 = 1.0 - std::pow(o.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(o.beta2, static_cast<double>(step));
  const double decay = 1.0 - lr * weight_decay;
  for (size_t i = 0; i < params.size(); ++i) {
    const double g = grads[i];
    const double mi = o.beta1 * m[i] + (1.0 - o.beta1) * g;
    const double vi = o.beta2 * v[i] + (1.0 - o.beta2) * g * g;
    m[i] = static_cast<float>(mi);
    v[i] = static_cast<float>(vi);
    const double update = (mi / bc1) / (std::sqrt(vi / bc2) + o.eps);
    params[i] = static_cast<float>(params[i] * decay - lr * update);
  }
}

absl::Status AdamW::Step(ParameterStore& store, double lr) {
  if (!(lr >= 0.0) || !std::isfinite(lr)) {
    return absl::InvalidArgumentError(absl::StrCat("AdamW::Step: lr = ", lr, " must be >= 0"));
  }
  ++step_;
  for (const ParameterView& view : store.views()) {
    const bool decays = view.shape.size() >= 2 || options_.decay_vectors;
    Update(store.param(view), store.grads().subspan(view.offset, view.numel),
           store.first_moment().subspan(view.offset, view.numel),
           store.second_moment().subspan(view.offset, view.numel), options_, lr,
           decays ? options_.weight_decay : 0.0, step_);
  }
  return absl::OkStatus();
}

}  // namespace shrinkray::train

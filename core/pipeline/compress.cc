#include "core/pipeline/compress.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/algo/rtn.h"
#include "core/calib/layer_statistics.h"
#include "core/io/checkpoint.h"
#include "core/io/text_file.h"
#include "core/model/config.h"
#include "core/pipeline/layer_checkpoint.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/serial_worker.h"
#include "core/util/status_macros.h"
#include "core/pipeline/linear_result_codec.h"

namespace shrinkray {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// One decoder-layer Linear: where its weights live and which stages apply.
struct LinearSlot {
  std::string module;
  LinearGroup group;
  float* LayerWeights::*view;
  int rows = 0;
  int cols = 0;
  std::vector<const RecipeStage*> stages;
};

std::vector<LinearSlot> LayerLinears(const ModelConfig& c, int layer) {
  const int C = c.hidden_size, I = c.intermediate_size, QD = c.q_dim(), KVD = c.kv_dim();
  return {
      {LinearModuleName(layer, "self_attn.q_proj"), LinearGroup::kQkv, &LayerWeights::q_proj, QD, C, {}},
      {LinearModuleName(layer, "self_attn.k_proj"), LinearGroup::kQkv, &LayerWeights::k_proj, KVD, C, {}},
      {LinearModuleName(layer, "self_attn.v_proj"), LinearGroup::kQkv, &LayerWeights::v_proj, KVD, C, {}},
      {LinearModuleName(layer, "self_attn.o_proj"), LinearGroup::kO, &LayerWeights::o_proj, C, QD, {}},
      {LinearModuleName(layer, "mlp.gate_proj"), LinearGroup::kGateUp, &LayerWeights::gate_proj, I, C, {}},
      {LinearModuleName(layer, "mlp.up_proj"), LinearGroup::kGateUp, &LayerWeights::up_proj, I, C, {}},
      {LinearModuleName(layer, "mlp.down_proj"), LinearGroup::kDown, &LayerWeights::down_proj, C, I, {}},
  };
}

// Every layer's Linears with their stages; checks each chain and that every
// stage compresses something.
absl::StatusOr<std::vector<std::vector<LinearSlot>>> PlanLinears(const ModelConfig& config,
                                                                 const Recipe& recipe) {
  std::vector<std::vector<LinearSlot>> plan;
  // Counted by position: a stage's `index` is its place in the recipe file,
  // which after a distill stage (or in a one-stage pass of a distill chain)
  // is not its place in `stages`.
  std::vector<int> matched(recipe.stages.size(), 0);
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    std::vector<LinearSlot> slots = LayerLinears(config, l);
    for (LinearSlot& slot : slots) {
      for (size_t i = 0; i < recipe.stages.size(); ++i) {
        const RecipeStage& stage = recipe.stages[i];
        if (stage.Applies(slot.module)) {
          slot.stages.push_back(&stage);
          ++matched[i];
        }
      }
      SR_RETURN_IF_ERROR(CheckStageChain(slot.module, slot.stages));
    }
    plan.push_back(std::move(slots));
  }
  for (size_t i = 0; i < recipe.stages.size(); ++i) {
    const RecipeStage& stage = recipe.stages[i];
    if (matched[i] == 0) {
      return absl::InvalidArgumentError(absl::StrCat("recipe ", recipe.source, ": ", stage.Label(),
                                                     ": targets/ignore select no decoder-layer Linear"));
    }
  }
  return plan;
}

int AutoBatchWindows(const ModelConfig& c, int seqlen, int num_samples) {
  const long per_token_floats = 3L * c.hidden_size + 2L * c.q_dim() + 2L * c.kv_dim() +
                                2L * c.intermediate_size + 2L * std::max(c.hidden_size, c.intermediate_size);
  const long per_window_bytes = std::max(1L, per_token_floats * 4L * seqlen + 4L * seqlen * seqlen);
  const long budget = 512L << 20;
  return static_cast<int>(std::clamp<long>(budget / per_window_bytes, 1, num_samples));
}

// Windows per LayerForward call for `options` (part of the resume fingerprint:
// batching changes the statistics' rounding).
int BatchWindows(const ModelConfig& c, const LayerwiseOptions& options, int seqlen, int num_samples) {
  return options.batch_windows > 0 ? std::min(options.batch_windows, num_samples)
                                   : AutoBatchWindows(c, seqlen, num_samples);
}

double ZeroFraction(const std::vector<float>& w) {
  if (w.empty()) return 0.0;
  const long zeros = std::count(w.begin(), w.end(), 0.0f);
  return static_cast<double>(zeros) / static_cast<double>(w.size());
}

// The RTN error at the quantizing stage's settings, on the weight that stage
// received (zeros of an earlier pruning stage stay zero under RTN).
absl::StatusOr<double> RtnError(const RecipeStage& stage, const std::vector<float>& before,
                                absl::Span<const float> original, int rows, int cols,
                                const LinearInputStats& input, SolverBackend* solvers) {
  RtnOptions o;
  o.bits = stage.bits;
  o.group_size = stage.group_size;
  o.sym = stage.sym;
  SR_ASSIGN_OR_RETURN(RtnResult r, RtnQuantize(before, rows, cols, o));
  return RelativeOutputErrorOn(solvers, original, r.weight, rows, cols, input);
}

// Any communicator, even of one rank, takes the collective path: a 1-rank
// NCCL job then exercises the same Hessian all-reduces as a gang (on the
// device when the GPU executor holds them). The solved matrices go out only
// to peers (a broadcast to oneself exchanges nothing, and through a
// host-staged NCCL communicator it cost ~1.1 GB up and down a layer at 8B
// shapes).
bool Sharded(const Communicator* comm) { return comm != nullptr; }

// Every rank needs at least one window (its statistics would be empty).
absl::Status CheckWindowsPerRank(int num_samples, const Communicator* comm) {
  if (!Sharded(comm) || num_samples >= comm->size()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("calibration has ", num_samples, " windows for ", comm->size(),
                                                 " workers: each needs at least one"));
}

// This rank's windows: a contiguous slice, sizes differing by at most one.
std::pair<int, int> WindowRange(int num_samples, const Communicator* comm) {
  if (!Sharded(comm)) return {0, num_samples};
  const long r = comm->rank(), size = comm->size();
  return {static_cast<int>(num_samples * r / size), static_cast<int>(num_samples * (r + 1) / size)};
}

// Which rank solves each matrix of a group: longest first onto the least
// loaded rank (LPT), cost ~ the solve's cols² · (cols + rows). The same on
// every rank (it depends only on shapes).
std::vector<int> MatrixOwners(const std::vector<const LinearSlot*>& slots, int size) {
  std::vector<int> order(slots.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  auto cost = [&](int i) {
    const double c = slots[i]->cols, r = slots[i]->rows;
    return c * c * (c + r);
  };
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return cost(a) > cost(b); });
  std::vector<double> load(static_cast<size_t>(std::max(1, size)), 0.0);
  std::vector<int> owner(slots.size(), 0);
  for (int i : order) {
    const int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = r;
    load[r] += cost(i);
  }
  return owner;
}

// Runs every stage of `slot` on its weight; the report row and final state.
absl::Status SolveMatrix(const LinearSlot& slot, int layer, LinearGroup group, const float* view,
                         const LinearInputStats& input, const LayerwiseOptions& options, LinearState* state,
                         MatrixReport* report, double* error_seconds) {
  const size_t numel = static_cast<size_t>(slot.rows) * slot.cols;
  // The model's weight itself, not a copy: nothing writes it until every
  // matrix of the group is solved (CompressGroup copies the results in after).
  // The first stage reads it there too (fresh pages for a copy cost more
  // than the copy: ~0.15-0.4 GB/s on the VMs measured).
  const absl::Span<const float> original(view, numel);
  state->weight.clear();
  state->original = original;
  report->module = slot.module;
  report->layer = layer;
  report->group = LinearGroupName(group);
  report->rows = slot.rows;
  report->cols = slot.cols;
  const RecipeStage* quantizer = nullptr;
  std::vector<float> before_quantizer;
  state->report_output_error = slot.stages.size() == 1;
  for (const RecipeStage* stage : slot.stages) {
    if (stage->quantizes()) {
      quantizer = stage;
      // Only the RTN comparison reads it: a copy of the matrix otherwise
      // wasted (0.87 GB of fresh pages a layer at Llama-3-8B shapes).
      if (options.compare_rtn) before_quantizer.assign(state->current().begin(), state->current().end());
    }
    SR_RETURN_IF_ERROR(
        ApplyStage(*stage, slot.module, slot.rows, slot.cols, input, state, report, options.solvers));
  }
  const auto error_start = Clock::now();
  if (state->output_error.has_value()) {
    report->error = *state->output_error;  // the solve's own, from its device copies
  } else {
    SR_ASSIGN_OR_RETURN(report->error,
                        RelativeOutputErrorOn(options.solvers, original, state->weight, slot.rows, slot.cols, input));
  }
  // Joint SparseGPT quantization has no RTN counterpart with equal settings,
  // and RTN's own error needs no second copy.
  if (options.compare_rtn && quantizer != nullptr && !quantizer->prunes() &&
      quantizer->method != StageMethod::kRtn) {
    SR_ASSIGN_OR_RETURN(report->rtn_error,
                        RtnError(*quantizer, before_quantizer, original, slot.rows, slot.cols, input, options.solvers));
  }
  *error_seconds += Seconds(error_start);
  state->original = {};  // the view takes the result next
  report->sparsity = ZeroFraction(state->weight);
  report->pattern = state->pattern;
  return absl::OkStatus();
}

// `owner`'s encoded matrix to every rank: its length, then its bytes.
absl::Status BroadcastMatrix(Communicator& comm, int owner, LinearState* state, MatrixReport* report) {
  std::vector<uint8_t> bytes;
  if (comm.rank() == owner) bytes = EncodeLinearResult(*state, *report);
  uint64_t length = bytes.size();
  SR_RETURN_IF_ERROR(comm.Broadcast(&length, sizeof(length), CommDType::kU8, owner));
  bytes.resize(length);
  SR_RETURN_IF_ERROR(comm.Broadcast(bytes.data(), bytes.size(), CommDType::kU8, owner));
  if (comm.rank() == owner) return absl::OkStatus();
  return DecodeLinearResult(bytes, state, report);
}

// `executor`: the layer's executor, which may hold the group's weights on
// the solvers' device (LayerExecutor::DeviceWeight).
absl::Status CompressGroup(LlamaModel& model, int layer, LinearGroup group, std::vector<LinearSlot>& slots,
                           LayerStatistics& stats, const Recipe& recipe, const LayerwiseOptions& options,
                           const LayerExecutor& executor, LayerwiseResult* result) {
  HessianAccumulator* hessian = stats.mutable_hessian(group);
  if (hessian == nullptr) return absl::InternalError("no Hessian for a targeted group");
  // float32: the accumulator's own storage, made symmetric in place (no d²
  // copy); float64 runs also get a float32 copy for the errors. A Hessian
  // that only the GPU holds stays there when the solver backend reads it in
  // place: the host fetches it only if a CPU solve or error needs it.
  std::vector<float> h32_copy;
  std::vector<double> h64;
  absl::Span<const float> h32;
  const DeviceHessian* device = hessian->on_device().get();
  if (device != nullptr && (options.solvers == nullptr || !options.solvers->ReadsDevice(*device))) device = nullptr;
  const bool device_only = device != nullptr && hessian->host_pending();
  if (hessian->precision() == HessianPrecision::kFloat64) {
    SR_ASSIGN_OR_RETURN(h32_copy, hessian->HessianF32());
    h32 = h32_copy;
    SR_ASSIGN_OR_RETURN(h64, hessian->HessianF64());
  } else if (!device_only) {
    SR_ASSIGN_OR_RETURN(h32, hessian->SymmetricF32());
  }
  LinearInputStats input;
  input.h32 = h32;
  if (device_only) input.fetch_h32 = [hessian] { return hessian->SymmetricF32(); };
  input.h64 = h64;
  if (const ActivationNormAccumulator* a = stats.act_norm(group)) input.scaler = a->scaler_row();

  LayerWeights& weights = model.mutable_layer(layer);
  std::vector<const LinearSlot*> targeted;
  for (const LinearSlot& slot : slots) {
    if (slot.group == group && !slot.stages.empty()) targeted.push_back(&slot);
  }
  Communicator* comm = Sharded(options.comm) ? options.comm : nullptr;
  const std::vector<int> owners = MatrixOwners(targeted, comm != nullptr ? comm->size() : 1);
  const int rank = comm != nullptr ? comm->rank() : 0;
  std::vector<LinearState> states(targeted.size());
  std::vector<MatrixReport> reports(targeted.size());
  // Every rank solves its own matrices first (in parallel with the others),
  // then each matrix goes out from its owner in slot order.
  auto start = Clock::now();
  double error_seconds = 0.0;
  {
    // h32 stays as it is until the group's solves and errors are done: a
    // device backend copies and prepares it once for all of them.
    const HeldHessian held(options.solvers, h32, device);
    for (size_t i = 0; i < targeted.size(); ++i) {
      if (owners[i] != rank) continue;
      const float* view = weights.*(targeted[i]->view);
      // Where the executor holds W on the device, a device solver reads it
      // there (the first stage reads the view itself: SolveMatrix).
      const HeldWeight held_w(options.solvers,
                              {view, static_cast<size_t>(targeted[i]->rows) * targeted[i]->cols},
                              executor.DeviceWeight(layer, view));
      SR_RETURN_IF_ERROR(SolveMatrix(*targeted[i], layer, group, view, input, options, &states[i], &reports[i],
                                     &error_seconds));
    }
  }
  result->phases.solve += Seconds(start) - error_seconds;
  result->phases.error += error_seconds;
  start = Clock::now();
  for (size_t i = 0; i < targeted.size(); ++i) {
    if (comm != nullptr && comm->size() > 1) {
      SR_RETURN_IF_ERROR(BroadcastMatrix(*comm, owners[i], &states[i], &reports[i]));
    }
    float* view = weights.*(targeted[i]->view);
    std::memcpy(view, states[i].weight.data(), states[i].weight.size() * sizeof(float));
    result->matrices.push_back(std::move(reports[i]));
    result->linears[targeted[i]->module] = std::move(states[i]);
  }
  result->phases.broadcast += Seconds(start);
  return absl::OkStatus();
}

void Progress(const LayerwiseOptions& options, const std::string& line) {
  if (options.progress) options.progress(line);
}

}  // namespace

absl::Status CheckRecipeTargets(const ModelConfig& config, const Recipe& recipe) {
  return PlanLinears(config, recipe).status();
}

double LayerwisePhases::Total() const { return load + forward + allreduce + solve + error + broadcast; }

nlohmann::json LayerwisePhases::ToJson() const {
  return {{"load_seconds", load}, {"forward_seconds", forward}, {"allreduce_seconds", allreduce}, {"solve_seconds", solve},
          {"error_seconds", error}, {"broadcast_seconds", broadcast}};
}

std::string LinearModuleName(int layer, const char* leaf) {
  return absl::StrCat("model.layers.", layer, ".", leaf);
}

namespace {

// What the executor does around the embedding and each layer of a streaming
// model; CompressLayerwise's model is loaded whole and needs none of it.
struct LayerHooks {
  std::function<absl::Status()> before_embed;  // materialise the embeddings
  std::function<absl::Status()> after_embed;
  std::function<absl::Status(int layer)> before_layer;  // materialise the layer
  // After the layer's progress callbacks: hand its weights on, free them.
  std::function<absl::Status(int layer, LayerwiseResult& result)> after_layer;
  // Resume: layers [0, first_layer) were finished by an interrupted run.
  // restore_layer adds layer `layer`'s persisted rows and seconds to `result`
  // (and its tensors to the writer) and, when `load`, materialises its
  // compressed weights so that its outputs can be recomputed; release_layer
  // frees them afterwards.
  int first_layer = 0;
  std::function<absl::Status(int layer, bool load, LayerwiseResult& result)> restore_layer;
  std::function<void(int layer)> release_layer;
  // Without blocking: whether `layer` (a later one) is in memory already, so
  // that the executor may copy it ahead (LayerExecutor::Prefetch). None: every
  // layer is.
  std::function<bool(int layer)> layer_loaded;
};

absl::Status RunHook(const std::function<absl::Status()>& hook) {
  return hook ? hook() : absl::OkStatus();
}

// The run's executor: the device's when it can serve the run, else the CPU's
// (with a progress line saying why).
absl::StatusOr<std::unique_ptr<LayerExecutor>> MakeExecutor(const LayerwiseOptions& options,
                                                           const LayerExecutorSpec& spec) {
  if (options.executors) {
    absl::StatusOr<std::unique_ptr<LayerExecutor>> device = options.executors(spec);
    if (device.ok()) return std::move(*device);
    if (device.status().code() != absl::StatusCode::kUnimplemented) return device.status();
    Progress(options, absl::StrCat("layer forwards on the CPU: ", device.status().message()));
  }
  if (spec.forward_dtype != ForwardDtype::kFloat32) {
    Progress(options, absl::StrCat("layer forwards in float32 on the CPU (forward_dtype ",
                                   std::string(ForwardDtypeName(spec.forward_dtype)), " is a GPU option)"));
  }
  return MakeCpuLayerExecutor(spec);
}

absl::StatusOr<LayerwiseResult> RunLayerwise(LlamaModel& model, const Recipe& recipe,
                                             const CalibrationSet& calibration,
                                             const LayerwiseOptions& options,
                                             const LayerHooks& hooks) {
  const ModelConfig& config = model.config();
  if (recipe.stages.empty()) return absl::InvalidArgumentError("recipe has no stages");
  const int n = calibration.num_samples, seqlen = calibration.seqlen;
  if (n <= 0 || seqlen <= 0 || calibration.tokens.size() != static_cast<size_t>(n) * seqlen) {
    return absl::InvalidArgumentError("calibration set is empty or malformed");
  }
  if (seqlen > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("calibration seqlen ", seqlen,
                                                   " exceeds the model's max_position_embeddings ",
                                                   config.max_position_embeddings));
  }
  SR_ASSIGN_OR_RETURN(std::vector<std::vector<LinearSlot>> plan, PlanLinears(config, recipe));
  SR_RETURN_IF_ERROR(CheckWindowsPerRank(n, options.comm));
  // Sharded: this rank's windows only, from here on.
  const auto [window_lo, window_hi] = WindowRange(n, options.comm);
  const int local = window_hi - window_lo;
  const int batch_windows = BatchWindows(config, options, seqlen, local);
  const int num_layers = config.num_hidden_layers;
  const int first_layer = std::clamp(hooks.first_layer, 0, num_layers);
  // With every layer restored nothing needs the hidden states.
  const bool need_hidden = first_layer < num_layers;

  LayerwiseResult result;
  result.resumed_from_layer = first_layer;
  if (first_layer > 0 && options.on_resume) options.on_resume(first_layer, num_layers);
  LayerExecutorSpec spec;
  spec.config = &config;
  spec.windows = local;
  spec.seqlen = seqlen;
  spec.batch_windows = batch_windows;
  spec.precision = recipe.hessian_dtype();
  spec.forward_dtype = recipe.forward_dtype();
  SR_ASSIGN_OR_RETURN(std::unique_ptr<LayerExecutor> executor, MakeExecutor(options, spec));
  auto start = Clock::now();
  if (need_hidden) {
    SR_RETURN_IF_ERROR(RunHook(hooks.before_embed));
    const std::span<const int32_t> tokens(calibration.tokens.data() + static_cast<size_t>(window_lo) * seqlen,
                                          static_cast<size_t>(local) * seqlen);
    absl::Status s = executor->Embed(model, tokens);
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("calibration ", calibration.source, ": ", std::string(s.message())));
    }
    SR_RETURN_IF_ERROR(RunHook(hooks.after_embed));
    result.embed_seconds = Seconds(start);
  }

  // A resumed run: the same windows through the restored (compressed) layers
  // give bit for bit the hidden states the interrupted run had at first_layer.
  start = Clock::now();
  for (int l = 0; l < first_layer; ++l) {
    if (!hooks.restore_layer) return absl::InternalError("resuming needs restore_layer");
    SR_RETURN_IF_ERROR(hooks.restore_layer(l, need_hidden, result));
    if (need_hidden) {
      SR_RETURN_IF_ERROR(executor->RunLayer(model, l, /*output=*/true, nullptr, options.cancel));
    }
    if (hooks.release_layer) hooks.release_layer(l);
  }
  if (first_layer > 0) {
    result.resume_seconds = Seconds(start);
    Progress(options, absl::StrFormat("layers 1-%d restored%s in %.2f s", first_layer,
                                      need_hidden ? " and their outputs recomputed" : "",
                                      result.resume_seconds));
  }

  bool any_wanda = false;
  for (const RecipeStage& s : recipe.stages) any_wanda |= s.needs_act_norm();
  const std::vector<std::vector<LinearGroup>> passes =
      recipe.true_sequential()
          ? std::vector<std::vector<LinearGroup>>{{LinearGroup::kQkv}, {LinearGroup::kO},
                                                  {LinearGroup::kGateUp}, {LinearGroup::kDown}}
          : std::vector<std::vector<LinearGroup>>{
                {LinearGroup::kQkv, LinearGroup::kO, LinearGroup::kGateUp, LinearGroup::kDown}};

  // The next layer's weights go to the executor once this layer's own are
  // on it (after its first pass: a prefetch before would displace this
  // layer's own) and the next layer is in memory (at the latest before this
  // layer's output pass; a layer with no statistics pass after its output
  // pass), so that a device executor copies them while this layer computes.
  int prefetched = -1;
  int ran = -1;  // the latest layer with a pass run
  auto prefetch_after = [&](int l) {
    const int next = l + 1;
    if (ran != l || next >= num_layers || prefetched == next) return;
    if (hooks.layer_loaded && !hooks.layer_loaded(next)) return;
    executor->Prefetch(model, next);
    prefetched = next;
  };

  for (int l = first_layer; l < num_layers; ++l) {
    const auto layer_start = Clock::now();
    const LayerwisePhases phases_before = result.phases;
    if (hooks.before_layer) SR_RETURN_IF_ERROR(hooks.before_layer(l));
    result.phases.load += Seconds(layer_start);
    const size_t first_row = result.matrices.size();
    std::vector<LinearSlot>& slots = plan[l];
    for (const std::vector<LinearGroup>& pass : passes) {
      LayerStatistics stats(config, seqlen, recipe.hessian_dtype());
      std::vector<LinearGroup> targeted;
      for (LinearGroup g : pass) {
        bool any = false, wanda = false;
        for (const LinearSlot& slot : slots) {
          if (slot.group != g || slot.stages.empty()) continue;
          any = true;
          for (const RecipeStage* s : slot.stages) wanda |= s->needs_act_norm();
        }
        if (!any) continue;
        // H is always gathered: besides GPTQ/SparseGPT it gives every matrix's error.
        stats.Request(g, /*hessian=*/true, /*act_norm=*/wanda && any_wanda);
        targeted.push_back(g);
      }
      if (targeted.empty()) continue;
      auto phase_start = Clock::now();
      SR_RETURN_IF_ERROR(executor->RunLayer(model, l, /*output=*/false, &stats, options.cancel));
      result.phases.forward += Seconds(phase_start);
      ran = l;
      prefetch_after(l);
      if (Sharded(options.comm)) {
        phase_start = Clock::now();
        SR_RETURN_IF_ERROR(stats.MergeAcrossRanks(*options.comm));
        result.phases.allreduce += Seconds(phase_start);
      }
      for (LinearGroup g : targeted) {
        SR_RETURN_IF_ERROR(CompressGroup(model, l, g, slots, stats, recipe, options, *executor, &result));
        executor->WeightsChanged(l, g);
      }
    }
    // The next layer sees this layer's outputs with every weight compressed.
    prefetch_after(l);
    const auto recompute_start = Clock::now();
    SR_RETURN_IF_ERROR(executor->RunLayer(model, l, /*output=*/true, nullptr, options.cancel));
    result.phases.forward += Seconds(recompute_start);
    ran = l;
    prefetch_after(l);
    result.layer_seconds.push_back(Seconds(layer_start));
    double err = 0.0;
    const size_t rows = result.matrices.size() - first_row;
    for (size_t i = first_row; i < result.matrices.size(); ++i) err += result.matrices[i].error;
    // "other": what no phase timer covers (gathering the statistics for the
    // solvers, copies), so that the line adds up.
    const double phase_sum = result.phases.Total() - phases_before.Total();
    Progress(options, absl::StrFormat("layer %d/%d: %d matrices, mean error %.6f, %.2f s (load %.2f, forward %.2f, "
                                      "solve %.2f, error %.2f, other %.2f)",
                                      l + 1, config.num_hidden_layers, static_cast<int>(rows),
                                      rows > 0 ? err / static_cast<double>(rows) : 0.0, result.layer_seconds.back(),
                                      result.phases.load - phases_before.load,
                                      result.phases.forward - phases_before.forward,
                                      result.phases.solve - phases_before.solve,
                                      result.phases.error - phases_before.error,
                                      std::max(0.0, result.layer_seconds.back() - phase_sum)));
    if (options.on_layer_done) {
      LayerDone done;
      done.layer = l;
      done.num_layers = config.num_hidden_layers;
      done.seconds = result.layer_seconds.back();
      done.matrices.assign(result.matrices.begin() + static_cast<long>(first_row), result.matrices.end());
      options.on_layer_done(done);
    }
    if (hooks.after_layer) SR_RETURN_IF_ERROR(hooks.after_layer(l, result));
  }
  return result;
}

}  // namespace

absl::StatusOr<LayerwiseResult> CompressLayerwise(LlamaModel& model, const Recipe& recipe,
                                                  const CalibrationSet& calibration,
                                                  const LayerwiseOptions& options) {
  return RunLayerwise(model, recipe, calibration, options, {});
}

namespace {

DType DenseDtypeOf(const Checkpoint& checkpoint) {
  auto info = checkpoint.Find("model.embed_tokens.weight");
  if (info.ok()) {
    const DType d = (*info)->dtype;
    if (d == DType::kF16 || d == DType::kBF16 || d == DType::kF32) return d;
  }
  return DType::kF32;
}

nlohmann::json RecipeInfo(const Recipe& recipe) {
  nlohmann::json info = {{"true_sequential", recipe.true_sequential()}, {"stages", recipe.ToJson()}};
  for (const RecipeStage& s : recipe.stages) {
    if (!s.quantizes()) continue;
    info["bits"] = s.bits;
    info["group_size"] = s.group_size;
    info["sym"] = s.sym;
    info["desc_act"] = s.act_order;
    info["static_groups"] = s.static_groups;
    info["damp"] = s.damp;
  }
  return info;
}

absl::Status WriteJson(const std::filesystem::path& path, const nlohmann::json& j) {
  return WriteTextFile(path, j.dump(2) + "\n");
}

// What decides the bytes of a run's output and report: a checkpoint is resumed
// only by a run whose fingerprint is equal. The model is identified by its
// folder and a hash of its config and shard headers/samples (not all weights:
// cheap for a large model); the calibration by the hash of its tokens, so that
// any change of file, tokenizer, sampling or seed shows.
absl::StatusOr<nlohmann::json> JobFingerprint(const Recipe& recipe, const CompressOptions& options,
                                              const ModelConfig& config, const Checkpoint& checkpoint,
                                              const CalibrationSet& calibration, uint64_t seed,
                                              DType dense_dtype) {
  SR_ASSIGN_OR_RETURN(std::string model_hash, HashModelFolder(options.model_dir, checkpoint));
  StableHasher tokens;
  tokens.Update(std::as_bytes(std::span<const int32_t>(calibration.tokens)));
  std::error_code ec;
  std::filesystem::path model_dir = std::filesystem::absolute(options.model_dir, ec);
  if (ec) model_dir = options.model_dir;
  return nlohmann::json{
      {"version", kLayerCheckpointVersion},
      {"model_dir", model_dir.lexically_normal().string()},
      {"model_hash", model_hash},
      {"num_layers", config.num_hidden_layers},
      {"recipe", recipe.ToJson()},
      {"recipe_info", RecipeInfo(recipe)},
      {"calibration",
       {{"num_samples", calibration.num_samples},
        {"seqlen", calibration.seqlen},
        {"seed", seed},
        {"pretokenized", calibration.pretokenized},
        {"source_tokens", calibration.source_tokens},
        {"tokens_hash", tokens.HexDigest()}}},
      {"format", std::string(OutputFormatName(options.format))},
      {"dense_dtype", std::string(DTypeName(dense_dtype))},
      {"compare_rtn", options.layerwise.compare_rtn},
      {"batch_windows", BatchWindows(config, options.layerwise, calibration.seqlen, calibration.num_samples)},
  };
}

}  // namespace

absl::StatusOr<CompressReport> RunCompression(const Recipe& recipe, const CompressOptions& options) {
  const auto total_start = Clock::now();
  std::error_code ec;
  if (!options.overwrite && std::filesystem::exists(options.out_dir, ec)) {
    return absl::AlreadyExistsError(
        absl::StrCat("output folder ", options.out_dir.string(), " exists; pass --overwrite"));
  }
  CompressReport report;
  report.model_dir = options.model_dir.string();
  report.out_dir = options.out_dir.string();
  report.format = std::string(OutputFormatName(options.format));
  report.recipe = recipe.ToJson();
  report.true_sequential = recipe.true_sequential();

  auto start = Clock::now();
  SR_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(options.model_dir));
  SR_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(options.model_dir));
  // Weights stay in the mapped checkpoint; each layer is read when its turn comes.
  SR_ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model, LlamaModel::OpenStreaming(config, *checkpoint));
  // Fail on targets/stage chains before the (slow) calibration.
  SR_RETURN_IF_ERROR(PlanLinears(config, recipe).status());
  report.load_seconds = Seconds(start);

  start = Clock::now();
  CalibrationOptions calib = options.calibration;
  calib.seqlen = std::min(calib.seqlen, config.max_position_embeddings);
  CalibrationSet calibration;
  if (options.calib_path.extension() == ".safetensors") {
    SR_ASSIGN_OR_RETURN(calibration, CalibrationSetFromTokens(options.calib_path, calib));
  } else {
    SR_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                        Tokenizer::FromFile(options.model_dir / "tokenizer.json"));
    SR_ASSIGN_OR_RETURN(calibration, CalibrationSetFromText(options.calib_path, *tokenizer, calib));
  }
  report.calibration_seconds = Seconds(start);
  report.calibration = {calibration.source,     calibration.pretokenized, calibration.num_samples,
                        calibration.seqlen,     calib.seed,               calibration.source_tokens};

  // The writer takes each layer's tensors as soon as the layer is done; the
  // tensors outside the decoder layers are read from the checkpoint when their
  // turn in model order comes (embeddings first, final norm and lm_head last).
  CompressedModelSpec header;
  header.source_dir = options.model_dir;
  header.source_config = config.raw;
  header.dense_dtype = DenseDtypeOf(*checkpoint);
  header.recipe_info = RecipeInfo(recipe);

  // The checkpoint: an interrupted run of the same job left layers in
  // OUT.partial, or the folder is discarded; the writer keeps the checkpoint
  // there while it works and removes it when the output is complete.
  // Sharded: rank 0 alone owns the folder (writer, checkpoint, report); the
  // others learn from it where the run resumes.
  Communicator* comm = Sharded(options.layerwise.comm) ? options.layerwise.comm : nullptr;
  const bool leader = comm == nullptr || comm->rank() == 0;
  // Before rank 0 opens OUT.partial: a run that cannot start leaves nothing.
  SR_RETURN_IF_ERROR(CheckWindowsPerRank(calibration.num_samples, comm));
  const std::filesystem::path partial = PartialFolderOf(options.out_dir);
  ResumePoint resume;
  std::unique_ptr<CompressedModelWriter> writer;
  if (leader) {
    SR_ASSIGN_OR_RETURN(nlohmann::json fingerprint, JobFingerprint(recipe, options, config, *checkpoint, calibration,
                                                                   calib.seed, header.dense_dtype));
    SR_ASSIGN_OR_RETURN(resume,
                        PrepareLayerCheckpoint(partial, fingerprint, config.num_hidden_layers, options.resume));
    if (!resume.note.empty()) Progress(options.layerwise, resume.note);
    PartialFolderOptions partial_options;
    partial_options.keep = LayerCheckpointEntries();
    SR_ASSIGN_OR_RETURN(writer, CompressedModelWriter::Open(options.out_dir, header, options.format,
                                                            options.overwrite, partial_options));
    SR_RETURN_IF_ERROR(StartLayerCheckpoint(partial, fingerprint));
  }
  if (comm != nullptr) {
    int32_t first_layer = resume.first_layer;
    SR_RETURN_IF_ERROR(comm->Broadcast(&first_layer, 1, CommDType::kI32, 0));
    resume.first_layer = first_layer;
  }
  double write_seconds = 0.0, checkpoint_seconds = 0.0;
  auto write = [&](std::span<const CompressedTensorEntry> entries) {
    if (!leader) return absl::OkStatus();
    const auto write_start = Clock::now();
    absl::Status status = writer->Add(entries);
    write_seconds += Seconds(write_start);
    return status;
  };
  // Overlapped I/O (CompressOptions::overlap_io): `writes` hands rank 0's
  // finished layers to the writer and their checkpoints, in model order,
  // while the next layer computes; `reads` loads layer l+1 from the source
  // while layer l computes. Declared after everything their tasks touch, so
  // an early return finishes (or joins) them first.
  std::unique_ptr<SerialWorker> writes =
      options.overlap_io ? std::make_unique<SerialWorker>(/*max_waiting=*/1) : SerialWorker::InLine();
  std::unique_ptr<SerialWorker> reads =
      options.overlap_io ? std::make_unique<SerialWorker>(/*max_waiting=*/0) : SerialWorker::InLine();
  int layer_being_read = -1;
  const std::vector<LlamaModel::NamedParameter> parameters = model->Parameters();
  auto write_outside_layers = [&](bool after_layers) -> absl::Status {
    if (!leader) return absl::OkStatus();
    bool past_layers = false;
    for (const LlamaModel::NamedParameter& p : parameters) {
      past_layers = past_layers || p.layer >= 0;
      if (p.layer >= 0 || past_layers != after_layers) continue;
      const auto read_start = Clock::now();
      CompressedTensorEntry entry;
      entry.name = p.name;
      entry.shape = p.shape;
      SR_ASSIGN_OR_RETURN(entry.values, model->ReadParameter(p));
      write_seconds += Seconds(read_start);
      SR_RETURN_IF_ERROR(write({&entry, 1}));
    }
    return absl::OkStatus();
  };
  SR_RETURN_IF_ERROR(write_outside_layers(/*after_layers=*/false));

  LayerHooks hooks;
  hooks.before_embed = [&] { return model->LoadEmbeddings(); };
  hooks.after_embed = [&] {
    model->ReleaseEmbeddings();
    return absl::OkStatus();
  };
  hooks.before_layer = [&](int layer) -> absl::Status {
    if (layer_being_read == layer) {
      layer_being_read = -1;
      SR_RETURN_IF_ERROR(reads->Wait());
    } else {
      SR_RETURN_IF_ERROR(reads->Submit([&model, layer] { return model->LoadLayer(layer); }));
      SR_RETURN_IF_ERROR(reads->Wait());
    }
    // The layers run in order, so the next one is wanted next (touching only
    // its own arena; layer `layer` is not written by LoadLayer(layer + 1)).
    if (options.overlap_io && layer + 1 < config.num_hidden_layers) {
      SR_RETURN_IF_ERROR(reads->Submit([&model, layer] { return model->LoadLayer(layer + 1); }));
      layer_being_read = layer + 1;
    }
    return absl::OkStatus();
  };
  hooks.first_layer = resume.first_layer;
  hooks.restore_layer = [&](int layer, bool load, LayerwiseResult& result) -> absl::Status {
    SR_ASSIGN_OR_RETURN(PersistedLayer saved, ReadLayerCheckpoint(partial, layer));
    const std::vector<LlamaModel::NamedParameter> params = model->LayerParameters(layer);
    bool same = params.size() == saved.tensors.size();
    for (size_t i = 0; same && i < params.size(); ++i) {
      same = params[i].name == saved.tensors[i].name && params[i].shape == saved.tensors[i].shape;
    }
    if (!same) {
      return absl::DataLossError(absl::StrCat("the checkpoint of layer ", layer, " in ", partial.string(),
                                              " does not hold this model's tensors"));
    }
    if (load) {
      // The source's layer, then every tensor as the interrupted run left it.
      SR_RETURN_IF_ERROR(model->LoadLayer(layer));
      const std::vector<LlamaModel::NamedParameter> loaded = model->LayerParameters(layer);
      for (size_t i = 0; i < loaded.size(); ++i) {
        const std::vector<float>& values = saved.tensors[i].values;
        if (values.empty()) return absl::DataLossError(absl::StrCat("layer checkpoint: no values for ", loaded[i].name));
        std::memcpy(loaded[i].data, values.data(), values.size() * sizeof(float));
      }
    }
    result.matrices.insert(result.matrices.end(), saved.matrices.begin(), saved.matrices.end());
    result.layer_seconds.push_back(saved.seconds);
    return writes->Submit([&write, tensors = std::move(saved.tensors)] { return write(tensors); });
  };
  hooks.release_layer = [&](int layer) { model->ReleaseLayer(layer); };
  // The layer read ahead, once its read finished (and did not fail).
  hooks.layer_loaded = [&](int layer) { return layer == layer_being_read && reads->DoneAndOk(); };
  hooks.after_layer = [&](int layer, LayerwiseResult& result) -> absl::Status {
    if (!leader) {
      for (const LlamaModel::NamedParameter& p : model->LayerParameters(layer)) {
        if (p.name.ends_with(".weight")) result.linears.erase(p.name.substr(0, p.name.size() - 7));
      }
      model->ReleaseLayer(layer);
      return absl::OkStatus();
    }
    std::vector<CompressedTensorEntry> entries;
    for (const LlamaModel::NamedParameter& p : model->LayerParameters(layer)) {
      CompressedTensorEntry entry;
      entry.name = p.name;
      entry.shape = p.shape;
      const std::string suffix = ".weight";
      auto it = p.name.ends_with(suffix)
                    ? result.linears.find(p.name.substr(0, p.name.size() - suffix.size()))
                    : result.linears.end();
      if (it == result.linears.end()) {
        SR_ASSIGN_OR_RETURN(entry.values, model->ReadParameter(p));
      } else {
        // The compressed weight is what was copied into the layer's view.
        LinearState& state = it->second;
        entry.values = std::move(state.weight);
        entry.quantized = std::move(state.quantized);
        if (!state.keep.empty()) {
          entry.sparsity = ZeroFraction(entry.values);
          entry.two_four = state.pattern == "2:4";
        }
        result.linears.erase(it);
      }
      entries.push_back(std::move(entry));
    }
    model->ReleaseLayer(layer);
    PersistedLayer done;
    done.layer = layer;
    done.seconds = result.layer_seconds.back();
    done.tensors = std::move(entries);
    for (const MatrixReport& m : result.matrices) {
      if (m.layer == layer) done.matrices.push_back(m);
    }
    return writes->Submit([&, done = std::move(done)] {
      // The writer takes the layer while its checkpoint file is written beside
      // it (both only read it); the layer is committed only once the writer
      // accepted it, so a layer the writer rejects is never resumed.
      const auto start = Clock::now();
      const double write_before = write_seconds;
      absl::Status status = WriteLayerCheckpoint(partial, done, [&] { return write(done.tensors); });
      // What the checkpoint added to the writer's time for the layer.
      checkpoint_seconds += std::max(0.0, Seconds(start) - (write_seconds - write_before));
      return status;
    });
  };
  absl::StatusOr<LayerwiseResult> layerwise = RunLayerwise(*model, recipe, calibration, options.layerwise, hooks);
  // The last layers' writes (and a read nothing waits for) end before the
  // result counts: a failed write is the run's error.
  const absl::Status written = writes->Wait();
  (void)reads->Wait();  // a read no layer waited for: moot
  if (!layerwise.ok()) return layerwise.status();
  SR_RETURN_IF_ERROR(written);
  LayerwiseResult result = std::move(*layerwise);
  report.io_wait_seconds = writes->blocked_seconds() + reads->blocked_seconds();
  SR_RETURN_IF_ERROR(CheckCancelled(options.layerwise.cancel, "writing the output"));
  report.embed_seconds = result.embed_seconds;
  report.layer_seconds = result.layer_seconds;

  if (!leader) {
    report.matrices = std::move(result.matrices);
    report.total_seconds = Seconds(total_start);
    return report;
  }
  start = Clock::now();
  SR_RETURN_IF_ERROR(write_outside_layers(/*after_layers=*/true));
  SR_ASSIGN_OR_RETURN(std::vector<DenseFallback> fallbacks, writer->Finish());
  for (const DenseFallback& f : fallbacks) report.dense_fallbacks.push_back({{"module", f.module}, {"reason", f.reason}});
  report.write_seconds = write_seconds + Seconds(start);
  report.matrices = std::move(result.matrices);
  report.total_seconds = Seconds(total_start);
  nlohmann::json report_json = report.ToJson();
  report_json["resumed_from_layer"] = result.resumed_from_layer;
  report_json["timings"]["resume_seconds"] = result.resume_seconds;
  report_json["timings"]["checkpoint_seconds"] = checkpoint_seconds;
  report_json["timings"]["phases"] = result.phases.ToJson();
  report_json["workers"] = comm != nullptr ? comm->size() : 1;
  SR_RETURN_IF_ERROR(WriteJson(options.out_dir / "report.json", report_json));
  return report;
}

}  // namespace shrinkray

#include <cstdio>
#include <map>

#include "client/cli/commands.h"
#include "core/util/flags.h"
#include "core/io/checkpoint.h"
#include "core/model/config.h"
#include "core/util/status_macros.h"

namespace shrinkray::cli {

absl::Status RunInspect(const Args& args) {
  SR_ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args, {"model"}));
  SR_ASSIGN_OR_RETURN(std::string model_dir, flags.Required("model"));
  SR_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  SR_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(model_dir));

  long parameters = 0;
  size_t bytes = 0;
  std::map<std::string, std::pair<long, size_t>> by_dtype;  // tensors, bytes
  for (const auto& name : checkpoint->names()) {
    SR_ASSIGN_OR_RETURN(const TensorInfo* t, checkpoint->Find(name));
    parameters += t->numel();
    bytes += t->nbytes;
    auto& entry = by_dtype[std::string(DTypeName(t->dtype))];
    entry.first += 1;
    entry.second += t->nbytes;
  }
  std::printf("model              %s\n", model_dir.c_str());
  std::printf("architecture       %s (model_type %s)\n", config.architecture_name.c_str(), config.model_type.c_str());
  std::printf("layers             %d\n", config.num_hidden_layers);
  std::printf("hidden_size        %d\n", config.hidden_size);
  std::printf("intermediate_size  %d\n", config.intermediate_size);
  std::printf("attention heads    %d (kv %d, head_dim %d)\n", config.num_attention_heads,
              config.num_key_value_heads, config.head_dim);
  std::printf("vocab_size         %d\n", config.vocab_size);
  std::printf("max_positions      %d\n", config.max_position_embeddings);
  std::printf("rope_theta         %g%s\n", config.rope_theta,
              config.rope_scaling.has_value() ? " (llama3 rope_scaling)" : "");
  if (config.sliding_window.has_value()) std::printf("sliding_window     %d\n", *config.sliding_window);
  std::printf("tied embeddings    %s\n", config.tie_word_embeddings ? "yes" : "no");
  std::printf("shards             %zu\n", checkpoint->files().size());
  std::printf("tensors            %zu\n", checkpoint->names().size());
  std::printf("parameters         %ld\n", parameters);
  std::printf("bytes              %zu\n", bytes);
  for (const auto& [dtype, entry] : by_dtype) {
    std::printf("  %-6s           %ld tensors, %zu bytes\n", dtype.c_str(), entry.first, entry.second);
  }
  return absl::OkStatus();
}

}  // namespace shrinkray::cli

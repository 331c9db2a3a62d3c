// WriteCompressedModel end to end: a synthetic model's Linears quantized with
// a plain RTN written here, written as dense / GPTQ / compressed-tensors, read
// back with LlamaModel::Load and compared with the dense-dequantized model;
// config fields, dense fallbacks for shapes a format cannot hold (MLP 172 as in
// stories260K), the output-folder rules and unsupported bits.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/algo/quantized_weight.h"
#include "core/io/checkpoint.h"
#include "core/io/model_writer.h"
#include "core/io/quantized_reader.h"
#include "core/model/llama.h"
#include "core/model/synthetic.h"
#include "core/tensor/convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "test_data.h"

namespace shrinkray {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::HasSubstr;

struct Recipe {
  int bits = 4;
  int group_size = 32;
  bool sym = true;
  bool act_order = false;
};

// Round-to-nearest on GPTQ's min-max grid (its Quantizer: the range always
// includes 0; symmetric ranges are centred), groups contiguous in the column
// order (permuted by descending column norm when act_order).
QuantizedWeight Rtn(std::span<const float> w, int rows, int cols, const Recipe& r) {
  QuantizedWeight q;
  q.rows = rows;
  q.cols = cols;
  q.bits = r.bits;
  q.group_size = r.group_size;
  q.sym = r.sym;
  q.act_order = r.act_order;
  const int gs = r.group_size > 0 ? r.group_size : cols;
  q.num_groups = (cols + gs - 1) / gs;
  const int maxq = (1 << r.bits) - 1;
  std::vector<int> order(cols);
  std::iota(order.begin(), order.end(), 0);
  if (r.act_order) {
    std::vector<double> norm(cols, 0);
    for (int i = 0; i < rows; ++i) {
      for (int c = 0; c < cols; ++c) norm[c] += std::abs(w[static_cast<size_t>(i) * cols + c]);
    }
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return norm[a] > norm[b]; });
  }
  q.g_idx.resize(cols);
  for (int k = 0; k < cols; ++k) q.g_idx[order[k]] = k / gs;
  q.codes.resize(static_cast<size_t>(rows) * cols);
  q.scales.resize(static_cast<size_t>(q.num_groups) * rows);
  q.zeros.resize(q.scales.size());
  for (int g = 0; g < q.num_groups; ++g) {
    for (int i = 0; i < rows; ++i) {
      float lo = 0, hi = 0;
      for (int k = g * gs; k < std::min(cols, (g + 1) * gs); ++k) {
        const float v = w[static_cast<size_t>(i) * cols + order[k]];
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
      if (r.sym) {
        hi = std::max(-lo, hi);
        lo = -hi;
      }
      if (lo == 0 && hi == 0) {
        lo = -1;
        hi = 1;
      }
      const float scale = (hi - lo) / maxq;
      const int zero = r.sym ? (maxq + 1) / 2 : static_cast<int>(std::nearbyint(-lo / scale));
      q.scales[static_cast<size_t>(g) * rows + i] = scale;
      q.zeros[static_cast<size_t>(g) * rows + i] = zero;
      for (int k = g * gs; k < std::min(cols, (g + 1) * gs); ++k) {
        const size_t at = static_cast<size_t>(i) * cols + order[k];
        const int code = static_cast<int>(std::nearbyint(w[at] / scale)) + zero;
        q.codes[at] = std::clamp(code, 0, maxq);
      }
    }
  }
  return q;
}

bool IsQuantizedLinear(const std::string& name) {
  return name.find("_proj.weight") != std::string::npos;
}

// The spec of `model` with every decoder Linear quantized by `recipe`; values
// are the dequantized weights.
CompressedModelSpec MakeSpec(const LlamaModel& model, const fs::path& source, const Recipe& recipe,
                             DType dtype = DType::kF32) {
  CompressedModelSpec spec;
  spec.source_dir = source;
  std::ifstream in(source / "config.json");
  spec.source_config = json::parse(in);
  spec.dense_dtype = dtype;
  spec.recipe_info = {{"bits", recipe.bits},         {"group_size", recipe.group_size},
                      {"sym", recipe.sym},           {"desc_act", recipe.act_order},
                      {"static_groups", false},      {"damp", 0.01},
                      {"true_sequential", true}};
  for (const auto& p : model.Parameters()) {
    CompressedTensorEntry e;
    e.name = p.name;
    e.shape = p.shape;
    size_t n = 1;
    for (int64_t d : p.shape) n *= static_cast<size_t>(d);
    std::span<const float> values(p.data, n);
    if (IsQuantizedLinear(p.name)) {
      QuantizedWeight q = Rtn(values, static_cast<int>(p.shape[0]), static_cast<int>(p.shape[1]), recipe);
      e.values.resize(n);
      for (int r = 0; r < q.rows; ++r) {
        for (int c = 0; c < q.cols; ++c) e.values[static_cast<size_t>(r) * q.cols + c] = q.Dequantize(r, c);
      }
      e.quantized = std::move(q);
    } else {
      e.values.assign(values.begin(), values.end());
    }
    spec.tensors.push_back(std::move(e));
  }
  return spec;
}

std::vector<float> Logits(const LlamaModel& model) {
  const int batch = 2, seqlen = 8;
  std::vector<int32_t> tokens(batch * seqlen);
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<int32_t>((i * 37 + 5) % model.config().vocab_size);
  }
  std::vector<float> logits(static_cast<size_t>(batch) * seqlen * model.config().vocab_size);
  EXPECT_TRUE(model.Forward(tokens, batch, seqlen, logits).ok());
  return logits;
}

json ReadJson(const fs::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

class FormatWriterTest : public ::testing::Test {
 protected:
  // A synthetic Llama: hidden 64, `intermediate` MLP, 2 layers, untied head.
  void MakeSource(int intermediate, DType dtype = DType::kF32) {
    root_ = testing::MakeTempDir("format-writer");
    source_ = root_ / "source";
    const ModelConfig config = MakeLlamaConfig(64, intermediate, 2, 4, 2, 96, 64, false);
    ASSERT_TRUE(WriteSyntheticModel(source_, config, 1234, dtype).ok());
    std::ofstream(source_ / "tokenizer.json") << "{}";
    std::ofstream(source_ / "generation_config.json") << "{\"bos_token_id\": 1}";
    auto model = LlamaModel::Load(source_);
    ASSERT_TRUE(model.ok()) << model.status();
    source_model_ = std::move(*model);
  }

  // Writes `spec` as `format` and loads it back.
  std::unique_ptr<LlamaModel> WriteAndLoad(const CompressedModelSpec& spec, OutputFormat format,
                                           const std::string& name) {
    const fs::path out = root_ / name;
    absl::Status status = WriteCompressedModel(out, spec, format, /*overwrite=*/false);
    EXPECT_TRUE(status.ok()) << status;
    EXPECT_FALSE(fs::exists(out.string() + ".partial"));
    auto model = LlamaModel::Load(out);
    EXPECT_TRUE(model.ok()) << model.status();
    return model.ok() ? std::move(*model) : nullptr;
  }

  fs::path root_, source_;
  std::unique_ptr<LlamaModel> source_model_;
};

float MaxAbs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::abs(x));
  return m;
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

TEST_F(FormatWriterTest, AllFormatsLoadBackWithTheDequantizedLogits) {
  ASSERT_NO_FATAL_FAILURE(MakeSource(128));
  for (const Recipe& recipe : {Recipe{4, 32, true, false}, Recipe{4, 32, false, true},
                               Recipe{3, -1, true, false}, Recipe{8, 64, false, false},
                               Recipe{2, 32, true, true}}) {
    SCOPED_TRACE(::testing::Message() << "bits " << recipe.bits << " group " << recipe.group_size
                                    << " sym " << recipe.sym << " act_order " << recipe.act_order);
    const CompressedModelSpec spec = MakeSpec(*source_model_, source_, recipe);
    const std::string tag = absl::StrCat(recipe.bits, "-", recipe.group_size, "-", recipe.sym, "-",
                                         recipe.act_order);
    auto dense = WriteAndLoad(spec, OutputFormat::kDense, "dense-" + tag);
    auto gptq = WriteAndLoad(spec, OutputFormat::kGptq, "gptq-" + tag);
    auto ct = WriteAndLoad(spec, OutputFormat::kCompressedTensors, "ct-" + tag);
    ASSERT_TRUE(dense && gptq && ct);
    const std::vector<float> expected = Logits(*dense);
    // compressed-tensors keeps F32 scales for an F32 model: bit-identical weights.
    EXPECT_EQ(Logits(*ct), expected);
    // GPTQ's scales are fp16: each weight moves by at most 2^-11 relative.
    EXPECT_LE(MaxAbsDiff(Logits(*gptq), expected), 2e-3f * (1 + MaxAbs(expected)));

    // Weight level: GPTQ reads back exactly fp16(scale) * (code - zero), with
    // the codes bit-exact.
    auto ckpt = Checkpoint::Open(root_ / ("gptq-" + tag));
    ASSERT_TRUE(ckpt.ok());
    auto q = ParseCheckpointQuantization(ReadJson(root_ / ("gptq-" + tag) / "config.json")["quantization_config"]);
    ASSERT_TRUE(q.ok()) << q.status();
    for (const CompressedTensorEntry& e : spec.tensors) {
      if (!e.quantized.has_value()) continue;
      const std::string module = e.name.substr(0, e.name.size() - 7);
      auto read = ReadQuantizedWeight(**ckpt, *q, module);
      ASSERT_TRUE(read.ok()) << read.status();
      ASSERT_TRUE(read->has_value()) << module;
      EXPECT_EQ((*read)->codes, e.quantized->codes) << module;
      EXPECT_EQ((*read)->zeros, e.quantized->zeros) << module;
      EXPECT_EQ((*read)->g_idx, e.quantized->g_idx) << module;
      auto values = ReadWeightF32(**ckpt, *q, e.name, e.shape);
      ASSERT_TRUE(values.ok()) << values.status();
      QuantizedWeight rounded = *e.quantized;
      for (float& s : rounded.scales) s = F16ToF32(F32ToF16(s));
      for (int r = 0; r < rounded.rows; ++r) {
        for (int c = 0; c < rounded.cols; ++c) {
          ASSERT_EQ((*values)[static_cast<size_t>(r) * rounded.cols + c], rounded.Dequantize(r, c));
        }
      }
    }
  }
}

TEST_F(FormatWriterTest, GptqFilesAndConfig) {
  ASSERT_NO_FATAL_FAILURE(MakeSource(128, DType::kF16));
  const Recipe recipe{4, 32, true, true};
  const CompressedModelSpec spec = MakeSpec(*source_model_, source_, recipe, DType::kF16);
  const fs::path out = root_ / "gptq";
  ASSERT_TRUE(WriteCompressedModel(out, spec, OutputFormat::kGptq, false).ok());

  const json qc = ReadJson(out / "quantize_config.json");
  const json config = ReadJson(out / "config.json");
  EXPECT_EQ(config["quantization_config"], qc);
  EXPECT_EQ(qc["quant_method"], "gptq");
  EXPECT_EQ(qc["checkpoint_format"], "gptq");  // symmetric: v1
  EXPECT_EQ(qc["bits"], 4);
  EXPECT_EQ(qc["group_size"], 32);
  EXPECT_EQ(qc["desc_act"], true);
  EXPECT_EQ(qc["sym"], true);
  EXPECT_EQ(qc["static_groups"], false);
  EXPECT_EQ(qc["true_sequential"], true);
  EXPECT_DOUBLE_EQ(qc["damp_percent"].get<double>(), 0.01);
  EXPECT_EQ(qc["lm_head"], false);
  EXPECT_FALSE(qc.contains("dynamic"));  // everything packs
  EXPECT_EQ(config["torch_dtype"], "float16");
  EXPECT_EQ(config["architectures"][0], "LlamaForCausalLM");
  EXPECT_TRUE(fs::exists(out / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(out / "generation_config.json"));

  auto ckpt = Checkpoint::Open(out);
  ASSERT_TRUE(ckpt.ok());
  const std::string p = "model.layers.1.mlp.down_proj";  // [64, 128]
  EXPECT_FALSE((*ckpt)->Contains(p + ".weight"));
  const TensorInfo* qweight = *(*ckpt)->Find(p + ".qweight");
  EXPECT_EQ(qweight->dtype, DType::kI32);
  EXPECT_EQ(qweight->shape, (std::vector<int64_t>{128 * 4 / 32, 64}));
  const TensorInfo* qzeros = *(*ckpt)->Find(p + ".qzeros");
  EXPECT_EQ(qzeros->shape, (std::vector<int64_t>{4, 64 * 4 / 32}));
  const TensorInfo* scales = *(*ckpt)->Find(p + ".scales");
  EXPECT_EQ(scales->dtype, DType::kF16);
  EXPECT_EQ(scales->shape, (std::vector<int64_t>{4, 64}));
  const TensorInfo* g_idx = *(*ckpt)->Find(p + ".g_idx");
  EXPECT_EQ(g_idx->dtype, DType::kI32);
  EXPECT_EQ(g_idx->shape, (std::vector<int64_t>{128}));
  // Unquantized tensors keep the input dtype.
  EXPECT_EQ((*(*ckpt)->Find("model.embed_tokens.weight"))->dtype, DType::kF16);
  EXPECT_EQ((*(*ckpt)->Find("lm_head.weight"))->dtype, DType::kF16);
  // Symmetric 4-bit zeros are 8, stored as 7 in every field.
  int32_t word;
  std::memcpy(&word, qzeros->data, sizeof(word));
  EXPECT_EQ(static_cast<uint32_t>(word), 0x77777777u);
}

TEST_F(FormatWriterTest, AsymmetricGptqIsV2) {
  ASSERT_NO_FATAL_FAILURE(MakeSource(128));
  CompressedModelSpec spec = MakeSpec(*source_model_, source_, Recipe{4, 32, false, false});
  // Force a zero point of 0, which v1 cannot store.
  for (CompressedTensorEntry& e : spec.tensors) {
    if (e.quantized.has_value()) e.quantized->zeros[0] = 0;
    if (e.quantized.has_value()) e.values.clear();  // the writer dequantizes
  }
  const fs::path out = root_ / "gptq-asym";
  ASSERT_TRUE(WriteCompressedModel(out, spec, OutputFormat::kGptq, false).ok());
  const json qc = ReadJson(out / "quantize_config.json");
  EXPECT_EQ(qc["checkpoint_format"], "gptq_v2");
  EXPECT_EQ(qc["sym"], false);
  auto ckpt = Checkpoint::Open(out);
  ASSERT_TRUE(ckpt.ok());
  auto q = ParseCheckpointQuantization(qc);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->zero_format, GptqZeroFormat::kV2);
  auto read = ReadQuantizedWeight(**ckpt, *q, "model.layers.0.self_attn.q_proj");
  ASSERT_TRUE(read.ok() && read->has_value());
  EXPECT_EQ((*read)->zeros[0], 0);
}

TEST_F(FormatWriterTest, CompressedTensorsFilesAndConfig) {
  ASSERT_NO_FATAL_FAILURE(MakeSource(128, DType::kBF16));
  CompressedModelSpec spec =
      MakeSpec(*source_model_, source_, Recipe{4, 32, false, true}, DType::kBF16);
  // Sparsity is recorded, not applied: 2:4 on every Linear.
  for (CompressedTensorEntry& e : spec.tensors) {
    if (e.quantized.has_value()) {
      e.sparsity = 0.5;
      e.two_four = true;
    }
  }
  const fs::path out = root_ / "ct";
  ASSERT_TRUE(WriteCompressedModel(out, spec, OutputFormat::kCompressedTensors, false).ok());
  EXPECT_FALSE(fs::exists(out / "quantize_config.json"));
  const json qc = ReadJson(out / "config.json")["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "compressed-tensors");
  EXPECT_EQ(qc["format"], "pack-quantized");
  EXPECT_EQ(qc["quantization_status"], "compressed");
  const json& group = qc["config_groups"]["group_0"];
  EXPECT_EQ(group["targets"], json::array({"Linear"}));
  EXPECT_EQ(group["weights"]["num_bits"], 4);
  EXPECT_EQ(group["weights"]["type"], "int");
  EXPECT_EQ(group["weights"]["symmetric"], false);
  EXPECT_EQ(group["weights"]["strategy"], "group");
  EXPECT_EQ(group["weights"]["group_size"], 32);
  EXPECT_EQ(group["weights"]["actorder"], "group");
  EXPECT_EQ(qc["ignore"], json::array({"lm_head"}));
  EXPECT_EQ(qc["sparsity_config"]["format"], "dense");
  EXPECT_EQ(qc["sparsity_config"]["sparsity_structure"], "2:4");
  EXPECT_GT(qc["sparsity_config"]["global_sparsity"].get<double>(), 0.0);

  auto ckpt = Checkpoint::Open(out);
  ASSERT_TRUE(ckpt.ok());
  const std::string p = "model.layers.0.mlp.gate_proj";  // [128, 64]
  const TensorInfo* packed = *(*ckpt)->Find(p + ".weight_packed");
  EXPECT_EQ(packed->dtype, DType::kI32);
  EXPECT_EQ(packed->shape, (std::vector<int64_t>{128, 8}));
  const TensorInfo* scale = *(*ckpt)->Find(p + ".weight_scale");
  EXPECT_EQ(scale->dtype, DType::kBF16);
  EXPECT_EQ(scale->shape, (std::vector<int64_t>{128, 2}));
  EXPECT_EQ((*(*ckpt)->Find(p + ".weight_zero_point"))->shape, (std::vector<int64_t>{16, 2}));
  EXPECT_EQ((*(*ckpt)->Find(p + ".weight_g_idx"))->shape, (std::vector<int64_t>{64}));
  const TensorInfo* shape = *(*ckpt)->Find(p + ".weight_shape");
  EXPECT_EQ(shape->dtype, DType::kI64);
  int64_t dims[2];
  std::memcpy(dims, shape->data, sizeof(dims));
  EXPECT_EQ(dims[0], 128);
  EXPECT_EQ(dims[1], 64);

  // Loads back; BF16 scales round like fp16 ones do (2^-8 relative).
  auto dense = WriteAndLoad(spec, OutputFormat::kDense, "dense");
  auto ct = LlamaModel::Load(out);
  ASSERT_TRUE(dense && ct.ok()) << ct.status();
  const std::vector<float> expected = Logits(*dense);
  EXPECT_LE(MaxAbsDiff(Logits(**ct), expected), 2e-2f * (1 + MaxAbs(expected)));
}

TEST_F(FormatWriterTest, UnpackableShapesStayDenseAndAreListed) {
  // MLP 172 as in stories260K: gate/up [172, 64], down [64, 172].
  ASSERT_NO_FATAL_FAILURE(MakeSource(172));
  const CompressedModelSpec sym = MakeSpec(*source_model_, source_, Recipe{4, 32, true, false});
  const CompressedModelSpec asym = MakeSpec(*source_model_, source_, Recipe{4, 32, false, false});

  auto fallbacks = PlanDenseFallbacks(sym, OutputFormat::kGptq);
  ASSERT_TRUE(fallbacks.ok()) << fallbacks.status();
  std::set<std::string> modules;
  for (const DenseFallback& f : *fallbacks) modules.insert(f.module);
  EXPECT_EQ(modules, (std::set<std::string>{
                         "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
                         "model.layers.0.mlp.down_proj", "model.layers.1.mlp.gate_proj",
                         "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"}));

  auto gptq = WriteAndLoad(sym, OutputFormat::kGptq, "gptq");
  auto dense = WriteAndLoad(sym, OutputFormat::kDense, "dense");
  ASSERT_TRUE(gptq && dense);
  const json qc = ReadJson(root_ / "gptq" / "quantize_config.json");
  ASSERT_TRUE(qc.contains("dynamic"));
  // One negative match per module; q/k/v-style fused names are matched too.
  EXPECT_TRUE(qc["dynamic"].contains("-:^model\\.layers\\.0\\.mlp\\.(?:gate_proj|gate_up_proj)$"));
  EXPECT_TRUE(qc["dynamic"].contains("-:^model\\.layers\\.1\\.mlp\\.down_proj$"));
  EXPECT_EQ(qc["dynamic"].size(), 6u);
  const json config = ReadJson(root_ / "gptq" / "config.json");
  EXPECT_EQ(config["shrinkray"]["kept_dense"].size(), 6u);
  auto ckpt = Checkpoint::Open(root_ / "gptq");
  ASSERT_TRUE(ckpt.ok());
  EXPECT_TRUE((*ckpt)->Contains("model.layers.0.mlp.down_proj.weight"));
  EXPECT_FALSE((*ckpt)->Contains("model.layers.0.mlp.down_proj.qweight"));
  EXPECT_TRUE((*ckpt)->Contains("model.layers.0.self_attn.q_proj.qweight"));
  const std::vector<float> expected = Logits(*dense);
  EXPECT_LE(MaxAbsDiff(Logits(*gptq), expected), 2e-3f * (1 + MaxAbs(expected)));

  // compressed-tensors symmetric: only down_proj (in 172) is ignored.
  auto ct_sym = PlanDenseFallbacks(sym, OutputFormat::kCompressedTensors);
  ASSERT_TRUE(ct_sym.ok());
  ASSERT_EQ(ct_sym->size(), 2u);
  EXPECT_EQ((*ct_sym)[0].module, "model.layers.0.mlp.down_proj");
  auto ct = WriteAndLoad(sym, OutputFormat::kCompressedTensors, "ct");
  ASSERT_TRUE(ct);
  EXPECT_EQ(Logits(*ct), expected);
  const json ct_qc = ReadJson(root_ / "ct" / "config.json")["quantization_config"];
  EXPECT_EQ(ct_qc["ignore"], json::array({"model.layers.0.mlp.down_proj",
                                          "model.layers.1.mlp.down_proj", "lm_head"}));
  // Asymmetric: gate/up's zero points pack along out = 172 too.
  auto ct_asym = PlanDenseFallbacks(asym, OutputFormat::kCompressedTensors);
  ASSERT_TRUE(ct_asym.ok());
  EXPECT_EQ(ct_asym->size(), 6u);
}

TEST_F(FormatWriterTest, FusedSiblingsFollowAFallback) {
  // v_proj left unquantized: vLLM's fused qkv_proj must then be dense too.
  ASSERT_NO_FATAL_FAILURE(MakeSource(128));
  CompressedModelSpec spec = MakeSpec(*source_model_, source_, Recipe{4, 32, true, false});
  for (CompressedTensorEntry& e : spec.tensors) {
    if (e.name == "model.layers.0.self_attn.v_proj.weight") e.quantized.reset();
  }
  auto fallbacks = PlanDenseFallbacks(spec, OutputFormat::kGptq);
  ASSERT_TRUE(fallbacks.ok());
  ASSERT_EQ(fallbacks->size(), 2u);
  EXPECT_EQ((*fallbacks)[0].module, "model.layers.0.self_attn.q_proj");
  EXPECT_EQ((*fallbacks)[1].module, "model.layers.0.self_attn.k_proj");
  EXPECT_THAT((*fallbacks)[0].reason, HasSubstr("v_proj"));
  auto gptq = WriteAndLoad(spec, OutputFormat::kGptq, "gptq");
  ASSERT_TRUE(gptq);
  const json qc = ReadJson(root_ / "gptq" / "quantize_config.json");
  EXPECT_TRUE(
      qc["dynamic"].contains("-:^model\\.layers\\.0\\.self_attn\\.(?:v_proj|qkv_proj)$"));
  EXPECT_EQ(qc["dynamic"].size(), 3u);
}

TEST_F(FormatWriterTest, ExistingOutputNeedsOverwrite) {
  ASSERT_NO_FATAL_FAILURE(MakeSource(128));
  const CompressedModelSpec spec = MakeSpec(*source_model_, source_, Recipe{});
  const fs::path out = root_ / "out";
  fs::create_directories(out);
  std::ofstream(out / "stale.txt") << "old";
  absl::Status status = WriteCompressedModel(out, spec, OutputFormat::kGptq, false);
  ASSERT_EQ(status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(status.message(), HasSubstr("output folder " + out.string() + " exists; pass --overwrite"));
  EXPECT_TRUE(fs::exists(out / "stale.txt"));
  ASSERT_TRUE(WriteCompressedModel(out, spec, OutputFormat::kGptq, true).ok());
  EXPECT_FALSE(fs::exists(out / "stale.txt"));
  EXPECT_TRUE(fs::exists(out / "quantize_config.json"));
  for (const auto& item : fs::directory_iterator(root_)) {
    EXPECT_EQ(item.path().string().find(".old."), std::string::npos) << item.path();
    EXPECT_EQ(item.path().string().find(".partial"), std::string::npos) << item.path();
  }
  // Rewriting as dense drops the quantization_config.
  ASSERT_TRUE(WriteCompressedModel(out, spec, OutputFormat::kDense, true).ok());
  EXPECT_FALSE(fs::exists(out / "quantize_config.json"));
  EXPECT_FALSE(ReadJson(out / "config.json").contains("quantization_config"));
}

TEST_F(FormatWriterTest, UnsupportedBitsArePackedNowhere) {
  ASSERT_NO_FATAL_FAILURE(MakeSource(128));
  const CompressedModelSpec spec = MakeSpec(*source_model_, source_, Recipe{5, 32, true, false});
  for (OutputFormat format : {OutputFormat::kGptq, OutputFormat::kCompressedTensors}) {
    absl::Status status = WriteCompressedModel(root_ / "five", spec, format, false);
    ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(),
                HasSubstr(absl::StrCat("bits 5 cannot be packed in ", std::string(OutputFormatName(format)),
                                       "; use --format dense")));
    EXPECT_FALSE(fs::exists(root_ / "five"));
    EXPECT_FALSE(fs::exists(root_ / "five.partial"));
  }
  auto dense = WriteAndLoad(spec, OutputFormat::kDense, "five");
  EXPECT_TRUE(dense);
}

// ---- The streaming writer: the executor feeds it one decoder layer at a time.

// Every file under `dir` (relative path -> bytes).
std::map<std::string, std::string> ReadFolder(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& item : fs::recursive_directory_iterator(dir)) {
    if (!item.is_regular_file()) continue;
    std::ifstream in(item.path(), std::ios::binary);
    files[fs::relative(item.path(), dir).string()] =
        std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return files;
}

// "model.layers.3." for a decoder-layer tensor, else the tensor's own name.
std::string PieceOf(const std::string& name) {
  const std::string layers = "model.layers.";
  if (name.rfind(layers, 0) != 0) return name;
  return name.substr(0, name.find('.', layers.size()) + 1);
}

// Writes `spec` through CompressedModelWriter as RunCompression does: each
// decoder layer's tensors in one Add, every other tensor on its own.
absl::StatusOr<std::vector<DenseFallback>> WriteLayerByLayer(const fs::path& out,
                                                             const CompressedModelSpec& spec,
                                                             OutputFormat format) {
  CompressedModelSpec header = spec;
  header.tensors.clear();
  auto writer = CompressedModelWriter::Open(out, header, format, /*overwrite=*/false);
  if (!writer.ok()) return writer.status();
  const auto& tensors = spec.tensors;
  for (size_t begin = 0; begin < tensors.size();) {
    size_t end = begin + 1;
    while (end < tensors.size() && PieceOf(tensors[end].name) == PieceOf(tensors[begin].name)) ++end;
    absl::Status status = (*writer)->Add(std::span(tensors).subspan(begin, end - begin));
    if (!status.ok()) return status;
    begin = end;
  }
  return (*writer)->Finish();
}

TEST_F(FormatWriterTest, LayerByLayerWritesTheBytesOfTheWholeSpec) {
  // MLP 172: shapes some formats keep dense, for compressed-tensors only when
  // the model is asymmetric (known once every layer was seen).
  ASSERT_NO_FATAL_FAILURE(MakeSource(172));
  struct Variant {
    std::string tag;
    Recipe recipe;
    DType dtype;
    bool pruned = false;     // mark the MLP sparse (2:4 on up_proj)
    bool flag_asym = false;  // symmetric grids but sym = false on every weight
  };
  const std::vector<Variant> variants = {
      {"w4g32", {4, 32, true, false}, DType::kF32},
      {"w4g32-asym-act", {4, 32, false, true}, DType::kBF16},
      {"w8-asym-pruned", {8, -1, false, false}, DType::kF16, true},
      {"w3g32-act-pruned", {3, 32, true, true}, DType::kF32, true},
      {"w4g32-mid-zeros", {4, 32, true, false}, DType::kF32, false, true},
  };
  for (const Variant& v : variants) {
    CompressedModelSpec spec = MakeSpec(*source_model_, source_, v.recipe, v.dtype);
    for (CompressedTensorEntry& e : spec.tensors) {
      if (!e.quantized.has_value()) continue;
      if (v.flag_asym) e.quantized->sym = false;
      if (v.pruned && e.name.find(".mlp.") != std::string::npos) {
        e.sparsity = 0.25;
        e.two_four = e.name.find("up_proj") != std::string::npos;
      }
    }
    for (OutputFormat format :
         {OutputFormat::kDense, OutputFormat::kGptq, OutputFormat::kCompressedTensors}) {
      const std::string tag = absl::StrCat(v.tag, "-", std::string(OutputFormatName(format)));
      SCOPED_TRACE(tag);
      ASSERT_TRUE(WriteCompressedModel(root_ / ("whole-" + tag), spec, format, false).ok());
      auto fallbacks = WriteLayerByLayer(root_ / ("layers-" + tag), spec, format);
      ASSERT_TRUE(fallbacks.ok()) << fallbacks.status();
      const auto whole = ReadFolder(root_ / ("whole-" + tag));
      const auto layers = ReadFolder(root_ / ("layers-" + tag));
      ASSERT_EQ(whole.size(), layers.size());
      for (const auto& [name, bytes] : whole) {
        ASSERT_TRUE(layers.contains(name)) << name;
        EXPECT_TRUE(layers.at(name) == bytes) << name << " differs";
      }
      auto planned = PlanDenseFallbacks(spec, format);
      ASSERT_TRUE(planned.ok()) << planned.status();
      ASSERT_EQ(fallbacks->size(), planned->size());
      for (size_t i = 0; i < planned->size(); ++i) {
        EXPECT_EQ((*fallbacks)[i].module, (*planned)[i].module);
        EXPECT_EQ((*fallbacks)[i].reason, (*planned)[i].reason);
      }
      if (format == OutputFormat::kCompressedTensors) {
        // The shape rule that depends on the whole model decided as it should.
        const json ignore = ReadJson(root_ / ("layers-" + tag) / "config.json")
                                ["quantization_config"]["ignore"];
        const bool asym_grids = !v.recipe.sym && v.recipe.bits == 4;
        EXPECT_EQ(std::count(ignore.begin(), ignore.end(), "model.layers.1.mlp.gate_proj"),
                  asym_grids ? 1 : 0)
            << ignore.dump();
      }
    }
  }
}

TEST_F(FormatWriterTest, StreamingWriterNeedsAFusedGroupInOneAdd) {
  ASSERT_NO_FATAL_FAILURE(MakeSource(128));
  CompressedModelSpec spec = MakeSpec(*source_model_, source_, Recipe{});
  std::vector<CompressedTensorEntry> tensors = std::move(spec.tensors);
  spec.tensors.clear();
  auto writer = CompressedModelWriter::Open(root_ / "split", spec, OutputFormat::kGptq, false);
  ASSERT_TRUE(writer.ok()) << writer.status();
  auto q = std::find_if(tensors.begin(), tensors.end(), [](const CompressedTensorEntry& e) {
    return e.name == "model.layers.0.self_attn.q_proj.weight";
  });
  ASSERT_NE(q, tensors.end());
  ASSERT_TRUE((*writer)->Add({&*q, 1}).ok());
  absl::Status status = (*writer)->Add({&*(q + 1), 1});  // k_proj
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("model.layers.0.self_attn."));
  EXPECT_EQ((*writer)->Finish().status(), status);  // failed for good
  EXPECT_TRUE(fs::exists(root_ / "split.partial"));
  writer->reset();
  EXPECT_FALSE(fs::exists(root_ / "split.partial"));
  EXPECT_FALSE(fs::exists(root_ / "split"));
}

TEST_F(FormatWriterTest, UnfinishedStreamingWriterLeavesTheOldFolder) {
  ASSERT_NO_FATAL_FAILURE(MakeSource(128));
  CompressedModelSpec spec = MakeSpec(*source_model_, source_, Recipe{});
  const fs::path out = root_ / "out";
  fs::create_directories(out);
  std::ofstream(out / "stale.txt") << "old";
  EXPECT_EQ(CompressedModelWriter::Open(out, spec, OutputFormat::kDense, true).status().code(),
            absl::StatusCode::kInvalidArgument);  // the header holds tensors
  std::vector<CompressedTensorEntry> tensors = std::move(spec.tensors);
  spec.tensors.clear();
  EXPECT_EQ(CompressedModelWriter::Open(out, spec, OutputFormat::kDense, false).status().code(),
            absl::StatusCode::kAlreadyExists);
  {
    auto writer = CompressedModelWriter::Open(out, spec, OutputFormat::kDense, true);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->Add({tensors.data(), 1}).ok());
  }
  EXPECT_TRUE(fs::exists(out / "stale.txt"));
  EXPECT_FALSE(fs::exists(root_ / "out.partial"));

  // A packed format learns that nothing was quantized only at the end.
  for (CompressedTensorEntry& e : tensors) e.quantized.reset();
  auto writer = CompressedModelWriter::Open(out, spec, OutputFormat::kGptq, true);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Add(tensors).ok());
  absl::Status status = (*writer)->Finish().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("no weight is quantized"));
  writer->reset();
  EXPECT_TRUE(fs::exists(out / "stale.txt"));
  EXPECT_FALSE(fs::exists(root_ / "out.partial"));
}

// The bytes a streamed encoding produces, and the largest piece it handed on.
std::vector<std::byte> Drain(const StreamedTensor& t, size_t* largest_piece) {
  std::vector<std::byte> bytes;
  *largest_piece = 0;
  const absl::Status s = t.write([&](std::span<const std::byte> piece) {
    bytes.insert(bytes.end(), piece.begin(), piece.end());
    *largest_piece = std::max(*largest_piece, piece.size());
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(bytes.size(), t.nbytes);
  return bytes;
}

// Encodings convert a bounded piece at a time; the bytes are the whole
// conversion's, across pieces and a short last one.
TEST(FormatEncodeTest, PiecewiseEncodingIsTheWholeConversion) {
  constexpr int kRows = 700, kCols = 512;  // 358,400 values: more than one piece
  std::vector<float> values(static_cast<size_t>(kRows) * kCols);
  for (size_t i = 0; i < values.size(); ++i) values[i] = std::sin(0.001f * static_cast<float>(i)) * 3.7f;
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    std::vector<std::byte> whole(values.size() * DTypeSize(dtype));
    ASSERT_TRUE(ConvertFromF32(whole.data(), dtype, values.data(), values.size()).ok());
    auto t = EncodeFloats("w", {kRows, kCols}, values, dtype);
    ASSERT_TRUE(t.ok()) << t.status();
    size_t largest = 0;
    EXPECT_EQ(Drain(*t, &largest), whole) << DTypeName(dtype);
    EXPECT_LT(largest, whole.size()) << DTypeName(dtype);
  }

  // A quantized entry without values is dequantized a few rows at a time.
  CompressedTensorEntry entry;
  entry.name = "model.layers.0.mlp.up_proj.weight";
  entry.shape = {kRows, kCols};
  QuantizedWeight& w = entry.quantized.emplace();
  w.rows = kRows;
  w.cols = kCols;
  w.bits = 4;
  w.group_size = 128;
  w.num_groups = kCols / 128;
  w.codes.resize(values.size());
  for (size_t i = 0; i < w.codes.size(); ++i) w.codes[i] = static_cast<int32_t>((i * 7 + i / 13) % 16);
  for (int g = 0; g < w.num_groups * kRows; ++g) {
    w.scales.push_back(0.01f * static_cast<float>(1 + g % 5));
    w.zeros.push_back(g % 16);
  }
  for (int c = 0; c < kCols; ++c) w.g_idx.push_back(c / 128);
  std::vector<float> dequantized(values.size());
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) dequantized[static_cast<size_t>(r) * kCols + c] = w.Dequantize(r, c);
  }
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    std::vector<std::byte> whole(values.size() * DTypeSize(dtype));
    ASSERT_TRUE(ConvertFromF32(whole.data(), dtype, dequantized.data(), dequantized.size()).ok());
    auto t = EncodeDense(entry, dtype);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->dtype, dtype);
    EXPECT_EQ(t->shape, entry.shape);
    size_t largest = 0;
    EXPECT_EQ(Drain(*t, &largest), whole) << DTypeName(dtype);
    EXPECT_LT(largest, whole.size()) << DTypeName(dtype);
  }

  // The checks come before any byte: a count that is not the shape's, a dtype
  // that is not a float.
  auto short_values = EncodeFloats("w", {kRows, kCols + 1}, values, DType::kBF16);
  EXPECT_EQ(short_values.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(short_values.status().message(), HasSubstr("tensor 'w' has 358400 values for 359100"));
  auto int_dtype = EncodeDense(entry, DType::kI32);
  EXPECT_EQ(int_dtype.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(int_dtype.status().message(), HasSubstr("dense dtype I32 is not F32, F16 or BF16"));
}

TEST(FormatParseTest, OutputFormatNames) {
  EXPECT_EQ(*ParseOutputFormat("dense"), OutputFormat::kDense);
  EXPECT_EQ(*ParseOutputFormat("GPTQ"), OutputFormat::kGptq);
  EXPECT_EQ(*ParseOutputFormat("compressed-tensors"), OutputFormat::kCompressedTensors);
  EXPECT_EQ(ParseOutputFormat("awq").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(FormatReaderTest, UnsupportedMethodIsUnimplementedOnlyWhenNeeded) {
  auto q = ParseCheckpointQuantization(json{{"quant_method", "awq"}, {"bits", 4}});
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->method, CheckpointQuantization::Method::kUnsupported);
  auto none = ParseCheckpointQuantization(json());
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->method, CheckpointQuantization::Method::kNone);
  auto marlin = ParseCheckpointQuantization(
      json{{"quant_method", "gptq"}, {"bits", 4}, {"checkpoint_format", "marlin"}});
  ASSERT_TRUE(marlin.ok());
  EXPECT_EQ(marlin->method, CheckpointQuantization::Method::kUnsupported);
}

TEST(FormatStoriesTest, Stories260KGptqKeepsTheMlpDense) {
  const fs::path source = testing::SharedDataDir() / "stories260K";
  SHRINKRAY_REQUIRE_PATH(source);
  auto model = LlamaModel::Load(source);
  ASSERT_TRUE(model.ok()) << model.status();
  const CompressedModelSpec spec = MakeSpec(**model, source, Recipe{4, 32, true, false});
  const fs::path root = testing::MakeTempDir("format-stories");
  ASSERT_TRUE(WriteCompressedModel(root / "dense", spec, OutputFormat::kDense, false).ok());
  ASSERT_TRUE(WriteCompressedModel(root / "gptq", spec, OutputFormat::kGptq, false).ok());
  const json qc = ReadJson(root / "gptq" / "quantize_config.json");
  EXPECT_EQ(qc["dynamic"].size(), 15u);  // gate, up, down in 5 layers
  EXPECT_TRUE(fs::exists(root / "gptq" / "tokenizer.json"));
  auto dense = LlamaModel::Load(root / "dense");
  auto gptq = LlamaModel::Load(root / "gptq");
  ASSERT_TRUE(dense.ok() && gptq.ok()) << gptq.status();
  const std::vector<float> expected = Logits(**dense);
  EXPECT_LE(MaxAbsDiff(Logits(**gptq), expected), 2e-3f * (1 + MaxAbs(expected)));
}

}  // namespace
}  // namespace shrinkray

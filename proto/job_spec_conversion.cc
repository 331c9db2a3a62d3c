#include "proto/job_spec_conversion.h"

#include "absl/strings/str_cat.h"

namespace shrinkray {

absl::StatusOr<CompressionJob> CompressionJobFromSpec(const v1::JobSpec& spec) {
  CompressionJob job;
  job.recipe_yaml = spec.recipe_yaml();
  job.recipe_source = "spec.recipe_yaml";
  CompressOptions& c = job.compress;
  c.model_dir = spec.model_path();
  c.calib_path = spec.calibration().path();
  c.out_dir = spec.output_path();
  c.calibration.num_samples = spec.calibration().num_samples() > 0 ? spec.calibration().num_samples() : 128;
  c.calibration.seqlen = spec.calibration().seqlen() > 0 ? spec.calibration().seqlen() : 2048;
  c.calibration.seed = spec.calibration().seed();
  c.overwrite = spec.overwrite();
  switch (spec.output_format()) {
    case v1::OUTPUT_FORMAT_UNSPECIFIED:
    case v1::OUTPUT_FORMAT_DENSE: c.format = OutputFormat::kDense; break;
    case v1::OUTPUT_FORMAT_GPTQ: c.format = OutputFormat::kGptq; break;
    case v1::OUTPUT_FORMAT_COMPRESSED_TENSORS: c.format = OutputFormat::kCompressedTensors; break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("spec.output_format: unknown value ", static_cast<int>(spec.output_format())));
  }
  if (!spec.evaluation().path().empty()) {
    JobEvaluation e;
    e.text_path = spec.evaluation().path();
    e.seqlen = spec.evaluation().seqlen() > 0 ? spec.evaluation().seqlen() : 256;
    e.max_chars = spec.evaluation().max_chars() > 0 ? spec.evaluation().max_chars() : -1;
    job.evaluation = e;
  }
  return job;
}

v1::JobResult JobResultFromRun(const CompressionJobResult& run, const std::string& report_json) {
  v1::JobResult result;
  result.set_output_path(run.report.out_dir);
  result.set_input_bytes(run.input_bytes);
  result.set_output_bytes(run.output_bytes);
  for (const JobEvalRow& row : run.eval) {
    v1::EvalRow* r = result.add_eval();
    r->set_model(row.model);
    r->set_perplexity(row.ppl);
    r->set_perplexity_change_percent(row.change_percent);
    r->set_scored_tokens(row.scored_tokens);
    r->set_mean_kl(row.mean_kl);
    r->set_top1_agreement(row.top1_agreement);
    r->set_bytes(row.bytes);
    r->set_parameters(row.parameters);
    r->set_bits_per_parameter(row.bits_per_parameter);
    r->set_compression_ratio(row.compression_ratio);
    r->set_retention(row.retention);
    r->set_seconds(row.seconds);
  }
  for (const auto& [stage, seconds] : run.stage_seconds) (*result.mutable_stage_seconds())[stage] = seconds;
  result.set_report_json(report_json);
  result.set_num_matrices(static_cast<int32_t>(run.report.matrices.size()));
  result.set_mean_matrix_error(run.report.MeanError());
  return result;
}

}  // namespace shrinkray

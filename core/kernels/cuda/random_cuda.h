// Seeded random fills on the GPU (counter-based: element i depends only on
// (seed, i), so results do not depend on the launch shape). For synthetic
// models and benchmarks, not for statistics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace shrinkray {

// out[i] = mean + stddev · N(0, 1) (Box-Muller on a splitmix64 hash).
absl::Status fill_random_normal(float* out, long n, float mean, float stddev, uint64_t seed,
                                cudaStream_t stream);
absl::Status fill_random_normal(__nv_bfloat16* out, long n, float mean, float stddev,
                                uint64_t seed, cudaStream_t stream);
// out[i] = value.
absl::Status fill_constant(float* out, long n, float value, cudaStream_t stream);
// out[i] uniform in [0, vocab).
absl::Status fill_random_tokens(int32_t* out, long n, int vocab, uint64_t seed,
                                cudaStream_t stream);
// out[i] = bf16(inp[i]) (round to nearest even).
absl::Status convert_to_bf16(__nv_bfloat16* out, const float* inp, long n, cudaStream_t stream);
// Packs 4-bit codes two per byte (low nibble = even column) for a [rows, cols]
// uint8 code matrix with even cols: out is [rows, cols / 2].
absl::Status pack_int4(uint8_t* out, const uint8_t* codes, int rows, int cols,
                       cudaStream_t stream);

}  // namespace shrinkray

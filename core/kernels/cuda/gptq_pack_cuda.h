// GPTQ checkpoint packing on the GPU: the twins of PackGptqQweight and
// PackGptqQzeros (core/io/gptq_format.h, same layouts and bit streams, 2/3/4/8
// bits), so a GPU job copies packed tensors to the host instead of one byte
// per code. Values are masked to `bits` on the device (a kernel cannot return
// an error): callers validate codes/zeros ranges where they come from
// untrusted input (the GPTQ solvers' outputs are in range by construction;
// v1 needs every zero point >= 1, which asymmetric GPTQ guarantees only when
// the caller checks, see PackGptqQzeros).
//
// Host-only header.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace shrinkray {

// codes [rows = out, cols = in] (one byte per code) -> qweight int32
// [cols * bits / 32, rows]. cols * bits must be a multiple of 32.
absl::Status pack_gptq_qweight(int32_t* qweight, const uint8_t* codes, int rows, int cols, int bits,
                               cudaStream_t stream);

// zeros [groups, rows] -> qzeros int32 [groups, rows * bits / 32]; v1 stores
// zero - 1 in each field (checkpoint_format "gptq"), else the zero itself.
absl::Status pack_gptq_qzeros(int32_t* qzeros, const int32_t* zeros, int groups, int rows, int bits,
                              bool v1, cudaStream_t stream);

// out[i] = fp16(inp[i]), round to nearest even (GPTQ stores scales in fp16).
absl::Status convert_to_fp16(__half* out, const float* inp, long n, cudaStream_t stream);

}  // namespace shrinkray

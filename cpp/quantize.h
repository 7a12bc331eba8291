// Quantizing a text GGUF with the compiled llama.cpp (llama_model_quantize), for `music-flamingo convert --quant`.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace mf {

// Per-tensor importance (llama.cpp's imatrix: mean squared activation per input column), by tensor name.
using ImportanceMatrix = std::vector<std::pair<std::string, std::vector<float>>>;

// Writes `dst`, the text GGUF `src` quantized to llama.cpp file type `ftype` (enum llama_ftype: 7 Q8_0, 18 Q6_K,
// 15 Q4_K_M, ...), with `n_threads` threads (0: all). Throws ModelFileError when llama.cpp refuses (unreadable
// input, unknown type, an imatrix-only type without an imatrix; details in the log).
void quantize_model(const std::string & src, const std::string & dst, int ftype, int n_threads,
                    const ImportanceMatrix & imatrix = {});

}  // namespace mf

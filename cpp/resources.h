// What one Engine owns, shared with its runner (cpp/batch_run.cpp) and nothing else. Every handle is held by
// llama.cpp's or mtmd's own smart pointer (llama-cpp.h, mtmd.h) and freed in reverse order of the members:
// context first, model last.
#pragma once

#include "audio_window.h"
#include "device_sampling.h"
#include "llama-cpp.h"
#include "mtmd.h"
#include "sampling.h"

#include <cstdint>
#include <memory>
#include <vector>

namespace mf {

struct EngineResources {
    llama_model_ptr model;
    std::unique_ptr<AudioWindowEncoder> encoder;  // Framing::Reference (the default)
    mtmd::context_ptr mtmd;                       // the other framings: a second copy of the encoder, made on first
                                                  // use (Engine::ensure_mtmd)
    DeviceSamplers device;                        // chains attached to ctx (declared first: freed after it)
    llama_context_ptr ctx;
    llama_context_ptr prefill_ctx;                // prefixes beside the steps (prefill_context.h); may be null
    std::vector<int32_t> eog_ids;                 // end-of-generation tokens (banned with ignore_eos)
    std::unique_ptr<SamplerPool> pool;            // samples the rows of a step
};

}  // namespace mf

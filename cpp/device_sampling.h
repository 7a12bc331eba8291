// Sampling on the device: the pinned llama.cpp's backend samplers (EXPERIMENTAL there: llama.h's "backend
// sampling API", llama_set_sampler; src/llama-graph.cpp build_sampling). A sampler chain attached to a sequence id
// of the context becomes part of every decode's graph: the sequence's logits row is sampled where it was computed
// and only the chosen token is copied back (when every output row of a decode has a chain, the 152k-float rows are
// not copied at all). The host fast path (sampling.h) stays the fallback for what the device chain cannot reproduce.
//
// Why chains are kept per sequence id and reused: attaching a chain (llama_set_sampler) makes llama.cpp re-reserve
// its compute graphs and blocks graph reuse. A track's prompts usually ask for the same settings as the previous
// track that held the same sequence ids, so a chain with equal settings is only reset (its RNG re-seeded, as a
// fresh host sampler would be) and stays attached; a new chain is attached only when the settings change.
#pragma once

#include "types.h"
#include "llama-cpp.h"

#include <map>
#include <string>
#include <vector>

namespace mf {

// The mode of EngineParams/RunRequest::sampling_on_device (types.h); InputError for anything else.
DeviceSampling parse_device_sampling(const std::string & name);

// Empty when a sequence with these settings samples on the device as on the host (same seed, same tokens, up to
// float rounding at a draw's boundary); else why not (that sequence then samples on the host).
std::string device_sampling_refusal(const SamplingParams & s);

class DeviceSamplers {
public:
    // The chain that samples `seq` on `ctx` from now on (attached, or an attached one with equal settings reset).
    // `banned`: token ids masked to -inf first (ignore_eos), or null. Owned here; valid until the next attach/detach.
    // Null when llama.cpp refuses to sample on the device (then nothing is attached to `seq`).
    llama_sampler * attach(llama_context * ctx, int32_t seq, const SamplingParams & s,
                           const std::vector<int32_t> * banned);
    // `seq` samples on the host: a stale chain must not stay attached (with every output row covered by chains,
    // llama.cpp stops copying the raw logits the host path reads).
    void detach(llama_context * ctx, int32_t seq);
    void detach_all(llama_context * ctx);
    // The context was freed: its chains are dropped without touching it.
    void forget() { slots_.clear(); }
    // llama_set_sampler calls so far (each one re-reserves the context's graphs at the next decode).
    int attaches() const { return attaches_; }

private:
    struct Slot {
        SamplingParams s;
        bool banned = false;
        llama_sampler_ptr chain;
    };
    std::map<int32_t, Slot> slots_;
    int attaches_ = 0;
};

}  // namespace mf

#include "device_sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace mf {
namespace {

// Candidates the device's float sums were measured to draw the host's tokens over (test_device_sampling.py: k up
// to 1000 on the tiny model's flat distributions). Their rounding grows with the candidates: past this, the host.
constexpr int kMaxDeviceTopK = 1024;

bool same_settings(const SamplingParams & a, const SamplingParams & b) {
    return a.temperature == b.temperature && a.top_p == b.top_p && a.top_k == b.top_k && a.min_p == b.min_p &&
           a.repeat_penalty == b.repeat_penalty && a.repeat_last_n == b.repeat_last_n && a.seed == b.seed &&
           a.ignore_eos == b.ignore_eos;
}

// The host path's chain (sampling.cpp: HF order, temperature before top-k/top-p, then the seeded draw; or greedy)
// with the banned tokens masked first, as the host path masks them in the row before sampling. Every sampler in it
// has a backend version in the pinned tree; the dist sampler draws the same std::mt19937 numbers on the device as
// on the host (one per sampled row, the double cast to float).
llama_sampler_ptr make_chain(int n_vocab, const SamplingParams & s, const std::vector<int32_t> * banned) {
    llama_sampler_ptr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    llama_sampler * c = chain.get();
    if (banned && !banned->empty()) {
        std::vector<llama_logit_bias> bias;
        for (int32_t id : *banned) bias.push_back({id, -INFINITY});
        llama_sampler_chain_add(c, llama_sampler_init_logit_bias(n_vocab, (int32_t) bias.size(), bias.data()));
    }
    if (s.temperature <= 0.0f) {
        llama_sampler_chain_add(c, llama_sampler_init_greedy());
        return chain;
    }
    llama_sampler_chain_add(c, llama_sampler_init_temp(s.temperature));
    // ggml's TOP_K asserts k <= the row's width (a vocabulary smaller than kMaxDeviceTopK); the host keeps as many
    llama_sampler_chain_add(c, llama_sampler_init_top_k(std::min(s.top_k, n_vocab)));
    if (s.top_p < 1.0f) llama_sampler_chain_add(c, llama_sampler_init_top_p(s.top_p, 1));
    llama_sampler_chain_add(c, llama_sampler_init_dist(s.seed));
    return chain;
}

}  // namespace

DeviceSampling parse_device_sampling(const std::string & name) {
    if (name == "auto") return DeviceSampling::Auto;
    if (name == "on") return DeviceSampling::On;
    if (name == "off") return DeviceSampling::Off;
    throw InputError("sampling_on_device must be 'auto', 'on' or 'off' (got '" + name + "')");
}

std::string device_sampling_refusal(const SamplingParams & s) {
    if (s.repeat_penalty != 1.0f) {
        return "repeat_penalty samples on the host (the penalty's backend version is not checked against it)";
    }
    if (s.temperature <= 0.0f) return "";  // greedy: the first maximum on both
    if (s.min_p > 0.0f) return "min_p samples on the host (its backend version is not checked against it)";
    if (s.top_k <= 0 || s.top_k > kMaxDeviceTopK) {
        // The device sums the probabilities in float, the host's draw in double: over a whole vocabulary of nearly
        // equal probabilities (measured: the tiny model at temperature 1.3-1.5) the drift moves the draw to a
        // neighbouring token. Over top-k candidates it stays below the gaps (k up to 1000 measured equal).
        return "a draw over more than " + std::to_string(kMaxDeviceTopK) +
               " candidates (top_k 0 or larger) samples on the host (float vs double sums differ there)";
    }
    if (s.top_p >= 1.0f) {
        // The draw walks the candidates in order. ggml's TOP_K leaves its k unordered (the CPU kernel swaps the first
        // two on purpose) and only top-p sorts them on the device; the host path walks them sorted.
        return "top_k without top_p samples on the host (the device's top-k leaves the candidates unordered)";
    }
    return "";
}

llama_sampler * DeviceSamplers::attach(llama_context * ctx, int32_t seq, const SamplingParams & s,
                                       const std::vector<int32_t> * banned) {
    const bool with_banned = banned && !banned->empty();
    auto it = slots_.find(seq);
    if (it != slots_.end() && it->second.banned == with_banned && same_settings(it->second.s, s)) {
        llama_sampler_reset(it->second.chain.get());  // re-seeds the draw: a fresh sequence, as on the host
        return it->second.chain.get();
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)));
    Slot slot{s, with_banned, make_chain(n_vocab, s, banned)};
    // llama.cpp inits the chain for its output device (each sampler runs there up to the first it cannot) and
    // holds a raw pointer: the old chain is freed only after the new one replaced it. It refuses (tensor-split
    // models) by taking any old chain off: the host path then.
    if (!llama_set_sampler(ctx, seq, slot.chain.get())) {
        slots_.erase(seq);
        return nullptr;
    }
    attaches_++;
    llama_sampler * chain = slot.chain.get();
    slots_[seq] = std::move(slot);
    return chain;
}

void DeviceSamplers::detach(llama_context * ctx, int32_t seq) {
    auto it = slots_.find(seq);
    if (it == slots_.end()) return;
    llama_set_sampler(ctx, seq, nullptr);
    slots_.erase(it);
}

void DeviceSamplers::detach_all(llama_context * ctx) {
    for (auto & [seq, slot] : slots_) llama_set_sampler(ctx, seq, nullptr);
    slots_.clear();
}

}  // namespace mf

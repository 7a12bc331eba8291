// Sampling one token per live sequence and step, without making the GPU wait on the CPU.
//
// llama_sampler_sample() copies all n_vocab logits of a row into candidates (152k x 12 bytes for Qwen) before the
// chain runs; temperature then divides every one of them and top-k heap-selects over all of them. At 40 sequences
// that is ~4-15 ms of one CPU thread per step, about as long as a whole decode step of the 7B model on an H100.
// SequenceSampler gives the same chain only the top-k candidates of the row, found by one scan of the floats, and
// SamplerPool runs the rows of a step on a few threads.
#pragma once

#include "types.h"
#include "llama-cpp.h"

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace mf {

using SamplerPtr = llama_sampler_ptr;  // llama.cpp's own (llama-cpp.h)

// One sequence's sampler. Its llama.cpp chain is the one the sequence always had (HF order: temperature, top-k,
// top-p, min-p, then the seeded draw; or greedy), so a seed gives the tokens it gave before the fast paths; only
// the candidates handed to the chain change:
//   greedy, no penalties         -> the first maximum of the row (what the greedy sampler picks);
//   top-k > 0, no penalties      -> the k largest logits, sorted (what top-k keeps; ties at the k-th value aside);
//   otherwise (repeat penalty, top-k off) -> all n_vocab candidates, as llama_sampler_sample() does.
// Distinct SequenceSamplers may sample concurrently (each owns its chain and buffers).
class SequenceSampler {
public:
    SequenceSampler(const llama_vocab * vocab, const SamplingParams & s, const std::vector<int32_t> * banned);
    // A sequence sampled on the device (device_sampling.h): `chain` is attached to the context for its sequence
    // id and owned by DeviceSamplers; the same chain as the host one, so a seed gives the same tokens.
    explicit SequenceSampler(llama_sampler * device_chain) : path_(Path::Device), device_(device_chain) {}
    bool on_device() const { return device_ != nullptr; }
    // `logits`: this sequence's row (n_vocab floats, written in place only for banned tokens).
    int32_t sample(float * logits, int n_vocab);
    // On the device: the token the decode's graph chose for output row `idx` (llama.cpp finishes on the host the
    // samplers its backend lacks, from the candidates the device kept), accepted into the chain.
    int32_t sample_device(llama_context * ctx, int idx);

    // For tests and benchmarks: always hand the chain all n_vocab candidates (today's llama_sampler_sample path).
    static void set_force_full_path(bool on);

private:
    enum class Path { Greedy, TopK, Full, Device };
    Path path_;
    int top_k_ = 0;
    SamplerPtr chain_;
    llama_sampler * device_ = nullptr;  // the attached chain when sampled on the device (DeviceSamplers owns it)
    const std::vector<int32_t> * banned_ = nullptr;  // token ids never sampled (ignore_eos: end-of-generation)
    std::vector<llama_token_data> cur_;
};

// The k largest values of x[0, n) as candidates, sorted by logit, largest first (exposed for the benchmark/tests).
void top_k_candidates(const float * x, int n, int k, std::vector<llama_token_data> & out);

// A few persistent threads that run fn(0..n-1) in parallel and return when all are done. With zero workers (one
// thread in all) it is a plain loop on the caller's thread.
class SamplerPool {
public:
    explicit SamplerPool(int n_threads);
    ~SamplerPool();
    SamplerPool(const SamplerPool &) = delete;
    SamplerPool & operator=(const SamplerPool &) = delete;
    void run(int n, const std::function<void(int)> & fn);
    int threads() const { return (int) workers_.size() + 1; }

private:
    void worker_loop(int id);
    std::vector<std::thread> workers_;
    std::mutex m_;
    std::condition_variable cv_work_, cv_done_;
    const std::function<void(int)> * fn_ = nullptr;
    int n_ = 0, pending_ = 0;
    unsigned generation_ = 0;
    bool stop_ = false;
};

}  // namespace mf

#include "sampling.h"

#include <algorithm>
#include <atomic>
#include <cmath>

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace mf {
namespace {

std::atomic<bool> g_force_full{false};

bool by_logit_desc(const llama_token_data & a, const llama_token_data & b) { return a.logit > b.logit; }

// Whether any of x[0..16) is above thr. SSE2 and NEON are the baselines of x86-64 and arm64, so no build flag is
// needed; GCC does not vectorize the plain loop (control flow), which was 4x slower.
inline bool any_above16(const float * x, float thr) {
#if defined(__SSE2__)
    const __m128 t = _mm_set1_ps(thr);
    const __m128 m = _mm_or_ps(_mm_or_ps(_mm_cmpgt_ps(_mm_loadu_ps(x), t), _mm_cmpgt_ps(_mm_loadu_ps(x + 4), t)),
                               _mm_or_ps(_mm_cmpgt_ps(_mm_loadu_ps(x + 8), t), _mm_cmpgt_ps(_mm_loadu_ps(x + 12), t)));
    return _mm_movemask_ps(m) != 0;
#elif defined(__ARM_NEON)
    const float32x4_t t = vdupq_n_f32(thr);
    const uint32x4_t m = vorrq_u32(vorrq_u32(vcgtq_f32(vld1q_f32(x), t), vcgtq_f32(vld1q_f32(x + 4), t)),
                                   vorrq_u32(vcgtq_f32(vld1q_f32(x + 8), t), vcgtq_f32(vld1q_f32(x + 12), t)));
    return vmaxvq_u32(m) != 0;
#else
    bool any = false;
    for (int j = 0; j < 16; j++) any |= x[j] > thr;
    return any;
#endif
}

}  // namespace

void SequenceSampler::set_force_full_path(bool on) { g_force_full = on; }

// One pass over the row: a block of 16 floats is skipped with one comparison each unless one of them beats the
// current k-th largest; survivors collect in `out`, which is cut back to the k largest whenever it fills up, so the
// threshold rises fast and nearly every block is skipped. Memory-bound: ~n * 4 bytes read once.
void top_k_candidates(const float * x, int n, int k, std::vector<llama_token_data> & out) {
    out.clear();
    if (k <= 0 || n <= 0) return;
    k = std::min(k, n);
    const size_t cap = (size_t) std::max(4 * k, 256);
    out.reserve(cap + 16);
    float thr = -INFINITY;
    auto cut_back = [&]() {
        std::nth_element(out.begin(), out.begin() + (k - 1), out.end(), by_logit_desc);
        out.resize((size_t) k);
        thr = out[(size_t) k - 1].logit;  // the k-th largest so far: only larger values can still enter
    };
    constexpr int W = 16;
    int i = 0;
    for (; i + W <= n; i += W) {
        if (!any_above16(x + i, thr)) continue;
        for (int j = 0; j < W; j++) {
            if (x[i + j] > thr) out.push_back({i + j, x[i + j], 0.0f});
        }
        if (out.size() >= cap) cut_back();
    }
    for (; i < n; i++) {
        if (x[i] > thr) out.push_back({i, x[i], 0.0f});
    }
    if (out.size() > (size_t) k) {
        std::partial_sort(out.begin(), out.begin() + k, out.end(), by_logit_desc);
        out.resize((size_t) k);
    } else {
        std::sort(out.begin(), out.end(), by_logit_desc);
    }
}

SequenceSampler::SequenceSampler(const llama_vocab * vocab, const SamplingParams & s,
                                 const std::vector<int32_t> * banned)
    : chain_(llama_sampler_chain_init(llama_sampler_chain_default_params())), banned_(banned) {
    llama_sampler * c = chain_.get();
    const bool penalties = s.repeat_penalty != 1.0f;
    if (penalties) {
        llama_sampler_chain_add(c, llama_sampler_init_penalties(llama_vocab_n_tokens(vocab), s.repeat_last_n,
                                                               s.repeat_penalty, 0.0f, 0.0f));
    }
    if (s.temperature <= 0.0f) {
        llama_sampler_chain_add(c, llama_sampler_init_greedy());
        path_ = penalties ? Path::Full : Path::Greedy;
        return;
    }
    // HF order (temperature before top-k/top-p), so a given temperature/top_p means what it means in transformers.
    llama_sampler_chain_add(c, llama_sampler_init_temp(s.temperature));
    if (s.top_k > 0) llama_sampler_chain_add(c, llama_sampler_init_top_k(s.top_k));
    if (s.top_p < 1.0f) llama_sampler_chain_add(c, llama_sampler_init_top_p(s.top_p, 1));
    if (s.min_p > 0.0f) llama_sampler_chain_add(c, llama_sampler_init_min_p(s.min_p, 1));
    llama_sampler_chain_add(c, llama_sampler_init_dist(s.seed));
    top_k_ = s.top_k;
    // Dividing by a positive temperature keeps the order, so the k largest raw logits are the k that top-k keeps.
    path_ = (!penalties && s.top_k > 0) ? Path::TopK : Path::Full;
}

int32_t SequenceSampler::sample(float * logits, int n_vocab) {
    if (device_) throw EngineError("a device-sampled sequence was sampled on the host");
    if (banned_) {
        for (int32_t id : *banned_) logits[id] = -INFINITY;
    }
    const Path path = g_force_full ? Path::Full : path_;
    if (path == Path::Greedy) {
        int best = 0;
        for (int i = 1; i < n_vocab; i++) {
            if (logits[i] > logits[best]) best = i;
        }
        llama_sampler_accept(chain_.get(), best);
        return best;
    }
    bool sorted = false;
    if (path == Path::TopK) {
        top_k_candidates(logits, n_vocab, top_k_, cur_);
        sorted = true;
    }
    if (cur_.empty() || path != Path::TopK) {
        // all n_vocab candidates (also when a row of NaN, from absurd audio, left top-k none: llama.cpp's chain
        // then picks as it always did)
        sorted = false;
        cur_.resize((size_t) n_vocab);
        for (int i = 0; i < n_vocab; i++) cur_[(size_t) i] = {i, logits[i], 0.0f};
    }
    llama_token_data_array cur_p = {cur_.data(), cur_.size(), -1, sorted};
    llama_sampler_apply(chain_.get(), &cur_p);
    if (cur_p.selected < 0 || cur_p.selected >= (int64_t) cur_p.size) throw EngineError("the sampler selected no token");
    const int32_t tok = cur_p.data[cur_p.selected].id;
    llama_sampler_accept(chain_.get(), tok);
    return tok;
}

int32_t SequenceSampler::sample_device(llama_context * ctx, int idx) {
    // llama_sampler_sample returns the device's token when the whole chain ran there, else applies the rest of
    // the chain to what the device left (probabilities, logits, or the raw row); it accepts the token either way,
    // which is what advances the seeded draw.
    const llama_token tok = llama_sampler_sample(device_, ctx, idx);
    if (tok < 0) throw EngineError("the device sampler selected no token");
    return tok;
}

SamplerPool::SamplerPool(int n_threads) {
    for (int id = 1; id < n_threads; id++) {
        workers_.emplace_back([this, id]() { worker_loop(id); });
    }
}

SamplerPool::~SamplerPool() {
    {
        std::lock_guard<std::mutex> lk(m_);
        stop_ = true;
    }
    cv_work_.notify_all();
    for (auto & t : workers_) t.join();
}

// Static partition: participant p (0 = the caller) runs items p, p+P, p+2P, ... A worker copies the job under the
// lock and the caller waits for every worker, so no worker can run into the next job's items.
void SamplerPool::run(int n, const std::function<void(int)> & fn) {
    const int P = threads();
    if (P == 1 || n < 2 * P) {
        for (int i = 0; i < n; i++) fn(i);
        return;
    }
    {
        std::lock_guard<std::mutex> lk(m_);
        fn_ = &fn;
        n_ = n;
        pending_ = (int) workers_.size();
        generation_++;
    }
    cv_work_.notify_all();
    for (int i = 0; i < n; i += P) fn(i);
    std::unique_lock<std::mutex> lk(m_);
    cv_done_.wait(lk, [&]() { return pending_ == 0; });
    fn_ = nullptr;
}

// A worker takes part in every job: run() waits for all of them, so none can miss a generation.
void SamplerPool::worker_loop(int id) {
    unsigned seen = 0;
    for (;;) {
        const std::function<void(int)> * fn;
        int n;
        {
            std::unique_lock<std::mutex> lk(m_);
            cv_work_.wait(lk, [&]() { return stop_ || generation_ != seen; });
            if (stop_) return;
            seen = generation_;
            fn = fn_;
            n = n_;
        }
        const int P = threads();
        for (int i = id; i < n; i += P) (*fn)(i);
        {
            std::lock_guard<std::mutex> lk(m_);
            if (--pending_ == 0) cv_done_.notify_all();
        }
    }
}

}  // namespace mf

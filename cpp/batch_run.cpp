#include "batch_run.h"

#include "llama.h"
#include "mtmd.h"

#include <cmath>
#include <cstring>

namespace mf {

namespace {

double ms_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

std::string detokenize(const llama_vocab * vocab, const std::vector<int32_t> & toks, bool special) {
    if (toks.empty()) return "";
    std::string out(toks.size() * 8 + 16, '\0');
    int n = llama_detokenize(vocab, toks.data(), (int32_t) toks.size(), out.data(), (int32_t) out.size(), false, special);
    if (n < 0) {
        out.resize((size_t) -n);
        n = llama_detokenize(vocab, toks.data(), (int32_t) toks.size(), out.data(), (int32_t) out.size(), false, special);
    }
    out.resize((size_t) std::max(n, 0));
    return out;
}

bool all_answered(const TrackRequest & t) {
    return !t.prompts.empty() && std::all_of(t.prompts.begin(), t.prompts.end(), [](const auto & p) { return p.answered; });
}

void validate_track(const TrackRequest & t) {
    if (t.pcm.empty() && all_answered(t)) return;  // text only: the catch-up of follow-ups (cpp/followup.cpp)
    if (t.pcm.empty()) throw InputError("audio is empty");
    if (t.pcm.size() < kMinAudioSamples) {
        throw InputError("audio is too short: " + std::to_string(t.pcm.size()) + " samples (at least " +
                         std::to_string(kMinAudioSamples) + " at 16 kHz are needed)");
    }
    for (float x : t.pcm) {
        if (!std::isfinite(x)) throw InputError("audio contains NaN or infinite samples");
    }
    if (t.pcm.size() > 0xFFFFFFF0u) throw InputError("audio is too long");
    if (t.prompts.empty()) throw InputError("no prompts given");
    for (const auto & p : t.prompts) {
        if (p.max_tokens < 1) throw InputError("max_tokens must be >= 1");
        if (p.text.find('\0') != std::string::npos) throw InputError("prompt text contains a NUL character");
        const auto & s = p.sampling;
        if (!std::isfinite(s.temperature) || !std::isfinite(s.top_p) || !std::isfinite(s.min_p) ||
            !std::isfinite(s.repeat_penalty)) {
            throw InputError("sampling settings must be finite numbers");
        }
        if (s.top_p <= 0.0f || s.top_p > 1.0f) throw InputError("top_p must be in (0, 1]");
        if (s.top_k < 0) throw InputError("top_k must be >= 0");
        if (s.repeat_last_n < 0 || s.repeat_last_n > kMaxRepeatLastN) {
            throw InputError("repeat_last_n must be in 0.." + std::to_string(kMaxRepeatLastN));
        }
    }
}

}  // namespace

BatchRun::BatchRun(EngineResources & res, const RunRequest & request, const InterruptCheck & interrupted,
                   const Limits & lim, const ChatPieces & chat, const NextTrack & next, const TrackDone & done)
    : res_(res), request_(request), interrupted_(interrupted), lim_(lim), chat_(chat), next_(next), done_(done),
      seqs_(lim.fit.n_seq, lim.fit.seqs_per_stream), step_(std::max(lim.fit.n_seq, 1)) {
    n_vocab_ = llama_vocab_n_tokens(llama_model_get_vocab(res_.model.get()));
    planner_ = make_planner(request_.framing,
                            PlannerContext{res_.model.get(), res_.encoder.get(), res_.mtmd.get(), lim_.n_threads}, chat_);
    stats_.tracks_in_flight = lim_.tracks_in_flight;
    stats_.n_ctx = lim_.fit.n_ctx;
    stats_.n_seq = lim_.fit.n_seq;
    stats_.sampling_threads = res_.pool ? res_.pool->threads() : 1;
}

BatchRun::~BatchRun() {
    stop_preparer();
    if (res_.ctx) llama_memory_clear(llama_get_memory(res_.ctx.get()), true);
}

// ---- helper thread ----------------------------------------------------------------------------------------------

// Takes one track from the source and prepares it. Errors of the track (bad audio, encoder failure) travel with it;
// an error of the source itself ends the run (after the tracks in flight).
bool BatchRun::prepare_one(Pending & p) {
    if (!next_(p.req)) return false;
    p.index = n_taken_++;
    try {
        validate_track(p.req);
        const llama_vocab * vocab = llama_model_get_vocab(res_.model.get());
        // certain to fail at admission (the prefix's lower bound already does not fit): say so before encoding
        p.shape = shape_track(vocab, chat_, p.req.pcm.size(), p.req.prompts);
        p.fu = plan_followups(vocab, chat_, p.req.prompts, lim_.fit.n_ctx_train);  // checks them (followup.h)
        require_fits(p.shape, lim_.fit);
        const bool text_only = p.req.pcm.empty();  // every prompt answered: only follow-ups to ask
        auto t0 = Clock::now();
        p.px = text_only ? planner_->prepare_text() : planner_->prepare(p.req.pcm);
        const double ms = ms_between(t0, Clock::now());
        {
            std::lock_guard<std::mutex> lk(m_);
            prepare_ms_ += ms;
        }
        p.shape.prefix_positions = p.shape.prefix_bound = p.px.n_pos;  // exact now
    } catch (...) {
        p.error = std::current_exception();
    }
    return true;
}

void BatchRun::preparer_loop() {
    const size_t lookahead = 2;  // encoded tracks waiting at most (host memory: ~54 MB each for 150 s of audio)
    for (;;) {
        {
            std::unique_lock<std::mutex> lk(m_);
            cv_space_.wait(lk, [&]() { return stop_ || ready_.size() < lookahead; });
            if (stop_) return;
        }
        Pending p;
        bool more = false;
        std::exception_ptr source_error;
        try {
            more = prepare_one(p);
        } catch (...) {
            source_error = std::current_exception();
        }
        std::lock_guard<std::mutex> lk(m_);
        if (source_error) {
            source_error_ = source_error;
            source_done_ = true;
        } else if (!more) {
            source_done_ = true;
        } else {
            ready_.push_back(std::move(p));
        }
        cv_ready_.notify_all();
        if (source_done_) return;
    }
}

void BatchRun::stop_preparer() {
    {
        std::lock_guard<std::mutex> lk(m_);
        stop_ = true;
    }
    cv_space_.notify_all();
    if (preparer_.joinable()) preparer_.join();
}

// The next prepared track, in source order. Without prepare_ahead it is prepared here, on the decode thread.
bool BatchRun::take_ready(Pending & out, bool block) {
    if (!lim_.prepare_ahead) {
        if (source_done_) return false;
        Pending p;
        bool more;
        try {
            more = prepare_one(p);
        } catch (...) {
            source_error_ = std::current_exception();
            more = false;
        }
        if (!more) {
            source_done_ = true;
            return false;
        }
        out = std::move(p);
        return true;
    }
    std::unique_lock<std::mutex> lk(m_);
    if (block) {
        auto t0 = Clock::now();
        cv_ready_.wait(lk, [&]() { return !ready_.empty() || source_done_; });
        stats_.wait_ms += ms_between(t0, Clock::now());
    }
    if (ready_.empty()) return false;
    out = std::move(ready_.front());
    ready_.pop_front();
    cv_space_.notify_all();
    return true;
}

// ---- decode thread ----------------------------------------------------------------------------------------------

void BatchRun::decode_embd(const float * embd, int n_tokens, int32_t seq, int32_t & n_past) {
    const int n_embd = llama_model_n_embd_inp(res_.model.get());
    Batch b(lim_.n_batch, n_embd);
    for (int off = 0; off < n_tokens; off += lim_.n_batch) {
        const int n = std::min(lim_.n_batch, n_tokens - off);
        b.clear();
        for (int i = 0; i < n; i++) b.add(0, n_past + i, seq, false, embd + (size_t) (off + i) * n_embd);
        if (llama_decode(res_.ctx.get(), b.b)) throw EngineError("llama.cpp failed to decode the audio embeddings");
        n_past += n;
    }
}

void BatchRun::decode_tokens(const std::vector<int32_t> & toks, int32_t seq, int32_t & n_past) {
    Batch b(lim_.n_batch);
    for (size_t off = 0; off < toks.size(); off += (size_t) lim_.n_batch) {
        b.clear();
        for (size_t i = off; i < std::min(toks.size(), off + (size_t) lim_.n_batch); i++) b.add(toks[i], n_past++, seq, false);
        if (llama_decode(res_.ctx.get(), b.b)) throw EngineError("llama.cpp failed to evaluate the prompt prefix");
    }
}

int32_t BatchRun::eval_prefix(const PreparedPrefix & px, int32_t seq) {
    int32_t n_past = 0;
    for (const auto & piece : px.pieces) {
        if (piece.n_embd_tokens > 0) {
            decode_embd(piece.embd.data(), piece.n_embd_tokens, seq, n_past);
        } else {
            decode_tokens(piece.tokens, seq, n_past);
        }
        if (interrupted_ && interrupted_()) throw Interrupted("interrupted");
    }
    return n_past;
}

// A track that failed alone: its exception goes to the sink as thrown (an interruption ends the whole run).
void BatchRun::fail(size_t index, const std::exception_ptr & e, GenerateResult res) {
    try {
        std::rethrow_exception(e);
    } catch (const Interrupted &) {
        throw;
    } catch (...) {
    }
    res.error = e;
    stats_.tracks++;
    stats_.tracks_failed++;
    done_(index, std::move(res));
}

// Prefill of one prepared track: its prefix into its first sequence, forked to one sequence per prompt, the prompt
// suffixes decoded together, first tokens sampled into the next step. Throws when the track cannot fit this run
// (plan.h's rule, now with its exact prefix); false when its cells or sequences are not free now (the caller
// retries after a retire).
bool BatchRun::admit(Pending & p) {
    require_fits(p.shape, lim_.fit);
    if (!has_room(p)) return false;
    Active a = start(p);
    const int step_mark = step_.b.n_tokens;  // first tokens this track queues go after this
    try {
        prefill(a, p);
    } catch (const Interrupted &) {
        throw;
    } catch (...) {
        step_.b.n_tokens = step_mark;
        release(a);
        throw;
    }
    a.res.stats.prefill_ms = ms_between(a.t_start, Clock::now());
    if (request_.debug && a.index == 0) keep_debug(a, p);
    reserved_cells_ += a.cells;
    active_.push_back(std::move(a));
    stats_.peak_in_flight = std::max(stats_.peak_in_flight, (int) active_.size());
    return true;
}

// Free sequences for every prompt and follow-up and, in a unified cache, free cells for everything the track can ever need (a
// stream per sequence: a free sequence is a free stream; a stream per track: a free stream, the track checked to fit it).
bool BatchRun::has_room(const Pending & p) const {
    if (!seqs_.can_take(p.req.prompts.size() + p.fu.parent.size())) return false;
    return lim_.fit.seq_cells > 0 || lim_.fit.stream_cells > 0 || reserved_cells_ + p.shape.cells() <= lim_.fit.n_ctx;
}

BatchRun::Active BatchRun::start(Pending & p) {
    Active a;
    a.index = p.index;
    a.t_start = Clock::now();
    a.cells = (int) p.shape.cells();
    GenerateStats & st = a.res.stats;
    st.audio_seconds = (double) p.req.pcm.size() / kSampleRate;
    st.n_ctx = lim_.fit.n_ctx;
    st.audio_chunks = p.px.audio_chunks;
    st.audio_tokens = p.px.audio_tokens;
    st.prefix_tokens = p.px.n_pos;
    st.mel_ms = p.px.mel_ms;
    st.encode_ms = p.px.encode_ms;
    st.prompt_tokens = p.shape.suffix_tokens();
    a.seqs = seqs_.take(p.req.prompts.size() + p.fu.parent.size());  // a sequence per prompt and follow-up
    return a;
}

void BatchRun::release(Active & a) {
    llama_memory_t mem = llama_get_memory(res_.ctx.get());
    for (auto s : a.seqs) llama_memory_seq_rm(mem, s, -1, -1);
    seqs_.give_back(a.seqs);
}

void BatchRun::prefill(Active & a, Pending & p) {
    const size_t n_prompts = p.req.prompts.size();
    const llama_vocab * vocab = llama_model_get_vocab(res_.model.get());
    const int32_t n_past = eval_prefix(p.px, a.seqs[0]);
    for (size_t i = 1; i < n_prompts; i++) llama_memory_seq_cp(llama_get_memory(res_.ctx.get()), a.seqs[0], a.seqs[i], -1, -1);
    for (size_t i = 0; i < n_prompts; i++) {
        a.pos.push_back(n_past + (int32_t) p.shape.suffix[i].size());
        const auto & sp = p.req.prompts[i].sampling;
        a.samplers.push_back(std::make_unique<SequenceSampler>(vocab, sp, sp.ignore_eos ? &res_.eog_ids : nullptr));
    }
    a.req = std::move(p.req);
    a.res.outputs.resize(n_prompts);
    a.live.assign(n_prompts, true);
    a.logit_idx.assign(n_prompts, -1);
    a.n_live = n_prompts;
    open_followup_slots(a, std::move(p.fu));
    decode_prompts(a, p, n_past);
}

// First tokens: sampled right after the decode that produced their logits (a later decode overwrites them).
void BatchRun::sample_first(Active & a, size_t i, int logits_row) {
    if (a.req.prompts[i].answered) return take_answer(a, i);  // nothing to sample (followup.h)
    float * lg = llama_get_logits_ith(res_.ctx.get(), logits_row);
    if (request_.debug && a.index == 0 && i == 0) a.res.first_logits.assign(lg, lg + n_vocab_);
    a.logit_idx[i] = -1;
    accept(a, i, a.samplers[i]->sample(lg, n_vocab_));
}

// The prompt suffixes after the shared prefix: together in one batch, one logits row each, or (longer together
// than a batch) one prompt at a time, its last token alone for its logits.
void BatchRun::decode_prompts(Active & a, const Pending & p, int32_t n_past) {
    const auto & suffix = p.shape.suffix;
    const int total = a.res.stats.prompt_tokens;
    if (total <= lim_.n_batch) {
        Batch prompts(std::max(total, 1));
        std::vector<int> rows;
        for (size_t i = 0; i < suffix.size(); i++) {
            for (size_t k = 0; k < suffix[i].size(); k++) {
                const bool last = k + 1 == suffix[i].size();
                const int idx = prompts.add(suffix[i][k], n_past + (int32_t) k, a.seqs[i], last);
                if (last) rows.push_back(idx);
            }
        }
        if (llama_decode(res_.ctx.get(), prompts.b)) throw EngineError("llama.cpp failed to evaluate the prompts");
        a.t_decode = Clock::now();
        for (size_t i = 0; i < suffix.size(); i++) sample_first(a, i, rows[i]);
        return;
    }
    for (size_t i = 0; i < suffix.size(); i++) {
        std::vector<int32_t> head(suffix[i].begin(), suffix[i].end() - 1);
        int32_t pos = n_past;
        decode_tokens(head, a.seqs[i], pos);
        Batch last(1);
        last.add(suffix[i].back(), pos, a.seqs[i], true);
        if (llama_decode(res_.ctx.get(), last.b)) throw EngineError("llama.cpp failed to evaluate the prompts");
        sample_first(a, i, 0);
    }
    a.t_decode = Clock::now();
}

// With `debug`, for the first track: the audio as fed, and prompt 0's tokens with -1 per audio position.
void BatchRun::keep_debug(Active & a, const Pending & p) const {
    auto & pt = a.res.prompt_tokens;
    for (const auto & piece : p.px.pieces) {
        a.res.audio_embd.insert(a.res.audio_embd.end(), piece.embd.begin(), piece.embd.end());
        if (piece.n_embd_tokens > 0) {
            pt.insert(pt.end(), (size_t) piece.n_embd_tokens, -1);
        } else {
            pt.insert(pt.end(), piece.tokens.begin(), piece.tokens.end());
        }
    }
    pt.insert(pt.end(), p.shape.suffix[0].begin(), p.shape.suffix[0].end());
}

// Admits prepared tracks while there is room. Blocks for the helper thread only when nothing else can run.
void BatchRun::admit_ready(bool block) {
    while ((int) active_.size() < lim_.tracks_in_flight) {
        if (!have_next_) {
            if (!take_ready(next_pending_, block && active_.empty())) return;
            have_next_ = true;
        }
        if (next_pending_.error) {
            have_next_ = false;
            fail(next_pending_.index, next_pending_.error);
            continue;
        }
        bool admitted;
        try {
            admitted = admit(next_pending_);
        } catch (const Interrupted &) {
            throw;
        } catch (...) {
            have_next_ = false;
            fail(next_pending_.index, std::current_exception());
            continue;
        }
        if (!admitted) return;  // no room until a track retires
        have_next_ = false;
        start_followups();  // answers known or ended on their first token
        retire();  // a track whose prompts all ended on their first token
    }
}

// Queues a sampled token for the next step, or ends the sequence (end of generation or its token limit).
void BatchRun::accept(Active & a, size_t i, int32_t tok) {
    const llama_vocab * vocab = llama_model_get_vocab(res_.model.get());
    PromptOutput & out = a.res.outputs[i];
    if (llama_vocab_is_eog(vocab, tok)) {
        out.stop_reason = "eog";
    } else {
        out.tokens.push_back(tok);
        a.res.stats.tokens_generated++;
        if ((int) out.tokens.size() < a.limit[i]) {
            a.logit_idx[i] = step_.add(tok, a.pos[i]++, a.seqs[i], true);
            return;
        }
        out.stop_reason = "max_tokens";
    }
    a.live[i] = false;
    a.n_live--;
}

// Samples every live sequence from the last step's logits. The logits pointers are fetched here (the first one
// waits for the GPU); the rows are then sampled on the pool's threads, each sampler by one thread.
void BatchRun::sample_step() {
    struct Row { Active * a; size_t i; float * logits; int32_t tok; };
    std::vector<Row> rows;
    for (auto & a : active_) {
        for (size_t i = 0; i < a.live.size(); i++) {
            if (a.live[i]) rows.push_back({&a, i, llama_get_logits_ith(res_.ctx.get(), a.logit_idx[i]), -1});
        }
    }
    auto t0 = Clock::now();
    std::vector<std::exception_ptr> errors(rows.size());  // an exception must not leave a pool thread
    auto sample_row = [&](int r) {
        Row & row = rows[(size_t) r];
        try {
            row.tok = row.a->samplers[row.i]->sample(row.logits, n_vocab_);
        } catch (...) {
            errors[(size_t) r] = std::current_exception();
        }
    };
    if (res_.pool) {
        res_.pool->run((int) rows.size(), sample_row);
    } else {
        for (int r = 0; r < (int) rows.size(); r++) sample_row(r);
    }
    stats_.sample_ms += ms_between(t0, Clock::now());
    for (const auto & e : errors) {
        if (e) std::rethrow_exception(e);
    }
    for (auto & r : rows) accept(*r.a, r.i, r.tok);
}

// Frees the cells and sequences of finished tracks and hands their results to the sink.
void BatchRun::retire() {
    llama_memory_t mem = llama_get_memory(res_.ctx.get());
    const llama_vocab * vocab = llama_model_get_vocab(res_.model.get());
    for (size_t k = 0; k < active_.size();) {
        Active & a = active_[k];
        if (a.n_live > 0) { k++; continue; }
        for (auto s : a.seqs) llama_memory_seq_rm(mem, s, -1, -1);
        seqs_.give_back(a.seqs);
        reserved_cells_ -= a.cells;
        GenerateStats & st = a.res.stats;
        const auto now = Clock::now();
        st.decode_ms = ms_between(a.t_decode, now);
        st.decode_tokens_per_s = st.decode_ms > 0 ? st.tokens_generated / (st.decode_ms / 1000.0) : 0.0;
        st.total_ms = ms_between(a.t_start, now);
        nest_followups(a);
        for (auto & o : a.res.outputs) {
            o.text = detokenize(vocab, o.tokens, request_.render_special);
            for (auto & f : o.followups) f.text = detokenize(vocab, f.tokens, request_.render_special);
        }
        const size_t index = a.index;
        GenerateResult res = std::move(a.res);
        active_.erase(active_.begin() + (long) k);
        stats_.tracks++;
        done_(index, std::move(res));
    }
}

// One llama_decode for every live sequence. per_track: padded so the step is one ubatch (kv_layout.h).
void BatchRun::decode_step() {
    const auto pads = lim_.fit.seqs_per_stream > 0 ? pad_streams(step_.b, lim_.fit.seqs_per_stream)
                                                   : std::vector<int32_t>{};
    const int rc = llama_decode(res_.ctx.get(), step_.b);
    drop_padding(res_.ctx.get(), pads);
    if (rc) throw EngineError("llama.cpp failed during generation");
    llama_synchronize(res_.ctx.get());  // the GPU's time belongs to the step, not to the next sampling
}

RunStats BatchRun::run() {
    const auto t_run = Clock::now();
    llama_memory_clear(llama_get_memory(res_.ctx.get()), true);
    if (lim_.prepare_ahead) preparer_ = std::thread([this]() { preparer_loop(); });

    auto t_host = Clock::now();  // start of the host work before the next step
    for (;;) {
        step_.clear();
        sample_step();
        start_followups();
        retire();
        const auto t_admit = Clock::now();
        const double wait_before = stats_.wait_ms;
        admit_ready(/*block*/ true);
        const double admit_ms = ms_between(t_admit, Clock::now()) - (stats_.wait_ms - wait_before);
        stats_.admit_ms += admit_ms;
        if (step_.b.n_tokens == 0) {
            if (active_.empty() && !have_next_) {
                std::lock_guard<std::mutex> lk(m_);
                if (source_done_ && ready_.empty()) break;
            }
            t_host = Clock::now();
            continue;
        }
        if (interrupted_ && interrupted_()) throw Interrupted("interrupted");
        const auto t_dec = Clock::now();
        const double host_ms = ms_between(t_host, t_dec) - admit_ms - (stats_.wait_ms - wait_before);
        const int n_step = step_.b.n_tokens;  // the sequences' tokens, before any padding
        decode_step();
        t_host = Clock::now();
        const double dec_ms = ms_between(t_dec, t_host);
        stats_.steps++;
        stats_.step_tokens += n_step;
        stats_.decode_ms += dec_ms;
        stats_.host_ms += host_ms;
        if (request_.profile) {
            stats_.step_batch.push_back(n_step);
            stats_.step_host_ms.push_back((float) host_ms);
            stats_.step_decode_ms.push_back((float) dec_ms);
        }
    }
    stop_preparer();
    stats_.prepare_ms = prepare_ms_;
    stats_.wall_ms = ms_between(t_run, Clock::now());
    if (source_error_) std::rethrow_exception(source_error_);
    return stats_;
}

}  // namespace mf

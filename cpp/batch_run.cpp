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
    if (!lim_.prepare_ahead) lim_.side = nullptr;  // the prefill thread takes what the helper thread encoded
    planner_ = make_planner(request_.framing,
                            PlannerContext{res_.model.get(), res_.encoder.get(), res_.mtmd.get(), lim_.n_threads}, chat_);
    stats_.tracks_in_flight = lim_.tracks_in_flight;
    stats_.n_ctx = lim_.fit.n_ctx;
    stats_.n_seq = lim_.fit.n_seq;
    stats_.sampling_threads = res_.pool ? res_.pool->threads() : 1;
    if (lim_.sampling == DeviceSampling::Off) res_.device.detach_all(res_.ctx.get());  // a previous run's chains
    stats_.sampler_attaches = -res_.device.attaches();  // this run's: the counter's value at the end minus now
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

// The prefix into the second context, on the prefill thread, so the decode thread only installs its cells.
// Anything that goes wrong here leaves the track to today's path (prefilled at admission): a failure of the side
// path costs time, never a track. Stopping the run (stop_) ends it between two batches (Interrupted).
void BatchRun::prefill_beside(Pending & p) {
    if (p.error || p.req.pcm.empty() || !lim_.side->fits(p.px)) return;  // failed, text only, or too long for it
    try {
        p.cells = lim_.side->run(p.px, [this]() {
            std::lock_guard<std::mutex> lk(m_);
            return stop_;
        });
    } catch (const Interrupted &) {
        throw;
    } catch (const std::exception &) {
        p.cells = PrefixCells{};  // counted at admission (RunStats::prefill_fallbacks)
    }
}

// Encoded tracks go to the prefill thread when there is one (one waits there at most), else straight to the
// decode thread (two wait at most: host memory, ~54 MB each for 150 s of audio).
void BatchRun::preparer_loop() {
    const bool staged = lim_.side != nullptr;
    std::deque<Pending> & out = staged ? encoded_ : ready_;
    const size_t lookahead = staged ? 1 : 2;
    for (;;) {
        {
            std::unique_lock<std::mutex> lk(m_);
            cv_space_.wait(lk, [&]() { return stop_ || out.size() < lookahead; });
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
        if (source_error) source_error_ = source_error;
        if (more && !source_error) out.push_back(std::move(p));
        const bool done = source_error || !more;
        if (done) (staged ? encoded_done_ : source_done_) = true;
        cv_ready_.notify_all();
        cv_space_.notify_all();  // the prefill thread waits on it too
        if (done) return;
    }
}

// The prefill thread: the encoded tracks' prefixes into the second context, in source order, while the decode
// thread steps and the helper thread encodes the next track (a thread of its own, so encoding and prefill overlap:
// on one thread their sum, not the larger, would bound tracks per second). Two prefilled tracks wait at most (host
// memory: ~220 MB of cells each for 150 s on the 8B model).
void BatchRun::prefiller_loop() {
    const size_t lookahead = 2;
    for (;;) {
        Pending p;
        {
            std::unique_lock<std::mutex> lk(m_);
            cv_space_.wait(lk, [&]() {
                return stop_ || (!encoded_.empty() && ready_.size() < lookahead) || (encoded_.empty() && encoded_done_);
            });
            if (stop_) return;
            if (encoded_.empty()) {  // the source is done and every track it gave went on
                source_done_ = true;
                cv_ready_.notify_all();
                return;
            }
            p = std::move(encoded_.front());
            encoded_.pop_front();
        }
        cv_space_.notify_all();  // the helper thread may encode the next
        try {
            prefill_beside(p);
        } catch (...) {
            return;  // Interrupted: the run is stopping (stop_)
        }
        std::lock_guard<std::mutex> lk(m_);
        ready_.push_back(std::move(p));
        cv_ready_.notify_all();
    }
}

void BatchRun::stop_preparer() {
    {
        std::lock_guard<std::mutex> lk(m_);
        stop_ = true;
    }
    cv_space_.notify_all();
    if (preparer_.joinable()) preparer_.join();
    if (prefiller_.joinable()) prefiller_.join();
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

void BatchRun::decode_tokens(const std::vector<int32_t> & toks, int32_t seq, int32_t & n_past) {
    mf::decode_tokens(res_.ctx.get(), toks, seq, n_past, lim_.n_batch);
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
    reserved_cells_ += a.cells;  // before prefill: an answer ending on its first token gives its cells back
    try {
        prefill(a, p);
    } catch (const Interrupted &) {
        throw;
    } catch (...) {
        step_.b.n_tokens = step_mark;
        reserved_cells_ -= a.cells;
        release(a);
        throw;
    }
    a.res.stats.prefill_ms = ms_between(a.t_start, Clock::now());
    if (request_.debug && a.index == 0) keep_debug(a, p);
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

// The pool hands ids out lowest first, in order (kv_layout.h), so the next track's prompt i usually gets this
// track's sequence of prompt i, and a device sampler chain attached there for the same settings is reused
// (cpp/device_sampling.h).
void BatchRun::release(Active & a) {
    llama_memory_t mem = llama_get_memory(res_.ctx.get());
    for (auto s : a.seqs) llama_memory_seq_rm(mem, s, -1, -1);
    seqs_.give_back(a.seqs);
}

void BatchRun::prefill(Active & a, Pending & p) {
    const size_t n_prompts = p.req.prompts.size();
    const int32_t n_past = place_prefix(p, a.seqs[0]);
    for (size_t i = 1; i < n_prompts; i++) llama_memory_seq_cp(llama_get_memory(res_.ctx.get()), a.seqs[0], a.seqs[i], -1, -1);
    for (size_t i = 0; i < n_prompts; i++) {
        a.pos.push_back(n_past + (int32_t) p.shape.suffix[i].size());
        a.samplers.push_back(make_sampler(a.seqs[i], p.req.prompts[i].sampling));
        // the cells only this prompt's sequence holds (plan.h: TrackShape::cells); a prompt with follow-ups keeps
        // them, its follow-ups continue its sequence
        const bool alone = p.req.prompts[i].followups.empty();
        a.own_cells.push_back(alone ? (int) p.shape.suffix[i].size() + std::max(p.shape.max_tokens[i], 0) : 0);
    }
    a.req = std::move(p.req);
    a.res.outputs.resize(n_prompts);
    a.live.assign(n_prompts, true);
    a.logit_idx.assign(n_prompts, -1);
    a.n_live = n_prompts;
    open_followup_slots(a, std::move(p.fu));
    decode_prompts(a, p, n_past);
}

// The prefix into the track's first sequence: its cells from the side context when it was prefilled there, else
// evaluated here as before (also when llama.cpp refuses the handover: the side path is only ever a shortcut).
int32_t BatchRun::place_prefix(Pending & p, int32_t seq) {
    const bool tried = lim_.side && !p.req.pcm.empty();
    if (install_prefix(res_.ctx.get(), p.cells, seq)) {
        const int32_t n_pos = p.cells.n_pos;
        stats_.prefill_beside++;
        stats_.prefill_beside_ms += p.cells.ms;
        p.cells = PrefixCells{};  // ~220 MB of host memory for a 150 s track on the 8B model
        return n_pos;
    }
    p.cells = PrefixCells{};
    if (tried) stats_.prefill_fallbacks++;
    return eval_prefix(res_.ctx.get(), p.px, seq, lim_.n_batch, interrupted_);
}

// First tokens: sampled right after the decode that produced their logits (a later decode overwrites them).
void BatchRun::sample_first(Active & a, size_t i, int logits_row) {
    if (a.req.prompts[i].answered) return take_answer(a, i);  // nothing to sample (followup.h)
    if (request_.debug && a.index == 0 && i == 0) {  // debug samples on the host (Engine::device_sampling_for)
        const float * lg = llama_get_logits_ith(res_.ctx.get(), logits_row);
        a.res.first_logits.assign(lg, lg + n_vocab_);
    }
    a.logit_idx[i] = -1;
    accept(a, i, sample_row(a, i, logits_row));
}

// On the device when the run allows it and the settings are ones the device reproduces; otherwise the host fast
// path, with any chain a previous track left on this sequence id taken off the context.
std::unique_ptr<SequenceSampler> BatchRun::make_sampler(int32_t seq, const SamplingParams & sp) {
    const std::vector<int32_t> * banned = sp.ignore_eos ? &res_.eog_ids : nullptr;
    if (lim_.sampling != DeviceSampling::Off) {
        if (device_sampling_refusal(sp).empty()) {
            if (llama_sampler * chain = res_.device.attach(res_.ctx.get(), seq, sp, banned)) {
                return std::make_unique<SequenceSampler>(chain);
            }
        }
        res_.device.detach(res_.ctx.get(), seq);
    }
    return std::make_unique<SequenceSampler>(llama_model_get_vocab(res_.model.get()), sp, banned);
}

int32_t BatchRun::sample_row(Active & a, size_t i, int row) {
    SequenceSampler & s = *a.samplers[i];
    if (s.on_device()) {
        stats_.device_sampled++;
        return s.sample_device(res_.ctx.get(), row);
    }
    return s.sample(llama_get_logits_ith(res_.ctx.get(), row), n_vocab_);
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
    while (may_admit()) {
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

// Up to tracks_in_flight tracks; with a live-answers target, more (up to max_tracks) while fewer answers than the
// target are live. Waiting follow-ups count as live: their answers are still to come. Cells are has_room's.
bool BatchRun::may_admit() const {
    if ((int) active_.size() < lim_.tracks_in_flight) return true;
    if (lim_.live_answers <= 0 || (int) active_.size() >= lim_.max_tracks) return false;
    size_t live = 0;
    for (const auto & a : active_) live += a.n_live;
    return live < (size_t) lim_.live_answers;
}

// An answer ended: a prompt without follow-ups gives its own cells back (its suffix and generated tokens; the
// prefix stays with the track's other sequences), so another track can be admitted before this one retires.
void BatchRun::end_answer(Active & a, size_t i) {
    a.live[i] = false;
    a.n_live--;
    if (i >= a.own_cells.size() || a.own_cells[i] == 0) return;
    llama_memory_seq_rm(llama_get_memory(res_.ctx.get()), a.seqs[i], -1, -1);
    reserved_cells_ -= a.own_cells[i];
    a.cells -= a.own_cells[i];
    a.own_cells[i] = 0;
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
    end_answer(a, i);
}

// Samples every live sequence from the last step's logits. The logits pointers are fetched here (the first one
// waits for the GPU); the rows are then sampled on the pool's threads, each sampler by one thread. Rows sampled on
// the device are only read back, here (their token is all that was copied).
void BatchRun::sample_step() {
    struct Row { Active * a; size_t i; float * logits; int32_t tok; };
    std::vector<Row> rows;
    auto t0 = Clock::now();
    for (auto & a : active_) {
        for (size_t i = 0; i < a.live.size(); i++) {
            if (!a.live[i]) continue;
            if (a.samplers[i]->on_device()) {
                rows.push_back({&a, i, nullptr, sample_row(a, i, a.logit_idx[i])});
            } else {
                rows.push_back({&a, i, llama_get_logits_ith(res_.ctx.get(), a.logit_idx[i]), -1});
            }
        }
    }
    std::vector<std::exception_ptr> errors(rows.size());  // an exception must not leave a pool thread
    auto sample_on_host = [&](int r) {
        Row & row = rows[(size_t) r];
        if (!row.logits) return;  // sampled on the device
        try {
            row.tok = row.a->samplers[row.i]->sample(row.logits, n_vocab_);
        } catch (...) {
            errors[(size_t) r] = std::current_exception();
        }
    };
    if (res_.pool) {
        res_.pool->run((int) rows.size(), sample_on_host);
    } else {
        for (int r = 0; r < (int) rows.size(); r++) sample_on_host(r);
    }
    stats_.sample_ms += ms_between(t0, Clock::now());
    for (const auto & e : errors) {
        if (e) std::rethrow_exception(e);
    }
    for (auto & r : rows) accept(*r.a, r.i, r.tok);
}

// Frees the cells and sequences of finished tracks and hands their results to the sink.
void BatchRun::retire() {
    const llama_vocab * vocab = llama_model_get_vocab(res_.model.get());
    for (size_t k = 0; k < active_.size();) {
        Active & a = active_[k];
        if (a.n_live > 0) { k++; continue; }
        release(a);
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
    if (lim_.prepare_ahead && lim_.side) prefiller_ = std::thread([this]() { prefiller_loop(); });

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
    stats_.sampler_attaches += res_.device.attaches();
    if (source_error_) std::rethrow_exception(source_error_);
    return stats_;
}

}  // namespace mf

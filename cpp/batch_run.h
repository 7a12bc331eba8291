// Continuous batching over tracks (one Engine::run call). Internal to the engine.
//
//   helper thread:  next track from the source -> plan + encode its audio (PrefixPlanner) -> ready queue
//                   (with prefill beside: -> the prefill thread -> ready queue)
//   prefill thread: (beside only) its prefix evaluated in a second context, copied out (prefill_context.h)
//   decode thread:  admit (the prefix: installed from the second context, or evaluated here; fork one sequence per
//                   prompt, decode the prompt suffixes, first tokens)
//                   step  (sample every live sequence, one llama_decode for all of them)
//                   retire (free a finished track's cells and sequences, hand its result to the sink)
//
// A track is admitted only when the KV cells it can ever need (prefix + every prompt's suffix and token limit) are
// free, so a running track never runs out of cells; a track that cannot fit even alone fails alone. An answer that
// ends (without follow-ups to ask) gives its own cells back at once. Tracks are admitted up to tracks_in_flight;
// with a live-answers target (issue 18 item 3) also past it, up to max_tracks, while fewer answers than the target
// are live: when a track's short answers end early, the next track fills the step instead of waiting for the
// track's longest answer.
#pragma once

#include "followup.h"
#include "kv_layout.h"
#include "plan.h"
#include "prefill_context.h"
#include "prefix.h"
#include "resources.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

struct llama_context;
struct llama_model;
struct mtmd_context;

namespace mf {

class BatchRun {
public:
    struct Limits {
        int tracks_in_flight;  // tracks decoding together at most (the plan's, after allocation)
        RunLimits fit;         // what every track must fit: the model's and the allocated context's (plan.h)
        int n_batch;
        bool prepare_ahead;
        int n_threads;         // CPU threads of the log-mel and the encoder
        DeviceSampling sampling;  // On or Off (the engine resolves Auto)
        SidePrefill * side = nullptr;  // prefixes on a prefill thread (null, or no prepare_ahead: decode thread)
        int live_answers = 0;  // admit past tracks_in_flight while fewer answers are live (0: never)
        int max_tracks = 0;    // tracks at most with live_answers (the context's sequences allow them)
    };
    BatchRun(EngineResources & res, const RunRequest & request, const InterruptCheck & interrupted,
             const Limits & lim, const ChatPieces & chat, const NextTrack & next, const TrackDone & done);
    ~BatchRun();
    RunStats run();

private:
    using Clock = std::chrono::steady_clock;

    // A track taken from the source, its prefix encoded (or the error that stopped it).
    struct Pending {
        size_t index = 0;
        TrackRequest req;
        PreparedPrefix px;
        TrackShape shape;  // per prompt: suffix tokens and token limit; the prefix exact once encoded
        FollowUpPlan fu;   // its follow-up questions (cpp/followup.cpp)
        PrefixCells cells; // its prefix prefilled beside (empty: prefilled at admission)
        std::exception_ptr error;
    };
    struct Active {
        size_t index;
        TrackRequest req;
        GenerateResult res;
        std::vector<int32_t> seqs;
        std::vector<std::unique_ptr<SequenceSampler>> samplers;
        std::vector<int> logit_idx;   // row of the last decode's logits for each live sequence
        std::vector<int32_t> pos;
        std::vector<bool> live;
        size_t n_live = 0;
        int cells = 0;
        Clock::time_point t_start, t_decode;
        // Slots (seqs, samplers, pos, live, outputs) are the prompts', then one per follow-up (cpp/followup.cpp).
        std::vector<int> limit;      // per slot: its token limit
        std::vector<bool> waiting;   // per slot: a follow-up whose answer has not ended yet
        std::vector<int> own_cells;  // per prompt: cells given back when its answer ends (0: kept, follow-ups)
        FollowUpPlan fu;
    };

    // helper thread (or inline without prepare_ahead)
    void preparer_loop();
    void prefiller_loop();                        // prefill beside: encoded -> prefilled, in source order
    bool prepare_one(Pending & p);                // false: the source is exhausted
    bool take_ready(Pending & out, bool block);   // next prepared track, in source order
    void stop_preparer();

    // decode thread
    void admit_ready(bool block);
    bool may_admit() const;                       // tracks_in_flight, or the live-answers target
    bool admit(Pending & p);                      // false: no room now (retry after a retire)
    bool has_room(const Pending & p) const;
    Active start(Pending & p);                    // the track's stats and sequences
    void prefill(Active & a, Pending & p);        // prefix, forks, prompt suffixes, first tokens
    void decode_prompts(Active & a, const Pending & p, int32_t n_past);
    void sample_first(Active & a, size_t i, int logits_row);
    void release(Active & a);                     // a track's sequences back, its cells cleared
    void keep_debug(Active & a, const Pending & p) const;
    int32_t place_prefix(Pending & p, int32_t seq);  // installed from the side context, or evaluated here
    void prefill_beside(Pending & p);             // prefill thread: p.cells, or nothing when it cannot
    void decode_tokens(const std::vector<int32_t> & toks, int32_t seq, int32_t & n_past);
    void end_answer(Active & a, size_t i);        // a slot's answer ended: its own cells back
    void sample_step();
    // the sampler of a sequence: its chain attached on the device, or the host fast path (cpp/device_sampling.h)
    std::unique_ptr<SequenceSampler> make_sampler(int32_t seq, const SamplingParams & sp);
    int32_t sample_row(Active & a, size_t i, int row);  // one sequence's token from row `row` of the last decode
    void decode_step();
    void accept(Active & a, size_t i, int32_t tok);
    void retire();
    // follow-ups (cpp/followup.cpp)
    void open_followup_slots(Active & a, FollowUpPlan && fu);
    void take_answer(Active & a, size_t i);
    void start_followups();
    void nest_followups(Active & a);
    void fail(size_t index, const std::exception_ptr & e, GenerateResult res = {});

    EngineResources & res_;
    const RunRequest & request_;
    const InterruptCheck & interrupted_;
    Limits lim_;
    ChatPieces chat_;
    const NextTrack & next_;
    const TrackDone & done_;
    std::unique_ptr<PrefixPlanner> planner_;
    int n_vocab_ = 0;

    // ready queue between the threads
    std::mutex m_;
    std::condition_variable cv_ready_, cv_space_;
    std::deque<Pending> ready_;
    std::deque<Pending> encoded_;  // with prefill beside: encoded, for the prefill thread
    bool source_done_ = false, stop_ = false;
    bool encoded_done_ = false;    // with prefill beside: the helper thread took the last track
    std::exception_ptr source_error_;
    size_t n_taken_ = 0;
    double prepare_ms_ = 0;
    std::thread preparer_, prefiller_;

    // decode thread state
    std::vector<Active> active_;
    SeqPool seqs_;  // sequence ids (per_track: a stream's) for admitted tracks
    int reserved_cells_ = 0;
    bool have_next_ = false;
    Pending next_pending_;
    Batch step_;  // the next step's tokens, one per live sequence
    RunStats stats_;
};

}  // namespace mf

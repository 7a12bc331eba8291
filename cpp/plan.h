// One plan per run, one rule per track. Whether a track can run and how big a run's context is are decided here,
// from one description of a track (TrackShape), for every caller: Engine::check (the Python API asks before a
// call), Engine::plan_run (before the context is allocated), and the runner (before a track's audio is encoded,
// and again with its exact prefix before it is admitted).
#pragma once

#include "types.h"

#include <cstddef>
#include <cstdint>
#include <vector>

struct llama_vocab;

namespace mf {

// A track as the plan sees it: its prefix positions and, per prompt, the suffix tokens and the token limit; its
// follow-ups (followup.h) as the cells and sequences they add.
struct TrackShape {
    size_t n_samples = 0;
    // The prefix (chat head, the audio): before encoding, at least what every framing gives (min_prefix_positions:
    // exact for the reference framings); after encoding, the prepared count.
    int prefix_positions = 0;
    int prefix_bound = 0;  // at most (sizes contexts before encoding: max_prefix_positions); exact after encoding
    std::vector<std::vector<int32_t>> suffix;  // per prompt: mid + user text + tail tokens
    std::vector<int> max_tokens;               // per prompt
    std::vector<long> chain;                   // per prompt: positions a known answer and its follow-ups add
    long followup_cells = 0;                   // the follow-ups' own cells (their answer's are shared)
    int sequences = 0;                         // one per prompt and one per follow-up

    long seq_cells(size_t i) const;  // prompt i's sequence: prefix + its suffix + its token limit + its chain
    long cells() const;              // the whole track: prefix + every prompt's suffix and token limit, follow-ups
    int suffix_tokens() const;       // every prompt's suffix together (the prompts' prefill batch)
    // The KV cells to size a context for (from prefix_bound): a prompt counts for no more than the trained context (such a track fails
    // before anything is decoded), so an absurd max_tokens cannot size an absurd context.
    int sizing_cells(int n_ctx_train) const;
    int sizing_seq_cells(int n_ctx_train) const;  // the same for the longest sequence
};

// The prefix positions n_samples of audio take at least in any framing: the chat head (BOS first when the
// vocabulary asks for it) and the reference's tokens per 30 s window (audio_window.h). Exact for the reference
// framings; mtmd's (Framing::Mtmd) pads every window to 750 and adds its own text.
int min_prefix_positions(const llama_vocab * vocab, const ChatPieces & chat, size_t n_samples);

// A track's shape from its audio length and prompts, the prefix at its lower bound. A text-only track (no audio,
// every prompt answered) has no mid piece; a known answer is part of its prompt's suffix (followup.h).
TrackShape shape_track(const llama_vocab * vocab, const ChatPieces & chat, size_t n_samples,
                       const std::vector<PromptRequest> & prompts);

// What a track must fit. n_ctx 0: the context is not sized yet (only the model's limits apply).
struct RunLimits {
    int n_ctx_train = 0;
    int n_ctx = 0;      // KV cells of the context
    int n_seq = 0;      // sequences of the context (0: any number up to kMaxSequences)
    int seq_cells = 0;  // per_sequence layout: each sequence's stream (0: another layout)
    int seqs_per_stream = 0;  // per_track layout: sequences of a track's stream, the pad one included (0: another)
    int stream_cells = 0;     // per_track layout: cells of a track's stream
};

// The one rule: throws InputError saying what does not fit (a prompt's answer past the trained context, more
// prompts than sequences, more cells than the context or a sequence's stream holds).
void require_fits(const TrackShape & t, const RunLimits & lim);

// How one run is sized: tracks decoding together, the context's cells, sequences and batch.
struct RunPlan {
    int tracks_in_flight = 1;
    int max_prompts = 1;
    int n_ctx = 0;
    int n_seq = 1;
    int n_batch = 0;         // the largest track's prompt suffixes together (one batch)
    int seq_cells = 0;       // per_sequence: cells of each sequence's stream; per_track: of each track's
    int seqs_per_stream = 1; // per_track: sequences of each track's stream (kv_layout.h); otherwise 1
    double kv_budget_mb = 0; // memory automatic sizing allowed the KV cache (0: not used)
    int max_tracks = 1;      // tracks at most: tracks_in_flight, or more with a live-answers target
    int prefill_cells = 0;   // the second context's cells (the largest prefix; prefill_context.h); 0: none
};

// The tracks a run may hold with a live-answers target: twice tracks_in_flight (a track whose short answers
// ended holds few live ones), as the context's sequences allow. Without a target: tracks_in_flight.
int max_tracks(int tracks_in_flight, int live_answers, int sequences_per_track);

}  // namespace mf

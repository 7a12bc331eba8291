#include "plan.h"

#include "audio_window.h"
#include "followup.h"
#include "llama.h"
#include "prefix.h"

#include <algorithm>
#include <string>

namespace mf {

long TrackShape::seq_cells(size_t i) const {
    return (long) prefix_positions + (long) suffix[i].size() + (long) std::max(max_tokens[i], 0) + chain[i];
}

long TrackShape::cells() const {
    long n = prefix_positions;
    for (size_t i = 0; i < suffix.size(); i++) n += (long) suffix[i].size() + std::max(max_tokens[i], 0);
    return n + followup_cells;
}

int TrackShape::suffix_tokens() const {
    long n = 0;
    for (const auto & s : suffix) n += (long) s.size();
    return (int) std::min<long>(n, 1L << 30);
}

int TrackShape::sizing_cells(int n_ctx_train) const {
    long n = std::min(prefix_bound, n_ctx_train) + followup_cells;
    for (size_t i = 0; i < suffix.size(); i++) {
        n += std::min<long>((long) suffix[i].size() + std::max(max_tokens[i], 0) + chain[i], n_ctx_train);
    }
    return (int) std::min<long>(n, 1L << 30);
}

int TrackShape::sizing_seq_cells(int n_ctx_train) const {
    long most = 0;
    for (size_t i = 0; i < suffix.size(); i++) {
        most = std::max(most, std::min<long>((long) suffix[i].size() + std::max(max_tokens[i], 0) + chain[i],
                                             n_ctx_train));
    }
    return (int) std::min<long>(std::min(prefix_bound, n_ctx_train) + most, 1L << 30);
}

int min_prefix_positions(const llama_vocab * vocab, const ChatPieces & chat, size_t n_samples) {
    long n = (long) tokenize(vocab, chat.head, true).size() + (llama_vocab_get_add_bos(vocab) ? 1 : 0);
    for (const AudioWindow & w : plan_reference_windows(n_samples)) n += w.n_tokens;
    return (int) std::min<long>(n, 1L << 30);
}

TrackShape shape_track(const llama_vocab * vocab, const ChatPieces & chat, size_t n_samples,
                       const std::vector<PromptRequest> & prompts) {
    TrackShape t;
    t.n_samples = n_samples;
    t.prefix_positions = min_prefix_positions(vocab, chat, n_samples);
    t.prefix_bound = max_prefix_positions(chat, n_samples);
    // mid follows the audio: a text-only track has none
    const auto mid = n_samples > 0 ? tokenize(vocab, chat.mid, true) : std::vector<int32_t>{};
    const auto tail = tokenize(vocab, chat.tail, true);
    for (const auto & p : prompts) {
        std::vector<int32_t> toks = mid;
        const auto u = tokenize(vocab, p.text, /*parse_special*/ false);  // the user's text never becomes control
        toks.insert(toks.end(), u.begin(), u.end());
        toks.insert(toks.end(), tail.begin(), tail.end());
        const auto answer = known_answer_tokens(vocab, p);  // fed with the question
        toks.insert(toks.end(), answer.begin(), answer.end());
        t.suffix.push_back(std::move(toks));
        t.max_tokens.push_back(p.max_tokens);
        long chain = 0;
        t.followup_cells += std::min<long>(followup_cells(vocab, chat, p, &chain), 1L << 28);
        t.chain.push_back(std::min<long>(chain, 1L << 28));
    }
    t.sequences = track_sequences(prompts);
    return t;
}

namespace {

const char * kHowToFit = " (lower max_tokens, shorten the audio, or raise n_ctx / the memory budget)";

void require_trained_context(const TrackShape & t, int n_ctx_train) {
    for (size_t i = 0; i < t.suffix.size(); i++) {
        if (t.max_tokens[i] >= n_ctx_train) {
            throw InputError("max_tokens " + std::to_string(t.max_tokens[i]) + " is not below the model's trained "
                             "context of " + std::to_string(n_ctx_train) + " tokens");
        }
        if (t.seq_cells(i) > n_ctx_train) {
            throw InputError("audio (" + std::to_string(t.prefix_positions) + " positions) + prompt " +
                             std::to_string(i) + " + max_tokens = " + std::to_string(t.seq_cells(i)) +
                             " exceeds the model's trained context of " + std::to_string(n_ctx_train) +
                             " (shorten the audio or lower max_tokens)");
        }
    }
}

// A track's stream (per_track) keeps room for the pad tokens of a step (kv_layout.h: one per other sequence).
long track_stream_need(const TrackShape & t, const RunLimits & lim) { return t.cells() + lim.seqs_per_stream - 1; }

void require_cells(const TrackShape & t, const RunLimits & lim) {
    if (lim.stream_cells > 0) {  // a stream per track: the whole track, its prefix once, must fit one stream
        if (track_stream_need(t, lim) > lim.stream_cells) {
            throw InputError("this track needs " + std::to_string(track_stream_need(t, lim)) + " KV cells (audio + "
                             "prompts + token limits) but each track's stream holds " +
                             std::to_string(lim.stream_cells) + kHowToFit);
        }
    } else if (lim.seq_cells > 0) {  // a stream per sequence: each of the track's sequences must fit one stream
        for (size_t i = 0; i < t.suffix.size(); i++) {
            if (t.seq_cells(i) > lim.seq_cells) {
                throw InputError("prompt " + std::to_string(i) + " of this track needs " +
                                 std::to_string(t.seq_cells(i)) + " KV cells but each sequence's cache holds " +
                                 std::to_string(lim.seq_cells) + kHowToFit);
            }
        }
    } else if (t.cells() > lim.n_ctx) {
        throw InputError("this track needs " + std::to_string(t.cells()) + " KV cells (audio + prompts + token "
                         "limits) but the context holds " + std::to_string(lim.n_ctx) + kHowToFit);
    }
}

}  // namespace

void require_fits(const TrackShape & t, const RunLimits & lim) {
    require_trained_context(t, lim.n_ctx_train);
    // per_track: a track's sequences live in its stream, the last one of which is the pad sequence
    const int n_seq = lim.seqs_per_stream > 0 ? lim.seqs_per_stream - 1 : lim.n_seq > 0 ? lim.n_seq : kMaxSequences;
    if (t.sequences > n_seq) {
        throw InputError("a track has " + std::to_string(t.sequences) + " prompts and follow-ups; this run has " +
                         std::to_string(n_seq) + " sequences");
    }
    if (lim.n_ctx > 0) require_cells(t, lim);
}

int max_tracks(int tracks_in_flight, int live_answers, int sequences_per_track) {
    if (live_answers <= 0) return tracks_in_flight;
    return std::max(tracks_in_flight, std::min(2 * tracks_in_flight, kMaxSequences / std::max(1, sequences_per_track)));
}

}  // namespace mf

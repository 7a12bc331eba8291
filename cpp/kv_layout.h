// How the KV cache holds a run's sequences (EngineParams::kv_layout), and the two things the per-track layout
// needs from the runner: which sequence ids a track gets, and the padding that keeps a step one ubatch.
//
//   unified       one cache for every sequence: a track's prompts share its prefix cells, but every query's
//                 attention and every prefill read (masked) the cells of every track in flight.
//   per_track     one KV stream per track (patch 0003, n_seq_per_stream): a track's prompts share its prefix
//                 cells and attend only to its stream. Sequence ids: stream k holds k*S .. k*S + S-1, the last
//                 one a throw-away pad sequence (pad_streams).
//   per_sequence  one stream per sequence (llama.cpp's kv_unified=false): each fork copies the prefix.
#pragma once

#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

struct llama_batch;
struct llama_context;

namespace mf {

enum class KvLayout { Unified, PerTrack, PerSequence };

KvLayout parse_kv_layout(const std::string & name);  // InputError naming the three for any other name
const char * kv_layout_name(KvLayout layout);

// Sequences one per-track stream holds: a track's prompts and follow-ups, and the pad sequence.
inline int track_stream_seqs(int max_slots) { return max_slots + 1; }

// The sequence ids of a run: any free ones (unified, per_sequence), or (per_track) one stream's, lowest stream
// first so that a step's streams stay close together (fewer free streams between them to pad).
class SeqPool {
public:
    SeqPool(int n_seq, int seqs_per_stream);  // seqs_per_stream 0: no streams to keep together
    bool can_take(size_t n) const;
    std::vector<int32_t> take(size_t n);      // can_take(n) first
    void give_back(const std::vector<int32_t> & seqs);

private:
    int per_stream_;
    std::set<int32_t> free_;  // free sequences, or (per_track) free streams
};

// Appends pad tokens so that every stream from the lowest to the highest one the batch touches has as many tokens
// as the fullest: llama.cpp then decodes the step as one ubatch instead of one per distinct count (patch 0003's
// split). Each stream's pads go to its pad sequence, positions from 0 (it is emptied after every decode); they
// have no logits. The batch must hold (streams touched) x (seqs_per_stream - 1) tokens. Returns the pad
// sequences used, to clear with drop_padding after the decode.
std::vector<int32_t> pad_streams(llama_batch & b, int seqs_per_stream);
void drop_padding(llama_context * ctx, const std::vector<int32_t> & pad_seqs);

}  // namespace mf

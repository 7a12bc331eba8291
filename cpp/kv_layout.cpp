#include "kv_layout.h"

#include "errors.h"
#include "llama.h"

#include <algorithm>
#include <map>

namespace mf {

KvLayout parse_kv_layout(const std::string & name) {
    if (name == "unified") return KvLayout::Unified;
    if (name == "per_track") return KvLayout::PerTrack;
    if (name == "per_sequence") return KvLayout::PerSequence;
    throw InputError("kv_layout must be 'unified', 'per_track' or 'per_sequence', got '" + name + "'");
}

const char * kv_layout_name(KvLayout layout) {
    switch (layout) {
        case KvLayout::PerTrack: return "per_track";
        case KvLayout::PerSequence: return "per_sequence";
        default: return "unified";
    }
}

SeqPool::SeqPool(int n_seq, int seqs_per_stream) : per_stream_(seqs_per_stream) {
    const int n = per_stream_ > 0 ? n_seq / per_stream_ : n_seq;
    for (int i = 0; i < n; i++) free_.insert(i);
}

bool SeqPool::can_take(size_t n) const {
    if (per_stream_ > 0) return !free_.empty() && n < (size_t) per_stream_;  // the last one is the pad sequence
    return free_.size() >= n;
}

std::vector<int32_t> SeqPool::take(size_t n) {
    std::vector<int32_t> seqs;
    if (per_stream_ > 0) {
        const int32_t base = *free_.begin() * per_stream_;
        free_.erase(free_.begin());
        for (size_t i = 0; i < n; i++) seqs.push_back(base + (int32_t) i);
        return seqs;
    }
    for (size_t i = 0; i < n; i++) {
        seqs.push_back(*free_.begin());
        free_.erase(free_.begin());
    }
    return seqs;
}

void SeqPool::give_back(const std::vector<int32_t> & seqs) {
    if (per_stream_ > 0) {
        if (!seqs.empty()) free_.insert(seqs[0] / per_stream_);
        return;
    }
    free_.insert(seqs.begin(), seqs.end());
}

std::vector<int32_t> pad_streams(llama_batch & b, int seqs_per_stream) {
    std::map<int32_t, int> count;  // tokens per stream
    for (int i = 0; i < b.n_tokens; i++) count[b.seq_id[i][0] / seqs_per_stream]++;
    std::vector<int32_t> pads;
    if (count.size() < 2) return pads;  // one stream: one ubatch already
    int most = 0;
    for (const auto & [s, n] : count) most = std::max(most, n);
    for (int32_t s = count.begin()->first; s <= count.rbegin()->first; s++) {
        const auto it = count.find(s);
        const int n_pad = most - (it == count.end() ? 0 : it->second);
        if (n_pad == 0) continue;
        const int32_t seq = s * seqs_per_stream + seqs_per_stream - 1;
        for (int k = 0; k < n_pad; k++) {
            const int i = b.n_tokens++;
            b.token[i] = 0;
            b.pos[i] = k;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = seq;
            b.logits[i] = false;
        }
        pads.push_back(seq);
    }
    return pads;
}

void drop_padding(llama_context * ctx, const std::vector<int32_t> & pad_seqs) {
    llama_memory_t mem = llama_get_memory(ctx);
    for (int32_t s : pad_seqs) llama_memory_seq_rm(mem, s, -1, -1);
}

}  // namespace mf

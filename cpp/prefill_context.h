// A track's prefix evaluated beside the decode steps (issue 18, item 2), and the llama_decode helpers that feed a
// prefix to any context.
//
// Admitting a track used to stop every other track for its whole prefill (45 % of a run on an H200,
// bench/RESULTS.md). Now a prefill thread takes each track the helper thread encoded and evaluates its prefix (chat
// head + audio embeddings) in a second, small llama_context on the same model, copies the prefix's KV cells to host memory
// (llama_state_seq_get_data) and clears that context for the next track. The decode thread, between two steps,
// only installs those cells into a free sequence of the main context (llama_state_seq_set_data: a host copy,
// ~220 MB for a 150 s track on the 8B model), then forks and decodes the prompt suffixes as before.
//
// Why a second context rather than chunked prefill interleaved with the steps: chunks still run on the decode
// thread, so every chunk still delays every live sequence by its own time; a second context runs at the same time
// as the steps (its own thread, its own GPU stream), and keeps the prefix's ubatches exactly as today's (same
// n_batch/n_ubatch), so the cells it computes are the ones the decode thread would have computed. The prompt
// suffixes stay on the decode thread: their cells must be in the main context anyway, they are short, and the
// first tokens' logits come from the same decode as before (the handover moves one sequence's cells only).
//
// The handover relies only on llama_state_seq_set_data into a sequence id of the main context; when it fails (the
// K/V types, flash attention or stream layout differ, no free cells) the track is prefilled on the decode thread as
// before, so a failure of the side path never costs a track.
#pragma once

#include "prefix.h"

#include "llama.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

namespace mf {

// An owned llama_batch of token ids (n_embd = 0) or embeddings (n_embd > 0), one sequence per entry.
struct Batch {
    llama_batch b;
    const int n_embd;
    Batch(int n, int n_embd_ = 0) : b(llama_batch_init(n, n_embd_, 1)), n_embd(n_embd_) {}
    ~Batch() { llama_batch_free(b); }
    Batch(const Batch &) = delete;
    Batch & operator=(const Batch &) = delete;
    void clear() { b.n_tokens = 0; }
    // Appends a token (or, for an embedding batch, the embedding row at `embd`); returns its index in the batch.
    int add(int32_t tok, int32_t pos, int32_t seq, bool logits, const float * embd = nullptr) {
        const int k = b.n_tokens++;
        if (n_embd > 0) {
            std::copy(embd, embd + n_embd, b.embd + (size_t) k * n_embd);
        } else {
            b.token[k] = tok;
        }
        b.pos[k] = pos; b.n_seq_id[k] = 1; b.seq_id[k][0] = seq; b.logits[k] = logits;
        return k;
    }
};

// Called between a prefix's batches; true stops the prefill (throws Interrupted).
using StopCheck = std::function<bool()>;

// Tokens into `seq` of `ctx` from position n_past, n_batch at a time, no logits (EngineError on failure).
void decode_tokens(llama_context * ctx, const std::vector<int32_t> & toks, int32_t seq, int32_t & n_past, int n_batch);
// A prepared prefix (text and audio embedding pieces, in order) into `seq` of `ctx`; returns its positions.
int32_t eval_prefix(llama_context * ctx, const PreparedPrefix & px, int32_t seq, int n_batch, const StopCheck & stop);

// A prefix's KV cells in host memory, as llama_state_seq_get_data wrote them.
struct PrefixCells {
    std::vector<uint8_t> bytes;  // empty: not prefilled beside (the decode thread evaluates the prefix)
    int32_t n_pos = 0;
    double ms = 0;  // evaluating and copying out, on the prefill thread
};

// The second context's work: one prefix at a time, on one thread (BatchRun's prefill thread).
class SidePrefill {
public:
    SidePrefill(llama_context * ctx, int n_cells, int n_batch) : ctx_(ctx), n_cells_(n_cells), n_batch_(n_batch) {}
    bool fits(const PreparedPrefix & px) const { return px.n_pos <= n_cells_; }
    // Evaluates the prefix into the side context and copies its cells out; the context is empty again after.
    // Throws EngineError when llama.cpp fails, Interrupted when `stop` says so.
    PrefixCells run(const PreparedPrefix & px, const StopCheck & stop);

private:
    llama_context * ctx_;
    int n_cells_, n_batch_;
};

// Installs prefilled cells into `seq` of the main context (any cells it held are dropped first). False when
// llama.cpp refuses them (the sequence is then empty again and the caller prefills it itself).
bool install_prefix(llama_context * ctx, const PrefixCells & cells, int32_t seq);

}  // namespace mf

// A prefix beside the decode steps: see prefill_context.h for why a second context.
#include "prefill_context.h"

#include <chrono>

namespace mf {

namespace {

void decode_embd(llama_context * ctx, const float * embd, int n_tokens, int32_t seq, int32_t & n_past, int n_batch) {
    const int n_embd = llama_model_n_embd_inp(llama_get_model(ctx));
    Batch b(n_batch, n_embd);
    for (int off = 0; off < n_tokens; off += n_batch) {
        const int n = std::min(n_batch, n_tokens - off);
        b.clear();
        for (int i = 0; i < n; i++) b.add(0, n_past + i, seq, false, embd + (size_t) (off + i) * n_embd);
        if (llama_decode(ctx, b.b)) throw EngineError("llama.cpp failed to decode the audio embeddings");
        n_past += n;
    }
}

}  // namespace

void decode_tokens(llama_context * ctx, const std::vector<int32_t> & toks, int32_t seq, int32_t & n_past, int n_batch) {
    Batch b(n_batch);
    for (size_t off = 0; off < toks.size(); off += (size_t) n_batch) {
        b.clear();
        for (size_t i = off; i < std::min(toks.size(), off + (size_t) n_batch); i++) b.add(toks[i], n_past++, seq, false);
        if (llama_decode(ctx, b.b)) throw EngineError("llama.cpp failed to evaluate the prompt prefix");
    }
}

// Embeddings and tokens cannot share a llama_batch: each piece is its own run of batches, in order.
int32_t eval_prefix(llama_context * ctx, const PreparedPrefix & px, int32_t seq, int n_batch, const StopCheck & stop) {
    int32_t n_past = 0;
    for (const auto & piece : px.pieces) {
        if (piece.n_embd_tokens > 0) {
            decode_embd(ctx, piece.embd.data(), piece.n_embd_tokens, seq, n_past, n_batch);
        } else {
            decode_tokens(ctx, piece.tokens, seq, n_past, n_batch);
        }
        if (stop && stop()) throw Interrupted("interrupted");
    }
    return n_past;
}

PrefixCells SidePrefill::run(const PreparedPrefix & px, const StopCheck & stop) {
    const auto t0 = std::chrono::steady_clock::now();
    llama_memory_t mem = llama_get_memory(ctx_);
    PrefixCells out;
    try {
        out.n_pos = eval_prefix(ctx_, px, 0, n_batch_, stop);
        // the copy out waits for the device: what it computed is the copy's input
        out.bytes.resize(llama_state_seq_get_size(ctx_, 0));
        const size_t n = out.bytes.size();
        if (n == 0 || llama_state_seq_get_data(ctx_, out.bytes.data(), n, 0) != n) {
            throw EngineError("llama.cpp could not copy a prefilled prefix out of the prefill context");
        }
    } catch (...) {
        llama_memory_clear(mem, true);
        throw;
    }
    llama_memory_clear(mem, true);
    out.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return out;
}

bool install_prefix(llama_context * ctx, const PrefixCells & cells, int32_t seq) {
    if (cells.bytes.empty()) return false;
    // llama.cpp throws inside (and logs) when the state does not fit this context; set_data returns 0 then
    if (llama_state_seq_set_data(ctx, cells.bytes.data(), cells.bytes.size(), seq) == cells.bytes.size()) return true;
    llama_memory_seq_rm(llama_get_memory(ctx), seq, -1, -1);
    return false;
}

}  // namespace mf
